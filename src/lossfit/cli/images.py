"""Image inputs and outputs shared by the registration commands: formats, checks before the work, loading."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Any

from lossfit.cli.common import fail


class ImageFormat(str, Enum):
    nifti = "nifti"
    dicom = "dicom"
    png = "png"
    tiff = "tiff"
    npy = "npy"


class Interpolation(str, Enum):
    linear = "linear"
    nearest = "nearest"
    bspline = "bspline"


BYTES_PER_VOXEL = {".nii": 4, ".nii.gz": 4, ".tif": 4, ".npy": 4, ".png": 2, ".dcm": 2}
PICTURE_BYTES = 4 << 20  # registration.png and report.html: a few MB at most


def check_image_output(grid: Any, name: str, values: Any, fill: float) -> None:
    """Refuse, before any work, an image format that cannot hold an image on ``grid`` whose values lie in the
    range of ``values`` (a resampled image: interpolation stays within it, and points outside get ``fill``)."""
    from lossfit.registration.io import check_savable

    low, high = value_range(values, fill)
    try:
        check_savable(grid, name, low, high)
    except ValueError as exc:
        fail(f"{name}: {str(exc).replace('`image`', 'the warped image')} (choose another --format)")


def value_range(values: Any, fill: float) -> tuple[float, float]:
    """The range a resampled image's values can take: the input's (linear and nearest interpolation stay within it)
    and the fill."""
    return min(float(values.min()), fill), max(float(values.max()), fill)


def within_range(image: Any, name: str, values: Any, fill: float, interpolation: str) -> Any:
    """A B-spline result clipped to the input's range where the format needs the range checked before the work
    (PNG: whole numbers in 0..65535); cubic B-splines overshoot near edges by a few percent of the contrast."""
    if interpolation != "bspline" or not name.lower().endswith(".png"):
        return image
    low, high = value_range(values, fill)
    return image.with_data(image.data.clamp(low, high))


def load_input(path: Path, option: str, **options: Any) -> Any:
    """Load an image input; a keyword that does not apply to it (``series``, ``volume``) names the option."""
    from lossfit.registration import load_image

    try:
        return load_image(path, **{k: v for k, v in options.items() if v is not None})
    except ValueError as exc:
        message = str(exc)
        for keyword in options:
            message = message.replace(f"`{keyword}`", f"{option}-{keyword}")
        fail(message)


TRANSFORM_SUFFIXES = (".tfm", ".txt", ".mat", ".json")


def check_output_file(path: Path, option: str, overwrite: bool) -> None:
    """Refuse, before any work, an output file that cannot be written: a folder of that name, a missing parent
    folder, no write permission, or (without ``overwrite``) an existing file."""
    if path.is_dir() and not (overwrite and path.name.lower().endswith(".dcm")):  # a DICOM series folder
        fail(f"{path}: {option} must be a file; a folder of that name exists")
    if not path.parent.is_dir():
        fail(f"{path}: the folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        fail(f"{path}: {option}: cannot write in {path.parent}")
    if path.exists() and not overwrite:
        fail(f"{path}: {option} exists; pass --overwrite to replace it")
