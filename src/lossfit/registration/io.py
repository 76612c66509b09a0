"""Reading and writing images with their world geometry: NIfTI, DICOM, PNG/JPEG/TIFF/BMP and NumPy files.

Geometry follows :mod:`lossfit.registration.image` (LPS millimetres, data in (nz, ny, nx) order). NIfTI's RAS
affine is flipped to LPS on load and back on save. Every write goes through :func:`lossfit.io.atomic_path`, so a
failed save leaves no file behind and never touches an existing one.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lossfit.errors import GeometryWarning, InputFileError
from lossfit.io import atomic_path, first_line
from lossfit.registration.image import Image, Matrix, Vector, check_direction, check_vector

Geometry = tuple[Vector, Vector, Matrix]

_RASTER = (".png", ".jpg", ".jpeg", ".bmp")
_TIFF = (".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".ima")
READ_SUFFIXES = (".nii", ".nii.gz", *DICOM_SUFFIXES, *_RASTER, *_TIFF, ".npy")
SAVE_SUFFIXES = (".nii", ".nii.gz", ".png", ".tif", ".tiff", ".npy", ".dcm")
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601
LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # flips x and y; its own inverse
# What a DICOM file written from an image keeps of the series its grid came from (``Image.header["dicom"]``), so
# that a viewer files it with that study and overlays it: the patient, the study and the frame of reference.
STUDY_TAGS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "FrameOfReferenceUID",
)
_IN_PLANE_TOL = 1e-4  # |z| of both DICOM cosines below this: the slice is axial and loads as a 2-D image


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def check_source(path: str | os.PathLike[str], series: Any, dtype: Any) -> tuple[Path, str, type[np.floating[Any]]]:
    """Check what every loader is given: a floating ``dtype``, ``series`` a SeriesInstanceUID string or None, and a
    ``path`` that exists. Returns the path, its suffix and the NumPy dtype to read into."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"`dtype` must be a floating torch dtype; got {dtype!r}")
    if series is not None and not isinstance(series, str):
        raise TypeError(f"`series` must be a SeriesInstanceUID string; got {type(series).__name__}")
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"{p}: no such file or folder")
    return p, suffix_of(p), np.float64 if dtype == torch.float64 else np.float32


def load_image(
    path: str | os.PathLike[str],
    *,
    spacing: Any = None,
    origin: Any = None,
    direction: Any = None,
    dtype: torch.dtype = torch.float32,
    series: str | None = None,
    volume: int | None = None,
) -> Image:
    """Read an image and its world geometry (LPS, mm); the suffix picks the reader (case-insensitive).

    - ``.nii``, ``.nii.gz``: nibabel's best affine (sform, else qform), RAS flipped to LPS; scl_slope/inter
      applied. A singleton 4th dimension is dropped; a 2-D file loads as 3-D with one slice.
    - DICOM: a ``.dcm``/``.ima`` file, a file with no suffix (or an all-digit one, as UID names have), or a folder
      holding one series (files directly in it; others, and files without pixel data, are skipped; pass
      ``series=`` a SeriesInstanceUID when it holds several). Slices are sorted along the slice normal and must
      be evenly spaced (within 1%); the third direction column is the step from one slice's position to the next
      (the normal, unless the series is tilted). RescaleSlope/Intercept are applied; colour becomes luminance;
      MONOCHROME1 values are kept as stored (not inverted); multi-frame files are refused.
      A single slice whose row and column cosines both lie in the x-y plane (|z| <= 1e-4) loads as a 2-D image:
      spacing (dx, dy), origin (x, y) of ImagePositionPatient and its z as ``slice_z``, direction from the cosines'
      x, y parts. Any other
      single slice loads as 3-D with one slice (slice spacing SpacingBetweenSlices, else SliceThickness, else 1).
    - ``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif``, ``.tiff``: 2-D (multi-page TIFF: 3-D, one page per
      slice) with spacing 1, origin 0, identity direction; colour becomes luminance (BT.601), alpha is dropped.
    - ``.npy``: the array as stored, (ny, nx) or (nz, ny, nx); spacing 1, origin 0, identity direction.

    Args:
        path: the file, or a folder of DICOM files.
        spacing, origin, direction: when given, replace the file's geometry (validated as in :class:`Image`).
        dtype: floating dtype of the data.
        series: the SeriesInstanceUID to read from a DICOM folder or file.
        volume: which volume (from 0) of a 4-D NIfTI file to read (a time series); a 4-D file needs it.

    Raises:
        InputFileError: one line naming the path: a missing, unreadable or truncated file, an unsupported suffix,
            content that is not real numbers, a 4-D volume, several DICOM series, uneven slices.
        TypeError, ValueError: a bad keyword argument.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> load_image(get_testdata_file("CT_small.dcm"))
        Image(size=(128, 128), spacing=(0.661468, 0.661468), origin=(-158.136, -179.036), dtype=float32, slice_z=-75.7)
    """
    if spacing is not None:  # the keywords before the file
        check_vector(spacing, "spacing", None, positive=True)
    if origin is not None:
        check_vector(origin, "origin", None)
    if direction is not None:
        check_direction(direction, None)
    p, suffix, np_dtype = check_source(path, series, dtype)
    dicom = p.is_dir() or suffix in DICOM_SUFFIXES or suffix == "" or suffix[1:].isdigit()
    if series is not None and not dicom:
        raise ValueError(f"`series` applies to DICOM files and folders; got {p}")
    if volume is not None and (isinstance(volume, bool) or not isinstance(volume, int) or volume < 0):
        raise ValueError(f"`volume` must be a whole number from 0; got {volume!r}")
    if volume is not None and suffix not in (".nii", ".nii.gz"):
        raise ValueError(f"`volume` applies to 4-D NIfTI files; got {p}")
    geometry: Geometry | None = None
    header: dict[str, Any] = {}
    study: dict[str, str] = {}
    if p.is_dir():
        array, geometry, study = _read_dicom_folder(p, series)
    elif dicom:
        array, geometry, study = _read_dicom_file(p, series)
    elif suffix in (".nii", ".nii.gz"):
        array, geometry, header = _read_nifti(p, np_dtype, volume)
    elif suffix in _TIFF:
        array = _read_tiff(p)
    elif suffix in _RASTER:
        array = _read_raster(p, pages=False)
    elif suffix == ".npy":
        array = _read_npy(p)
    else:
        raise InputFileError(f"{p}: unsupported file type {suffix!r}; lossfit reads {', '.join(READ_SUFFIXES)}")
    data = torch.from_numpy(np.ascontiguousarray(array, dtype=np_dtype)).to(dtype)
    d = data.dim()
    given = (
        None if spacing is None else check_vector(spacing, "spacing", d, positive=True),
        None if origin is None else check_vector(origin, "origin", d),
        None if direction is None else check_direction(direction, d),
    )
    found = geometry or (None, None, None)
    slice_z = 0.0
    if dicom:
        header = {"dicom": study}
    if d == 2 and found[1] is not None and len(found[1]) == 3:  # an axial DICOM slice: its z places the plane
        slice_z = found[1][2]
        found = (found[0], found[1][:2], found[2])
    try:
        return Image(
            data,
            spacing=given[0] or found[0],
            origin=given[1] or found[1],
            direction=given[2] or found[2],
            slice_z=slice_z,
            header=header,
        )
    except (TypeError, ValueError) as exc:
        raise InputFileError(f"{p}: its geometry is invalid ({first_line(exc)})") from None


def unreadable(p: Path, kind: str, exc: BaseException) -> InputFileError:
    return InputFileError(f"{p}: cannot be read as {kind} ({first_line(exc)})")


def _real(p: Path, array: np.ndarray) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise InputFileError(f"{p}: holds {array.dtype} data, not real numbers")
    return array


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float64) @ _LUMA


# --- NIfTI ----------------------------------------------------------------------------------------------------
def open_nifti(p: Path) -> tuple[Any, tuple[int, ...]]:
    """A NIfTI file opened by nibabel (no data read yet) and its shape without trailing singleton dimensions past
    the third; refused when it is another format, holds other than real numbers, or its header claims more data
    than the file can hold (:func:`check_nifti_size`). nibabel's own errors pass through to the caller."""
    import nibabel as nib

    img = nib.load(p)
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputFileError(f"{p}: is a {type(img).__name__}, not a NIfTI image")
    kind = img.get_data_dtype()
    if kind.names or kind.kind not in "biuf":
        raise InputFileError(f"{p}: holds {kind} data, not real numbers")
    shape = tuple(int(n) for n in img.shape)
    check_nifti_size(p, img, shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return img, shape


def _read_nifti(p: Path, np_dtype: type, volume: int | None = None) -> tuple[np.ndarray, Geometry, dict[str, Any]]:
    try:
        img, shape = open_nifti(p)
        if len(shape) == 4 and volume is not None:
            if not 0 <= volume < shape[3]:
                raise InputFileError(f"{p}: holds {shape[3]} volumes (0..{shape[3] - 1}); got volume={volume}")
            array: np.ndarray = np.array(img.dataobj[..., volume], dtype=np_dtype)  # a writable copy of one volume
            shape = shape[:3]
        elif len(shape) > 3:
            raise InputFileError(
                f"{p}: holds a {len(shape)}-D image of shape {shape}; lossfit loads one 3-D volume (choose one "
                "with volume=)"
            )
        else:
            if volume not in (None, 0):
                raise InputFileError(f"{p}: holds one volume (0); got volume={volume}")
            array = np.asarray(img.get_fdata(dtype=np_dtype)).reshape(shape + (1,) * (3 - len(shape)))
        affine = LPS_RAS @ np.asarray(img.affine, dtype=np.float64)
    except (InputFileError, MemoryError):
        raise
    except Exception as exc:
        raise unreadable(p, "NIfTI", exc) from None
    warn_if_forms_disagree(p, img, shape)
    matrix = affine[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    if not (spacing > 0).all():
        raise InputFileError(f"{p}: its affine has a zero column; it places no grid in space")
    direction = tuple(tuple(float(x) for x in row) for row in matrix / spacing)
    geometry = (tuple(float(x) for x in spacing), tuple(float(x) for x in affine[:3, 3]), direction)
    codes = {"sform_code": int(img.header["sform_code"]), "qform_code": int(img.header["qform_code"])}
    return array.transpose(2, 1, 0), geometry, codes


_DEFLATE_MAX_RATIO = 1032  # deflate never expands its input by more than about 1032 times


def check_nifti_size(p: Path, img: Any, shape: tuple[int, ...]) -> None:
    """Refuse, before any allocation, a header that claims more data than the file can hold: the voxel count times
    the voxel size plus the data offset against the file's size (a .nii), or against the size gzip records and
    deflate's largest ratio (a .nii.gz), so a 100-byte file claiming 10^12 voxels is one clear error."""
    header = img.header
    need = int(np.prod(shape, dtype=np.float64)) * int(header.get_data_dtype().itemsize)
    offset = int(header.get_data_offset()) if str(p).lower().endswith(".nii") else 0
    size = p.stat().st_size
    claim = f"{p}: its header claims {'x'.join(str(n) for n in shape)} voxels ({need:,} bytes of data)"
    if not str(p).lower().endswith(".gz"):
        if size < offset + need:
            raise InputFileError(f"{claim}, but the file holds {size:,} bytes: it is truncated or the header is wrong")
        return
    if need > size * _DEFLATE_MAX_RATIO:
        raise InputFileError(f"{claim}, more than {size:,} compressed bytes can hold: the header is wrong")
    with open(p, "rb") as handle:
        handle.seek(-4, os.SEEK_END)
        recorded = int.from_bytes(handle.read(4), "little")  # the uncompressed size modulo 2**32
    # gzip records the last member's size only: a short record is confirmed by counting (up to the claim).
    if need + 348 < 2**32 and recorded < need + 348 and _gzip_length(p, need + 348) < need + 348:
        raise InputFileError(f"{claim}, but it uncompresses to fewer: it is truncated or the header is wrong")


def _gzip_length(p: Path, enough: int) -> int:
    """The uncompressed length of a gzip file, counted in chunks (nothing kept) up to ``enough`` bytes."""
    total = 0
    try:
        with gzip.open(p, "rb") as stream:
            while total < enough:
                chunk = stream.read(1 << 20)
                if not chunk:
                    break
                total += len(chunk)
    except (OSError, EOFError):
        pass
    return total


def warn_if_forms_disagree(p: Path, img: Any, shape: tuple[int, ...]) -> None:
    """Warn when both the sform and the qform are set and place the grid's corners further apart than the qform's
    own precision: 0.01 mm, or a thousandth of the grid's diagonal where that is more. (The qform stores a unit
    quaternion's last three parts in float32 and recomputes the first; near a half turn, which every near-axial
    LPS grid is in NIfTI's RAS, that loses about sqrt(float32 eps) ~ 2.4e-4 of the extent, in every writer.)

    lossfit uses nibabel's choice (``img.affine``: the sform when its code is non-zero, else the qform), which is
    what NIfTI's own documentation recommends for an aligned space; other tools (ITK, older FSL) may prefer the
    qform, so the two readings of the file differ.
    """
    sform, s_code = img.header.get_sform(coded=True)
    qform, q_code = img.header.get_qform(coded=True)
    if not (s_code and q_code) or sform is None or qform is None:
        return
    corners = np.array(np.meshgrid(*[[0.0, max(n - 1, 0)] for n in (shape + (1, 1, 1))[:3]], indexing="ij"))
    corners = np.concatenate([corners.reshape(3, -1), np.ones((1, 8))])
    apart = float(np.abs((sform - qform) @ corners)[:3].max())
    diagonal = float(np.linalg.norm(sform[:3, :3] @ (corners[:3, -1] - corners[:3, 0])))
    if apart > max(0.01, 1e-3 * diagonal):
        used = "sform" if s_code else "qform"
        warnings.warn(
            f"{p}: its sform (code {int(s_code)}) and qform (code {int(q_code)}) disagree, placing the grid's corners "
            f"up to {apart:.3g} mm apart; lossfit uses the {used}, as nibabel does (other tools may use the qform)",
            GeometryWarning,
            stacklevel=4,
        )


def _nifti_bytes(image: Image, gz: bool) -> bytes:
    data = image.data.detach().to("cpu", torch.float32).numpy()
    return nifti_bytes(data.T if image.ndim == 3 else data.T[:, :, None], image, gz=gz)


def nifti_bytes(array: np.ndarray, grid: Image, *, gz: bool, tr: float | None = None) -> bytes:
    """NIfTI-1 bytes of ``array`` (float32, in NIfTI's index order: x, y, z[, t]) placed by ``grid``'s geometry:
    LPS flipped to RAS, as the sform and the qform with the source's codes where the grid came from a NIfTI file
    (``grid.header``), else 1 (scanner); a 2-D grid lies in its plane ``z = slice_z``. ``tr`` (seconds) goes into
    pixdim[4] for a series."""
    import nibabel as nib

    affine = np.eye(4)
    d = grid.ndim
    affine[:d, :d] = grid.affine.numpy()[:d, :d]
    affine[:d, 3] = grid.origin
    if d == 2:
        affine[2, 3] = grid.slice_z  # the plane a 2-D image lies in
    ras = LPS_RAS @ affine
    nifti = nib.Nifti1Image(array, ras)
    nifti.header.set_xyzt_units("mm", "sec" if array.ndim == 4 else None)
    # The source's codes where the grid came from a NIfTI file (scanner, aligned, template, MNI...), else 1.
    s_code, q_code = grid.header.get("sform_code", 1), grid.header.get("qform_code", 1)
    nifti.set_sform(ras, code=int(s_code))
    nifti.set_qform(ras, code=int(q_code))  # the nearest rotation and zooms when the grid is sheared
    if array.ndim == 4:
        nifti.header["pixdim"][4] = tr or 0.0
    raw = nifti.to_bytes()
    return gzip.compress(raw, compresslevel=6, mtime=0) if gz else raw


# --- DICOM ----------------------------------------------------------------------------------------------------
def _read_dicom_file(p: Path, series: str | None) -> tuple[np.ndarray, Geometry, dict[str, str]]:
    import pydicom

    try:
        ds = pydicom.dcmread(p, force=True, defer_size="4 KB")
    except MemoryError:
        raise
    except Exception as exc:
        raise unreadable(p, "DICOM", exc) from None
    if "PixelData" not in ds:
        raise InputFileError(f"{p}: holds no image (no pixel data)")
    uid = str(ds.get("SeriesInstanceUID", ""))
    if series is not None and uid != series:
        raise InputFileError(f"{p}: holds series {uid!r}, not {series!r}")
    return stack_dicom(p, [(p, ds)])


def _read_dicom_folder(p: Path, series: str | None) -> tuple[np.ndarray, Geometry, dict[str, str]]:
    return stack_dicom(p, dicom_series_items(p, series))


def dicom_series_items(p: Path, series: str | None) -> list[tuple[Path, Any]]:
    """The (file, dataset) pairs of the one series (or ``series``, a SeriesInstanceUID) in the folder ``p`` that
    hold pixel data; files that are not DICOM are skipped, subfolders are not searched."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: dict[str, list[tuple[Path, Any]]] = {}
    for f in sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")):
        try:
            ds = pydicom.dcmread(f, defer_size="4 KB")
        except InvalidDicomError:
            continue  # not a DICOM file
        except MemoryError:
            raise
        except Exception as exc:
            raise unreadable(f, "DICOM", exc) from None
        if "PixelData" in ds:
            groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((f, ds))
    if not groups:
        raise InputFileError(f"{p}: holds no DICOM images (subfolders are not searched)")
    listing = ", ".join(f"{uid!r} ({len(items)} files)" for uid, items in groups.items())
    if series is not None:
        if series not in groups:
            raise InputFileError(f"{p}: holds no series {series!r}; it holds {listing}")
        return groups[series]
    if len(groups) > 1:
        raise InputFileError(f"{p}: holds {len(groups)} DICOM series: {listing}; choose one with series=")
    return next(iter(groups.values()))


def _floats(ds: Any, keyword: str, default: list[float]) -> np.ndarray:
    value = ds.get(keyword)
    return np.array([float(v) for v in value] if value else default, dtype=np.float64)


def _pixels(f: Path, ds: Any) -> np.ndarray:
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise InputFileError(f"{f}: holds {frames} frames (multi-frame DICOM), which lossfit does not read")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    try:
        array = np.asarray(ds.pixel_array)
    except MemoryError:
        raise
    except Exception as exc:
        raise unreadable(f, "DICOM pixel data", exc) from None
    if array.ndim == 3 and photometric.startswith(("RGB", "YBR")):
        return _luminance(array)  # pydicom gives YBR data as RGB
    if array.ndim != 2 or not photometric.startswith("MONOCHROME"):
        raise InputFileError(f"{f}: holds {photometric} pixels of shape {array.shape}; expected greyscale or RGB")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return _real(f, array).astype(np.float64) * slope + intercept


def stack_dicom(source: Path, items: list[tuple[Path, Any]]) -> tuple[np.ndarray, Geometry, dict[str, str]]:
    array, geometry = stack_pixels(source, items)
    first = items[0][1]
    study = {k: str(first.get(k)) for k in STUDY_TAGS if first.get(k) not in (None, "")}
    return array, geometry, study


def stack_pixels(source: Path, items: list[tuple[Path, Any]]) -> tuple[np.ndarray, Geometry]:
    first = items[0][1]
    iop = _floats(first, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0])
    if iop.size != 6:
        raise InputFileError(f"{items[0][0]}: ImageOrientationPatient must hold 6 numbers; got {iop.size}")
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    dy, dx = _floats(first, "PixelSpacing", [float(v) for v in first.get("ImagerPixelSpacing") or [1, 1]])
    shape = (first.get("Rows"), first.get("Columns"))
    for f, ds in items[1:]:
        if (ds.get("Rows"), ds.get("Columns")) != shape:
            raise InputFileError(
                f"{source}: {f.name} is {ds.get('Rows')}x{ds.get('Columns')}, not {shape[0]}x{shape[1]}"
            )
        if not np.allclose(_floats(ds, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), iop, atol=1e-4):
            raise InputFileError(f"{source}: its slices have different orientations ({f.name} differs; a localizer?)")
        if not np.allclose(_floats(ds, "PixelSpacing", [dy, dx]), [dy, dx], rtol=1e-4):
            raise InputFileError(f"{source}: its slices have different PixelSpacing ({f.name} differs)")
    if len(items) == 1:
        position = _floats(first, "ImagePositionPatient", [0, 0, 0])
        array = _pixels(items[0][0], first)
        if abs(row[2]) <= _IN_PLANE_TOL and abs(col[2]) <= _IN_PLANE_TOL:
            direction2 = ((float(row[0]), float(col[0])), (float(row[1]), float(col[1])))
            # the slice's z travels as a third origin entry: load_image makes it the 2-D image's slice_z
            return array, ((float(dx), float(dy)), tuple(float(v) for v in position[:3]), direction2)
        dz = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
        return array[None], _geometry3(dx, dy, dz if dz > 0 else 1.0, position, row, col, normal)
    if any("ImagePositionPatient" not in ds for _, ds in items):
        raise InputFileError(f"{source}: its slices lack ImagePositionPatient; they cannot be put in order")
    positions = np.stack([_floats(ds, "ImagePositionPatient", []) for _, ds in items])
    order = np.argsort(positions @ normal, kind="stable")
    positions = positions[order]
    steps = np.diff(positions, axis=0)
    gaps = steps @ normal
    if gaps.min() <= 1e-4:
        raise InputFileError(
            f"{source}: {int((gaps <= 1e-4).sum()) + 1} slices share a position (several echoes or time points?)"
        )
    mean = steps.mean(axis=0)
    length = float(np.linalg.norm(mean))
    if np.linalg.norm(steps - mean, axis=1).max() > 0.01 * length:
        raise InputFileError(
            f"{source}: its slices are not evenly spaced ({gaps.min():.6g} to {gaps.max():.6g} mm; a slice missing?)"
        )
    step = mean / length
    if np.linalg.norm(step - normal) < 1e-4:
        step, length = normal, float(mean @ normal)
    array = np.stack([_pixels(*items[i]) for i in order])
    return array, _geometry3(dx, dy, length, positions[0], row, col, step)


def _geometry3(
    dx: float, dy: float, dz: float, origin: np.ndarray, row: np.ndarray, col: np.ndarray, third: np.ndarray
) -> Geometry:
    columns = np.stack([row, col, third], axis=1)
    direction = tuple(tuple(float(x) for x in r) for r in columns)
    return (float(dx), float(dy), float(dz)), tuple(float(x) for x in origin), direction


def _ds(value: float) -> str:
    """``value`` as a DICOM decimal string (at most 16 characters)."""
    for digits in range(12, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"{value} cannot be written as a DICOM decimal string")


def _dicom_scaling(values: np.ndarray) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept that store ``values`` in int16 (exact for whole numbers in range)."""
    if not np.isfinite(values).all():
        raise ValueError("`image` holds NaN or infinity, which DICOM cannot store")
    lo, hi = float(values.min()), float(values.max())
    if np.array_equal(values, np.rint(values)) and lo >= -32768 and hi <= 32767:
        return 1.0, 0.0
    # map [lo, hi] onto [-32767, 32767]; the decimal strings are what a reader sees, so quantise with them
    intercept = float(_ds((hi + lo) / 2))
    slope = float(_ds(max(hi - intercept, intercept - lo, 1e-30) / 32767 * (1 + 1e-9)))
    return slope, intercept


def _dicom_slice(
    values: np.ndarray,
    scaling: tuple[float, float],
    spacing: tuple[float, float],
    position: Sequence[float],
    orientation: Sequence[float],
    uids: tuple[str, str, str],
    instance: int,
    thickness: float | None = None,
    study: Mapping[str, str] | None = None,
    temporal: tuple[int, int] | None = None,
) -> bytes:
    """One Secondary Capture slice: int16 pixels with the rescale, the image-plane tags, the shared UIDs (study,
    series, frame of reference) and the patient and study tags of ``study``; ``temporal`` (the volume's number from
    1, the number of volumes) for a slice of a series of volumes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    slope, intercept = scaling
    stored = np.clip(np.rint((values - intercept) / slope), -32768, 32767).astype("<i2")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uids
    ds.PatientName, ds.PatientID, ds.StudyID, ds.StudyDate, ds.StudyTime = "", "", "", "", ""
    ds.PatientBirthDate, ds.PatientSex, ds.AccessionNumber, ds.ReferringPhysicianName = "", "", "", ""
    for keyword, value in (study or {}).items():
        if keyword in STUDY_TAGS and keyword not in ("StudyInstanceUID", "FrameOfReferenceUID"):
            setattr(ds, keyword, value)
    ds.SeriesDescription = "lossfit"
    ds.Modality, ds.ConversionType, ds.SeriesNumber, ds.InstanceNumber = "OT", "WSD", 1, instance
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # [row spacing dy, column spacing dx]
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = [_ds(v) for v in orientation]
    if thickness is not None:
        ds.SliceThickness = _ds(thickness)
    if temporal is not None:
        ds.TemporalPositionIdentifier, ds.NumberOfTemporalPositions = temporal
        ds.AcquisitionNumber = temporal[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = _ds(intercept), _ds(slope), "US"
    ds.PixelData = stored.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _orthonormal(m: np.ndarray) -> None:
    if not np.allclose(m.T @ m, np.eye(len(m)), atol=1e-6):
        raise ValueError("`image` must have an orthonormal direction to save as .dcm; its grid is sheared")


def _dicom_bytes(image: Image) -> bytes:

    if image.ndim != 2:
        raise ValueError(
            f"`image` must be 2-D to save as .dcm; got a {image.ndim}-D image (save_dicom_series writes a folder)"
        )
    m = np.array(image.direction)
    _orthonormal(m)
    values = image.numpy().astype(np.float64)
    study = image.header.get("dicom", {})
    orientation = [m[0, 0], m[1, 0], 0.0, m[0, 1], m[1, 1], 0.0]
    position = [image.origin[0], image.origin[1], image.slice_z]
    spacing = (image.spacing[0], image.spacing[1])
    return _dicom_slice(values, _dicom_scaling(values), spacing, position, orientation, _uids(study), 1, None, study)


def _uids(study: Mapping[str, str]) -> tuple[str, str, str]:
    """The study, series and frame of reference UIDs of a written image: its source's study and frame of reference
    (where its grid came from a DICOM series), always a new series."""
    from pydicom.uid import generate_uid

    return (
        study.get("StudyInstanceUID") or generate_uid(),
        generate_uid(),
        study.get("FrameOfReferenceUID") or generate_uid(),
    )


def save_dicom_series(image: Image, folder: str | os.PathLike[str]) -> None:
    """Write a 3-D ``image`` as a DICOM series: ``folder/slice0001.dcm`` ... , one Secondary Capture file per slice
    with its ImagePositionPatient, the shared ImageOrientationPatient, PixelSpacing and SliceThickness, and one
    rescale for the whole volume. The folder is built beside its final place and renamed into it; it must not
    exist yet."""
    if not isinstance(image, Image) or image.ndim != 3:
        raise ValueError("`image` must be a 3-D Image to save as a DICOM series")
    write_dicom_volumes(image, [image.numpy().astype(np.float64)], folder)


def write_dicom_volumes(grid: Image, volumes: Sequence[np.ndarray], folder: str | os.PathLike[str]) -> None:
    """Write volumes on ``grid``'s 3-D grid (each of its shape) as one DICOM series in a new ``folder``: one Secondary
    Capture file per slice (``slice0001.dcm``, ... in volume then slice order), one rescale for all the volumes,
    and for more than one volume the TemporalPositionIdentifier (1, 2, ...), NumberOfTemporalPositions and
    AcquisitionNumber that group the slices into volumes again (:func:`lossfit.load_series`). The folder is built
    beside its final place and renamed into it; it must not exist yet."""
    import shutil
    import tempfile

    target = Path(folder)
    if target.exists():
        raise ValueError(f"`folder` {str(target)!r} exists; a DICOM series is written into a new folder")
    if not target.parent.exists():
        raise InputFileError(f"{target}: the folder {target.parent} does not exist")
    m = np.array(grid.direction)
    _orthonormal(m)
    scaling = _dicom_scaling(np.stack([np.asarray(v, dtype=np.float64) for v in volumes]))
    study = grid.header.get("dicom", {})
    uids = _uids(study)
    orientation = [*m[:, 0], *m[:, 1]]
    origin, step = np.array(grid.origin), m[:, 2] * grid.spacing[2]
    spacing = (grid.spacing[0], grid.spacing[1])
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        number = 0
        for t, values in enumerate(volumes):
            temporal = None if len(volumes) == 1 else (t + 1, len(volumes))
            for k in range(values.shape[0]):
                number += 1
                payload = _dicom_slice(
                    np.asarray(values[k], dtype=np.float64), scaling, spacing, list(origin + k * step), orientation,
                    uids, number, grid.spacing[2], study, temporal,
                )  # fmt: skip
                (tmp / f"slice{number:04d}.dcm").write_bytes(payload)
        tmp.chmod(0o777 & ~_umask())
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- PNG, JPEG, BMP, TIFF, NumPy ------------------------------------------------------------------------------
def _pil_array(p: Path, im: Any) -> np.ndarray:
    mode = im.mode
    if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        im, mode = im.convert("RGBA" if "transparency" in im.info or mode == "PA" else "RGB"), "RGB"
    array = np.asarray(im)
    if mode.startswith(("RGB", "RGBA")) or (array.ndim == 3 and array.shape[-1] >= 3):
        return _luminance(array)
    if array.ndim == 3:  # grey with alpha
        array = array[..., 0]
    return _real(p, array)


def _read_raster(p: Path, pages: bool) -> np.ndarray:
    from PIL import Image as PILImage
    from PIL import ImageSequence

    try:
        with PILImage.open(p) as im:
            frames = [_pil_array(p, f) for f in ImageSequence.Iterator(im)] if pages else [_pil_array(p, im)]
    except (InputFileError, MemoryError):
        raise
    except Exception as exc:
        raise unreadable(p, "an image", exc) from None
    if len({f.shape for f in frames}) > 1:
        raise InputFileError(f"{p}: its pages differ in size ({', '.join(str(f.shape) for f in frames)})")
    return frames[0] if len(frames) == 1 else np.stack(frames)


def _read_tiff(p: Path) -> np.ndarray:
    try:
        import tifffile
    except ImportError:
        return _read_raster(p, pages=True)
    try:
        with tifffile.TiffFile(p) as tif:
            series = tif.series[0]
            array, axes, photometric = series.asarray(), series.axes, series.keyframe.photometric
    except MemoryError:
        raise
    except Exception as exc:
        raise unreadable(p, "TIFF", exc) from None
    array = _real(p, np.asarray(array))
    if "S" in axes:  # samples per pixel: colour, or grey and alpha
        array = np.moveaxis(array, axes.index("S"), -1)
        rgb = photometric == tifffile.PHOTOMETRIC.RGB and array.shape[-1] >= 3
        array = _luminance(array) if rgb else array[..., 0]
        axes = axes.replace("S", "")
    if "Y" in axes and "X" in axes:
        array = np.moveaxis(array, (axes.index("Y"), axes.index("X")), (-2, -1))
    stacked = [n for n in array.shape[:-2] if n > 1]
    if len(stacked) > 1:
        raise InputFileError(f"{p}: holds a stack of shape {array.shape} (axes {axes}); expected one 2-D or 3-D image")
    array = array.reshape(-1, *array.shape[-2:])
    return array[0] if array.shape[0] == 1 else array


def _read_npy(p: Path) -> np.ndarray:
    try:
        array = np.load(p, allow_pickle=False)
    except MemoryError:
        raise
    except Exception as exc:
        raise unreadable(p, "NumPy", exc) from None
    if not isinstance(array, np.ndarray):
        raise InputFileError(f"{p}: does not hold one array")
    if array.ndim not in (2, 3) or array.size == 0:
        raise InputFileError(f"{p}: holds an array of shape {array.shape}; expected (ny, nx) or (nz, ny, nx)")
    return _real(p, array)


def _png_bytes(image: Image) -> bytes:
    from PIL import Image as PILImage

    values = np.rint(image.numpy().astype(np.float64))
    _check_png(_plane_ndim(image), float(np.min(values)), float(np.max(values)))
    stored = values.reshape(values.shape[-2:])
    stored = stored.astype(np.uint8 if values.max() <= 255 else np.uint16)
    buffer = io.BytesIO()
    PILImage.fromarray(stored).save(buffer, format="PNG")
    return buffer.getvalue()


def _plane_ndim(image: Image) -> int:
    """2 for a 2-D image or a volume of one slice (a 2-D NIfTI file loads as one), else 3."""
    return 2 if image.ndim == 2 or image.shape[0] == 1 else image.ndim


def _check_png(ndim: int, low: float, high: float) -> None:
    if ndim != 2:
        raise ValueError(f"`image` must be 2-D to save as .png; got a {ndim}-D image (use .tif or .nii)")
    if not (math.isfinite(low) and math.isfinite(high)) or round(low) < 0 or round(high) > 65535:
        raise ValueError(
            f"`image` values must round to whole numbers in 0..65535 to save as .png; they span "
            f"{low:.6g} to {high:.6g} (save as .tif, .nii or .npy)"
        )


def check_savable(grid: Image, path: str | os.PathLike[str], low: float, high: float) -> None:
    """Refuse, before any work, what :func:`save_image` (or :func:`save_dicom_series` for a 3-D ``.dcm``) would
    refuse for an image on ``grid``'s geometry whose values span ``low`` to ``high``: an unsupported suffix, a
    PNG that is not 2-D or whose values do not round into 0..65535, a DICOM whose grid is sheared or whose values
    are not finite.

    Raises:
        ValueError: naming the format and what it cannot hold.
    """
    suffix = suffix_of(Path(path))
    if suffix not in SAVE_SUFFIXES:
        raise ValueError(f"`path` must end in one of {', '.join(SAVE_SUFFIXES)}; got {os.fspath(path)!r}")
    if suffix == ".png":
        _check_png(_plane_ndim(grid), low, high)
    if suffix == ".dcm":
        _orthonormal(np.array(grid.direction))
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError("`image` holds NaN or infinity, which DICOM cannot store")


def _tiff_bytes(image: Image) -> bytes:
    from PIL import Image as PILImage

    values = image.numpy().astype(np.float32)
    pages = [PILImage.fromarray(page) for page in (values if image.ndim == 3 else values[None])]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
    return buffer.getvalue()


def _npy_bytes(image: Image) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, image.numpy())
    return buffer.getvalue()


def save_image(image: Image, path: str | os.PathLike[str]) -> None:
    """Write ``image``; the suffix of ``path`` picks the format (case-insensitive).

    - ``.nii``, ``.nii.gz``: float32 data, the geometry as the sform and qform with the source's codes where the
      image's grid came from a NIfTI file (``image.header``), else code 1 (scanner), LPS flipped to RAS;
      a 2-D image is written as 3-D with one slice. A sheared grid is exact in the sform only.
    - ``.tif``, ``.tiff``: float32 data, one page per slice; no geometry.
    - ``.png``: 2-D (or a volume of one slice); values rounded to whole numbers, 8-bit when they all lie in
      0..255, else 16-bit; values outside 0..65535 or NaN raise ``ValueError``. No geometry.
    - ``.npy``: the data as they are; no geometry.
    - ``.dcm``: 2-D only (:func:`save_dicom_series` writes a volume), a Secondary Capture image with
      PixelSpacing, ImagePositionPatient (z = ``slice_z``) and ImageOrientationPatient from the geometry, in the
      patient, study and frame of reference of the DICOM series its grid came from (``image.header["dicom"]``;
      new ones otherwise) and a new series; int16 values with RescaleSlope/Intercept chosen to span the data
      (exact for whole numbers in the int16 range, else within one step, (max - min) / 65534).

    Raises:
        ValueError: an unsupported suffix, or data the format cannot hold; raised before anything is written.
    """
    if not isinstance(image, Image):
        raise TypeError(f"`image` must be an Image; got {type(image).__name__}")
    target = Path(path)
    suffix = suffix_of(target)
    writers = {
        ".nii": lambda: _nifti_bytes(image, gz=False),
        ".nii.gz": lambda: _nifti_bytes(image, gz=True),
        ".png": lambda: _png_bytes(image),
        ".tif": lambda: _tiff_bytes(image),
        ".tiff": lambda: _tiff_bytes(image),
        ".npy": lambda: _npy_bytes(image),
        ".dcm": lambda: _dicom_bytes(image),
    }
    if suffix not in writers:
        raise ValueError(f"`path` must end in one of {', '.join(SAVE_SUFFIXES)}; got {str(target)!r}")
    payload = writers[suffix]()
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        handle.write(payload)
