"""A series of 3-D volumes on one world grid (an fMRI run, a dynamic acquisition), and its NIfTI and DICOM I/O.

Convention:
    - ``Series.data`` is a ``(T, nz, ny, nx)`` tensor: volume ``t`` is ``data[t]``, in the ``(nz, ny, nx)`` order of
      :class:`~lossfit.registration.image.Image` (and of ``SimpleITK.GetArrayFromImage`` on one volume).
    - Every volume shares one grid: the geometry (LPS, mm) and file header of ``Series.grid``, an
      :class:`~lossfit.registration.image.Image` whose data are the first volume.
    - ``Series.tr`` is the time between the starts of consecutive volumes in seconds, or None where unknown.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lossfit.errors import InputFileError
from lossfit.io import atomic_path, first_line
from lossfit.registration.image import Image, VoxelData
from lossfit.registration.io import (
    DICOM_SUFFIXES,
    LPS_RAS,
    check_source,
    dicom_series_items,
    nifti_bytes,
    open_nifti,
    stack_dicom,
    stack_pixels,
    suffix_of,
    unreadable,
    warn_if_forms_disagree,
)

_TIME_UNITS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6, "unknown": 1.0}  # NIfTI xyzt_units -> seconds
_SAME_GRID_TOL = 1e-4  # mm (and direction cosines): DICOM volumes further apart than this are on different grids


class Series(VoxelData):
    """Volumes sharing one world grid, ``(T, nz, ny, nx)`` (see the module docstring for the convention).

    Args:
        data: ``(T, nz, ny, nx)`` real tensor with ``T >= 1``; integer data become float32, float data are kept as
            given (dtype, device, storage: nothing is copied).
        grid: a 3-D :class:`Image` giving the geometry and header every volume shares; only its shape is checked
            against ``data`` (its voxel values are not used).
        tr: seconds between the starts of consecutive volumes (finite, positive), or None where unknown.

    Raises:
        TypeError: ``data`` is not a real tensor, ``grid`` is not an Image, ``tr`` is not a number or None.
        ValueError: ``data`` is not 4-D or holds no volume, its volumes' shape differs from ``grid``'s, ``grid`` is
            not 3-D, ``tr`` is not finite and positive.

    Example:
        >>> grid = Image(torch.zeros(2, 3, 4), spacing=(1.0, 1.0, 2.5))
        >>> s = Series(torch.arange(48.0).reshape(2, 2, 3, 4), grid, tr=2.0)
        >>> len(s), s.volume(-1).data[0, 0, 0].item(), s.volume(1).spacing
        (2, 24.0, (1.0, 1.0, 2.5))
    """

    __slots__ = ("_data", "_grid", "_tr")

    def __init__(self, data: torch.Tensor, grid: Image, *, tr: float | None = None) -> None:
        if not isinstance(data, torch.Tensor):
            raise TypeError(f"`data` must be a torch.Tensor (use torch.as_tensor); got {type(data).__name__}")
        if data.is_complex() or data.dtype == torch.bool:
            raise TypeError(f"`data` must hold real numbers; got {data.dtype}")
        if data.dim() != 4:
            raise ValueError(f"`data` must be 4-D (T, nz, ny, nx); got shape {tuple(data.shape)}")
        if data.shape[0] < 1:
            raise ValueError(f"`data` must hold at least one volume; got shape {tuple(data.shape)}")
        if not isinstance(grid, Image):
            raise TypeError(f"`grid` must be an Image (the shared geometry); got {type(grid).__name__}")
        if grid.ndim != 3:
            raise ValueError(f"`grid` must be a 3-D Image; got a {grid.ndim}-D one")
        if data.shape[1:] != grid.shape:
            raise ValueError(
                f"`data` must hold volumes of the grid's shape {tuple(grid.shape)}; got shape {tuple(data.shape)}"
            )
        if isinstance(tr, bool) or not (tr is None or isinstance(tr, (int, float))):
            raise TypeError(f"`tr` must be a number of seconds or None; got {type(tr).__name__}")
        if tr is not None and not (math.isfinite(tr) and tr > 0):
            raise ValueError(f"`tr` must be a finite positive number of seconds or None; got {tr!r}")
        if not data.is_floating_point():
            data = data.to(torch.float32)
        self._data = data
        self._grid = grid.with_data(data[0])
        self._tr = None if tr is None else float(tr)

    # --- read-only attributes -------------------------------------------------------------------------------
    @property
    def data(self) -> torch.Tensor:
        """The voxel values, ``(T, nz, ny, nx)``."""
        return self._data

    @property
    def grid(self) -> Image:
        """The shared geometry and header, as an Image of the first volume (``volume(0)``)."""
        return self._grid

    @property
    def tr(self) -> float | None:
        """Seconds between the starts of consecutive volumes, or None where unknown."""
        return self._tr

    def __len__(self) -> int:
        return int(self._data.shape[0])

    # --- volumes --------------------------------------------------------------------------------------------
    def volume(self, index: int) -> Image:
        """Volume ``index`` (from 0; negative counts from the end) as an Image on the grid; its data are a view."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"`index` must be a whole number; got {type(index).__name__}")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"`index` must be in {-n}..{n - 1} for a series of {n} volumes; got {index}")
        return self._grid.with_data(self._data[int(index)])

    def volumes(self) -> Iterator[Image]:
        """The volumes in order, each as :meth:`volume` gives it."""
        return (self.volume(t) for t in range(len(self)))

    def mean(self) -> Image:
        """The voxel-wise mean over the volumes, as an Image on the grid."""
        return self._grid.with_data(self._data.mean(dim=0))

    def with_data(self, data: torch.Tensor) -> Series:
        """A series on the same grid with the same ``tr`` and new ``(T', nz, ny, nx)`` data (any ``T' >= 1``)."""
        return Series(data, self._grid, tr=self._tr)

    def __repr__(self) -> str:
        tr = "None" if self._tr is None else f"{self._tr:.6g}"
        return f"Series(volumes={len(self)}, tr={tr}, grid={self._grid!r})"


# --- reading --------------------------------------------------------------------------------------------------
def load_series(
    path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32, series: str | None = None
) -> Series:
    """Read a series of volumes on one grid; the suffix picks the reader (case-insensitive).

    - ``.nii``, ``.nii.gz``: a 4-D file (a 3-D or 2-D one is a series of one volume; trailing singleton
      dimensions are dropped). The grid is read as :func:`~lossfit.registration.io.load_image` reads it (nibabel's
      best affine, RAS flipped to LPS, the sform and qform codes kept in ``grid.header`` for writers), so
      ``volume(t)`` equals ``load_image(path, volume=t)``. scl_slope/inter are applied. ``tr`` is pixdim[4]
      converted to seconds by the time units of xyzt_units (unknown units are taken as seconds); None where
      pixdim[4] is not positive or the units are not a time (Hz, ppm, rad/s). The header's claimed size is
      checked against the file before any allocation.
    - a folder of DICOM files holding one series (pass ``series=`` a SeriesInstanceUID when it holds several) of
      several volumes at the same slice positions: slices are grouped into volumes by TemporalPositionIdentifier
      where every slice has one, else by AcquisitionNumber where every slice has one and they differ, else by
      the repeats of ImagePositionPatient in InstanceNumber order; volumes are ordered by that key. Each volume is
      stacked as ``load_image`` stacks a DICOM series, and every volume must lie on the first one's grid. ``tr``
      is None (RepetitionTime is the time between excitations, which is the time between volumes for few
      sequences). ``grid.header["dicom"]`` keeps the study tags, as ``load_image`` does.

    Args:
        path: a NIfTI file or a folder of DICOM files.
        dtype: floating dtype of the data.
        series: the SeriesInstanceUID to read from a DICOM folder.

    Raises:
        InputFileError: one line naming the path: a missing, unreadable or truncated file, an unsupported suffix,
            content that is not real numbers, a 5-D file, several DICOM series, volumes on different grids.
        TypeError, ValueError: a bad keyword argument.

    Example:
        >>> import os
        >>> from nibabel.testing import data_path
        >>> s = load_series(os.path.join(data_path, "example4d.nii.gz"))
        >>> s.shape, s.tr
        (torch.Size([2, 24, 96, 128]), 2000.0)
    """
    p, suffix, np_dtype = check_source(path, series, dtype)
    if p.is_dir():
        array, grid, tr = _read_dicom_series(p, series, np_dtype)
    elif series is not None:
        raise ValueError(f"`series` applies to DICOM folders; got {p}")
    elif suffix in (".nii", ".nii.gz"):
        array, grid, tr = _read_nifti_series(p, np_dtype)
    elif suffix in DICOM_SUFFIXES or suffix == "" or suffix[1:].isdigit():
        raise InputFileError(f"{p}: is one DICOM file; load_series reads a folder holding the series")
    else:
        raise InputFileError(f"{p}: unsupported file type {suffix!r}; load_series reads .nii, .nii.gz or a folder")
    data = torch.from_numpy(array).to(dtype)
    return Series(data, grid.to(dtype), tr=tr)


def _read_nifti_series(p: Path, np_dtype: type) -> tuple[np.ndarray, Image, float | None]:
    from nibabel.volumeutils import apply_read_scaling

    try:
        img, shape = open_nifti(p)
        if len(shape) > 4:
            raise InputFileError(f"{p}: holds a {len(shape)}-D image of shape {shape}; a series is 4-D at most")
        shape = (shape + (1, 1, 1, 1))[:4] if len(shape) < 4 else shape
        # The raw values once (a file is read, or uncompressed, a single time), then each volume scaled as nibabel
        # scales a slice (what load_image(volume=t) reads), so only one volume is ever held in a wider dtype.
        proxy: Any = img.dataobj
        raw = np.asanyarray(proxy.get_unscaled()).reshape(shape, order="F")
        slope, inter = np.asanyarray(proxy.slope), np.asanyarray(proxy.inter)
        array: np.ndarray = np.empty((shape[3], shape[2], shape[1], shape[0]), dtype=np_dtype)
        for t in range(shape[3]):
            array[t] = apply_read_scaling(raw[..., t], slope, inter).T
        affine = LPS_RAS @ np.asarray(img.affine, dtype=np.float64)
        _, time = img.header.get_xyzt_units()
        step = float(img.header["pixdim"][4])
    except (InputFileError, MemoryError):
        raise
    except Exception as exc:
        raise unreadable(p, "NIfTI", exc) from None
    warn_if_forms_disagree(p, img, shape[:3])
    codes = {"sform_code": int(img.header["sform_code"]), "qform_code": int(img.header["qform_code"])}
    try:
        grid = Image.from_affine(torch.from_numpy(array[0]), affine)
    except (TypeError, ValueError) as exc:
        raise InputFileError(f"{p}: its geometry is invalid ({first_line(exc)})") from None
    grid = Image(grid.data, spacing=grid.spacing, origin=grid.origin, direction=grid.direction, header=codes)
    scale = _TIME_UNITS.get(time)
    tr = step * scale if scale is not None and math.isfinite(step) and step > 0 else None
    return array, grid, tr


def _read_dicom_series(p: Path, series: str | None, np_dtype: type) -> tuple[np.ndarray, Image, float | None]:
    items = dicom_series_items(p, series)
    groups = _group_volumes(items)
    arrays: list[np.ndarray] = []
    first, geometry, study = stack_dicom(p, groups[0])
    for k, group in enumerate(groups):
        array, found = (first, geometry) if k == 0 else stack_pixels(p, group)
        if array.ndim != 3:
            raise InputFileError(f"{p}: its volumes are single slices; load_series reads volumes of several slices")
        if array.shape != first.shape or not all(
            np.allclose(np.array(a), np.array(b), rtol=0, atol=_SAME_GRID_TOL)
            for a, b in zip(found, geometry, strict=True)
        ):
            raise InputFileError(
                f"{p}: volume {k} of {len(groups)} ({len(group)} slices) does not lie on volume 0's grid "
                f"({len(groups[0])} slices); every volume must have the same slice positions"
            )
        arrays.append(array.astype(np_dtype, copy=False))
    spacing, origin, direction = geometry
    grid = Image(
        torch.from_numpy(arrays[0]), spacing=spacing, origin=origin, direction=direction, header={"dicom": study}
    )
    return np.stack(arrays), grid, None


def _group_volumes(items: list[tuple[Path, Any]]) -> list[list[tuple[Path, Any]]]:
    """Slices grouped into volumes (in order): by TemporalPositionIdentifier, else AcquisitionNumber, else by the
    repeats of ImagePositionPatient in InstanceNumber order."""
    for keyword in ("TemporalPositionIdentifier", "AcquisitionNumber"):
        values = [ds.get(keyword) for _, ds in items]
        if all(v not in (None, "") for v in values) and len(set(values)) > 1:
            by: dict[int, list[tuple[Path, Any]]] = {}
            for item, value in zip(items, values, strict=True):
                by.setdefault(int(value), []).append(item)
            return [by[key] for key in sorted(by)]
    ordered = sorted(items, key=lambda item: int(item[1].get("InstanceNumber") or 0))  # stable: file order on ties
    seen: dict[tuple[float, ...], int] = {}
    volumes: list[list[tuple[Path, Any]]] = []
    for item in ordered:
        position = tuple(round(float(v), 3) for v in item[1].get("ImagePositionPatient") or ())
        k = seen.get(position, 0)
        seen[position] = k + 1
        if k == len(volumes):
            volumes.append([])
        volumes[k].append(item)
    return volumes


# --- writing --------------------------------------------------------------------------------------------------
def save_series(series: Series, path: str | os.PathLike[str]) -> None:
    """Write ``series`` as a 4-D NIfTI file (``.nii`` or ``.nii.gz``, case-insensitive) or, for a path without a
    suffix, as a DICOM series in that new folder, atomically.

    - NIfTI: float32 data; the grid as :func:`~lossfit.registration.io.save_image` writes an image (LPS flipped to
      RAS, the sform and qform with the codes of ``grid.header`` where the grid came from a NIfTI file, else 1);
      units mm and seconds, ``tr`` in pixdim[4] (0 where ``tr`` is None). A series of one volume is still written
      4-D.
    - DICOM: one Secondary Capture file per slice of every volume (``slice0001.dcm`` ...), the study and patient
      tags of ``grid.header["dicom"]`` kept (a series read from DICOM), one rescale for all volumes, and the
      TemporalPositionIdentifier of each volume (1, 2, ...), by which :func:`load_series` reads them back. The
      folder is built beside its final place and renamed into it; it must not exist yet.

    Raises:
        TypeError: ``series`` is not a Series.
        ValueError: ``path`` ends in another suffix, or names a folder that exists; a grid DICOM cannot hold (a
            sheared direction); values DICOM cannot store (NaN); raised before anything is written.

    Example:
        >>> import tempfile
        >>> s = Series(torch.ones(3, 2, 2, 2), Image(torch.zeros(2, 2, 2)), tr=1.5)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     save_series(s, os.path.join(folder, "run.nii.gz"))
        ...     load_series(os.path.join(folder, "run.nii.gz")).tr
        1.5
    """
    if not isinstance(series, Series):
        raise TypeError(f"`series` must be a Series; got {type(series).__name__}")
    target = Path(path)
    suffix = suffix_of(target)
    if suffix == "":
        from lossfit.registration.io import write_dicom_volumes

        volumes = [series.data[t].detach().cpu().double().numpy() for t in range(len(series))]
        write_dicom_volumes(series.grid, volumes, target)
        return
    if suffix not in (".nii", ".nii.gz"):
        raise ValueError(f"`path` must end in .nii or .nii.gz, or have no suffix (a DICOM folder); got {str(target)!r}")
    payload = _series_bytes(series, gz=suffix == ".nii.gz")
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        handle.write(payload)


def _series_bytes(series: Series, gz: bool) -> bytes:
    data = series.data.detach().to("cpu", torch.float32).numpy()
    return nifti_bytes(data.transpose(3, 2, 1, 0), series.grid, gz=gz, tr=series.tr)  # (nx, ny, nz, T)
