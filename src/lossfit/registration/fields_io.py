"""Displacement fields on disk, in the layouts that ITK, SimpleITK and ANTs read and write.

Convention:
    A displacement field is a tensor ``u`` of shape ``(*grid.shape, d)`` on the grid of an
    :class:`~lossfit.registration.Image` (data order: ``(ny, nx, 2)`` or ``(nz, ny, nx, 3)``). Its last axis holds
    the components in world-axis order (x, y[, z]), LPS millimetres. It maps the world point ``x`` of each voxel
    centre of ``grid`` to ``phi(x) = x + u(x)``: ITK's ``DisplacementFieldTransform``, and the array
    ``SimpleITK.GetArrayFromImage`` gives of an ITK displacement field image on that grid. Resampling through it,
    ``resample(image, grid, displacement=u)``, gives at ``x`` the image at ``x + u(x)``.

Formats:
    - NIfTI-1 (``.nii``, ``.nii.gz``), ITK's layout of a vector image: 5-D, dims ``(nx, ny, nz, 1, d)`` (a 2-D
      field: ``(nx, ny, 1, 1, 2)``), intent code 1007 (``NIFTI_INTENT_VECTOR``), the grid as the sform and the
      qform (LPS flipped to RAS, as every NIfTI affine). The vector components are stored as ITK holds them, in
      LPS: they are NOT flipped to RAS. SimpleITK 2.5 (ITK 5.4) and ANTsPy 0.6 write and read intent 1007 this way
      (checked by writing known fields with each and reading the raw file). A file with intent code 1006
      (``NIFTI_INTENT_DISPVECT``) is read as ITK 5.4 and ANTsPy 0.6 read it: its components are RAS, and x and y
      are flipped to LPS (ITK before 5.x took every vector as stored, and ITK 5.4 misreads a 2-D one, flipping
      the first two of every three stored numbers; intent 1006 files are ambiguous, and lossfit writes 1007
      only). The geometry is float32 in the file (about 6e-8 of each coordinate).
    - MetaImage (``.mha``, data in the file): LPS natively; the geometry is written in full double precision; the
      data are read uncompressed or zlib-compressed (``CompressedData``). A 2-D field loses ``grid.slice_z``.
    - ITK HDF5 (``.h5``, ``.hdf5``): :func:`write_composite_h5` writes an affine matrix and a field as one
      ``CompositeTransform`` that ``SimpleITK.ReadTransform`` reads.

The field is stored in its own precision: float64 as float64, every other dtype as float32 (exact for float16 and
bfloat16), so a round trip returns the values written. Every write goes through :func:`lossfit.io.atomic_path`: a
refused or failed write leaves no file behind and never touches an existing one.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lossfit._validation import as_real_tensor
from lossfit.errors import InputFileError
from lossfit.io import atomic_path, first_line
from lossfit.registration.image import Image
from lossfit.registration.io import LPS_RAS, open_nifti, suffix_of, unreadable, warn_if_forms_disagree

FIELD_SUFFIXES = (".nii", ".nii.gz", ".mha")
H5_SUFFIXES = (".h5", ".hdf5")
NIFTI_INTENT_VECTOR = 1007  # what ITK writes for a vector image; components in LPS as stored
NIFTI_INTENT_DISPVECT = 1006  # ITK 5.4 reads its components as RAS
_MET_TYPES = {"MET_FLOAT": "f4", "MET_DOUBLE": "f8"}
_MAX_HEADER = 1 << 16  # bytes of MetaImage header read before giving up on finding its end
_BOTTOM_TOL = 1e-12  # how far the last row of an affine matrix may be from (0, ..., 0, 1)


def _check_path(path: Any, suffixes: tuple[str, ...]) -> Path:
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"`path` must be a str or os.PathLike; got {type(path).__name__}")
    target = Path(path)
    if suffix_of(target) not in suffixes:
        raise ValueError(f"`path` must end in one of {', '.join(suffixes)}; got {os.fspath(path)!r}")
    return target


def _check_field(displacement: Any, grid: Any) -> np.ndarray:
    """The field as a CPU array of shape ``(*grid.shape, d)``, float64 when given float64, else float32."""
    if not isinstance(grid, Image):
        raise TypeError(f"`grid` must be a lossfit.registration.Image; got {type(grid).__name__}")
    u = as_real_tensor(displacement, "displacement")  # real, finite, non-empty
    want = (*grid.shape, grid.ndim)
    if tuple(u.shape) != want:
        raise ValueError(
            f"`displacement` must have shape (*grid.shape, {grid.ndim}) = {want}: one (x, y[, z]) vector per voxel "
            f"of `grid`; got {tuple(u.shape)}"
        )
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    return u.to("cpu", dtype).numpy()


def write_displacement_field(path: str | os.PathLike[str], displacement: torch.Tensor, grid: Image) -> None:
    """Write a displacement field that ITK, SimpleITK and ANTs read back as the same mapping.

    Args:
        path: ``.nii``, ``.nii.gz`` (ITK's 5-D vector NIfTI, intent 1007) or ``.mha`` (MetaImage); see the
            module docstring.
        displacement: ``(*grid.shape, d)``: ``(ny, nx, 2)`` or ``(nz, ny, nx, 3)``, world displacements (LPS mm,
            components x, y[, z]) at the voxel centres of ``grid``; finite. Stored as float64 when float64, else
            as float32.
        grid: the image whose grid the field lives on (its data are not used). A NIfTI file keeps the sform and
            qform codes of the file the grid came from (else 1, scanner).

    Convention:
        ``phi(x) = x + u(x)`` for the world point ``x`` of each voxel centre (ITK's ``DisplacementFieldTransform``);
        the components are written in LPS in every format (ITK's own convention for NIfTI vectors too). A sheared
        grid is exact in the NIfTI sform and the MetaImage only.

    Raises:
        TypeError: ``path`` is not a path, ``grid`` not an Image, ``displacement`` not real numbers.
        ValueError: an unsupported suffix, a field of the wrong shape, NaN or infinity in it; raised before
            anything is written.
        InputFileError: the folder of ``path`` does not exist.

    Example:
        >>> import tempfile, torch
        >>> from lossfit.registration import Image
        >>> grid = Image(torch.zeros(4, 5, 6), spacing=(1.0, 2.0, 3.0))
        >>> u = torch.zeros(4, 5, 6, 3, dtype=torch.float64)
        >>> u[..., 0] = 1.5  # every point moves 1.5 mm towards the patient's left
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     write_displacement_field(f"{folder}/warp.nii.gz", u, grid)
        ...     back, field_grid = read_displacement_field(f"{folder}/warp.nii.gz")
        >>> torch.equal(back, u), field_grid.spacing
        (True, (1.0, 2.0, 3.0))
    """
    target = _check_path(path, FIELD_SUFFIXES)
    field = _check_field(displacement, grid)
    suffix = suffix_of(target)
    payload = _mha_bytes(field, grid) if suffix == ".mha" else _nifti_field_bytes(field, grid, suffix == ".nii.gz")
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        handle.write(payload)


def read_displacement_field(path: str | os.PathLike[str]) -> tuple[torch.Tensor, Image]:
    """Read a displacement field written by lossfit, ITK/SimpleITK (``WriteImage`` of a vector image) or ANTs
    (the ``*Warp.nii.gz`` and ``*InverseWarp.nii.gz`` of a registration).

    Args:
        path: ``.nii``, ``.nii.gz`` (5-D vector NIfTI, intent code 1007, or 1006 whose components are RAS) or
            ``.mha`` (MetaImage with its data in the file).

    Returns:
        ``(u, grid)``: ``u`` float64 of shape ``(*grid.shape, d)``, components x, y[, z] in LPS mm; ``grid`` an
        Image of zeros (float32) with the field's geometry (a NIfTI's sform and qform codes in its header).

    Convention:
        ``phi(x) = x + u(x)`` at the voxel centres of ``grid``, as ITK's ``DisplacementFieldTransform`` reads the
        file; ``u`` equals ``SimpleITK.GetArrayFromImage(SimpleITK.ReadImage(path))``.

    Raises:
        InputFileError: naming the file: missing, unreadable or truncated, an unsupported suffix, not a vector
            image, a component count other than the grid's dimension (2 or 3), NaN or infinity in the field, an
            invalid geometry.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"`path` must be a str or os.PathLike; got {type(path).__name__}")
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"{p}: no such file" if not p.exists() else f"{p}: not a file")
    suffix = suffix_of(p)
    if suffix in (".nii", ".nii.gz"):
        field, geometry = _read_nifti_field(p)
    elif suffix == ".mha":
        field, geometry = _read_mha(p)
    else:
        raise InputFileError(f"{p}: unsupported file type {suffix!r}; lossfit reads fields from {FIELD_SUFFIXES}")
    if not np.isfinite(field).all():
        raise InputFileError(f"{p}: its displacement field holds NaN or infinity")
    try:
        grid = Image(torch.zeros(field.shape[:-1]), **geometry)
    except (TypeError, ValueError) as exc:
        raise InputFileError(f"{p}: its geometry is invalid ({first_line(exc)})") from None
    return torch.from_numpy(np.ascontiguousarray(field, dtype=np.float64)), grid


def write_composite_h5(path: str | os.PathLike[str], matrix: Any, displacement: torch.Tensor, grid: Image) -> None:
    """Write an affine matrix and a displacement field as one ITK HDF5 ``CompositeTransform`` (``.h5``).

    Args:
        path: ``.h5`` or ``.hdf5``.
        matrix: ``(d+1, d+1)`` affine (last row ``(0, ..., 0, 1)``), homogeneous, fixed world -> moving world
            (LPS mm), applied after the field.
        displacement: ``(*grid.shape, d)``, as for :func:`write_displacement_field`; stored as float64.
        grid: the image whose grid the field lives on.

    Convention:
        The transform maps ``phi(x) = matrix @ (x + u(x))``: the field first, then the matrix, as
        ``resample(image, grid, matrix, displacement=u)`` samples. ITK's ``CompositeTransform`` applies the
        transform listed LAST first, so the file lists the ``AffineTransform_double_d_d`` (its parameters the
        matrix row by row, then the translation; centre 0) before the ``DisplacementFieldTransform_double_d_d``
        (fixed parameters: size, origin, spacing, direction row by row; parameters: the field with x fastest and
        the components interleaved). ``SimpleITK.ReadTransform(path).TransformPoint(x)`` gives ``phi(x)``.

    Raises:
        TypeError, ValueError: as :func:`write_displacement_field`; ``matrix`` not ``(d+1, d+1)``, not finite or
            projective; raised before anything is written.
        ImportError: h5py is not installed.
    """
    target = _check_path(path, H5_SUFFIXES)
    field = _check_field(displacement, grid).astype(np.float64)
    d = grid.ndim
    m = as_real_tensor(matrix, "matrix").to("cpu", torch.float64).numpy()
    if m.shape != (d + 1, d + 1):
        raise ValueError(f"`matrix` must be ({d + 1}, {d + 1}) for a {d}-D grid; got shape {m.shape}")
    bottom = np.eye(d + 1)[d]
    if np.abs(m[d] - bottom).max() > _BOTTOM_TOL:
        raise ValueError(
            f"`matrix` must be affine (last row {tuple(bottom.tolist())}): ITK's AffineTransform cannot hold a "
            f"projective matrix; got last row {tuple(m[d].tolist())}"
        )
    try:
        import h5py
    except ImportError:
        raise ImportError("write_composite_h5 needs h5py (a dependency of lossfit): pip install h5py") from None
    text = h5py.string_dtype("ascii")
    size = [float(n) for n in grid.size]
    field_fixed = np.concatenate([size, grid.origin, grid.spacing, np.ravel(grid.direction)])
    parts = [
        (f"CompositeTransform_double_{d}_{d}", None, None),
        (f"AffineTransform_double_{d}_{d}", np.concatenate([m[:d, :d].ravel(), m[:d, d]]), np.zeros(d)),
        (f"DisplacementFieldTransform_double_{d}_{d}", field.ravel(), field_fixed),
    ]
    with atomic_path(target) as tmp, h5py.File(tmp, "w") as h5:
        for number, (kind, parameters, fixed) in enumerate(parts):
            group = h5.create_group(f"TransformGroup/{number}")
            group.create_dataset("TransformType", data=[kind.encode("ascii")], dtype=text)
            if parameters is not None and fixed is not None:
                group.create_dataset("TransformParameters", data=parameters)
                group.create_dataset("TransformFixedParameters", data=fixed)


# --- NIfTI ----------------------------------------------------------------------------------------------------
def _nifti_field_bytes(field: np.ndarray, grid: Image, gz: bool) -> bytes:
    import nibabel as nib

    d = grid.ndim
    xyz = field.transpose(*range(d - 1, -1, -1), d)  # (nx, ny[, nz], d)
    if d == 2:
        xyz = xyz[:, :, None]
    affine = np.eye(4)
    lps = grid.affine.numpy()
    affine[:d, :d], affine[:d, 3] = lps[:d, :d], lps[:d, d]
    if d == 2:
        affine[2, 3] = grid.slice_z  # the plane a 2-D grid lies in
    ras = LPS_RAS @ affine
    nifti = nib.Nifti1Image(xyz[:, :, :, None, :], ras)
    nifti.header.set_intent(NIFTI_INTENT_VECTOR)
    nifti.header.set_xyzt_units("mm")
    nifti.set_sform(ras, code=int(grid.header.get("sform_code", 1)))
    nifti.set_qform(ras, code=int(grid.header.get("qform_code", 1)))
    raw = nifti.to_bytes()
    return gzip.compress(raw, compresslevel=6, mtime=0) if gz else raw


def _read_nifti_field(p: Path) -> tuple[np.ndarray, dict[str, Any]]:
    try:
        img, shape = open_nifti(p)
        intent = int(img.header["intent_code"])
        if len(shape) != 5 or shape[3] != 1 or intent not in (NIFTI_INTENT_VECTOR, NIFTI_INTENT_DISPVECT):
            raise InputFileError(
                f"{p}: is not a vector displacement field: it holds an image of shape {shape} with intent code "
                f"{intent}; ITK writes one as 5-D (nx, ny, nz, 1, d) with intent code {NIFTI_INTENT_VECTOR} (vector)"
            )
        components = shape[4]
        if components not in (2, 3) or (components == 2 and shape[2] != 1):
            raise InputFileError(
                f"{p}: holds {components} components per voxel on a {shape[0]}x{shape[1]}x{shape[2]} grid; a "
                "displacement field has 3 on a 3-D grid, or 2 on a 2-D grid (nz = 1)"
            )
        xyz = np.asarray(img.get_fdata(dtype=np.float64, caching="unchanged"))[:, :, :, 0, :]
        affine = LPS_RAS @ np.asarray(img.affine, dtype=np.float64)
    except (InputFileError, MemoryError):
        raise
    except Exception as exc:
        raise unreadable(p, "NIfTI", exc) from None
    warn_if_forms_disagree(p, img, shape[:3])
    if intent == NIFTI_INTENT_DISPVECT:  # ITK 5.4 reads these components as RAS
        xyz = xyz.copy()
        xyz[..., :2] *= -1.0
    d = components
    field = xyz.transpose(2, 1, 0, 3) if d == 3 else xyz[:, :, 0].transpose(1, 0, 2)
    matrix = affine[:d, :d]
    spacing = np.linalg.norm(matrix, axis=0)
    if not (spacing > 0).all():
        raise InputFileError(f"{p}: its affine has a zero column; it places no grid in space")
    geometry: dict[str, Any] = {
        "spacing": spacing,
        "origin": affine[:d, 3],
        "direction": matrix / spacing,
        "header": {"sform_code": int(img.header["sform_code"]), "qform_code": int(img.header["qform_code"])},
    }
    if d == 2:
        geometry["slice_z"] = float(affine[2, 3])
    return field, geometry


# --- MetaImage ------------------------------------------------------------------------------------------------
def _mha_bytes(field: np.ndarray, grid: Image) -> bytes:
    d = grid.ndim

    def numbers(values: Any) -> str:
        return " ".join(repr(float(v)) for v in np.ravel(values))  # repr: the shortest text that reads back exactly

    lines = [
        "ObjectType = Image",
        f"NDims = {d}",
        "BinaryData = True",
        "BinaryDataByteOrderMSB = False",
        "CompressedData = False",
        f"TransformMatrix = {numbers(np.array(grid.direction).T)}",  # the direction's columns, one after another
        f"Offset = {numbers(grid.origin)}",
        f"ElementSpacing = {numbers(grid.spacing)}",
        f"DimSize = {' '.join(str(n) for n in grid.size)}",
        f"ElementNumberOfChannels = {d}",
        f"ElementType = {'MET_DOUBLE' if field.dtype == np.float64 else 'MET_FLOAT'}",
        "ElementDataFile = LOCAL",
    ]
    data = np.ascontiguousarray(field, dtype=field.dtype.newbyteorder("<"))  # x fastest, components interleaved
    return ("\n".join(lines) + "\n").encode("ascii") + data.tobytes()


def _mha_header(p: Path, raw: bytes) -> tuple[dict[str, str], int]:
    """The ``Key = value`` fields of a MetaImage header and the offset of the data after it."""
    fields: dict[str, str] = {}
    position = 0
    while "ElementDataFile" not in fields:
        end = raw.find(b"\n", position, _MAX_HEADER)
        if end < 0:
            raise InputFileError(f"{p}: is not a MetaImage: no 'ElementDataFile = LOCAL' line ends its header")
        line = raw[position:end].decode("latin-1").strip()
        position = end + 1
        if not line:
            continue
        key, equals, value = line.partition("=")
        if not equals:
            raise InputFileError(f"{p}: is not a MetaImage: header line {line[:40]!r} is not 'Key = value'")
        fields[key.strip()] = value.strip()
    return fields, position


def _read_mha(p: Path) -> tuple[np.ndarray, dict[str, Any]]:
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise unreadable(p, "MetaImage", exc) from None
    fields, start = _mha_header(p, raw)

    def numbers(key: str, count: int, default: list[float], *aliases: str) -> np.ndarray:
        text = next((fields[k] for k in (key, *aliases) if k in fields), None)
        try:
            values = np.array(default if text is None else [float(v) for v in text.split()], dtype=np.float64)
        except ValueError:
            raise InputFileError(f"{p}: its {key} is not numbers ({text!r})") from None
        if values.size != count:
            raise InputFileError(f"{p}: its {key} holds {values.size} numbers; expected {count}")
        return values

    if fields.get("ObjectType", "Image") != "Image" or fields.get("NDims") not in ("2", "3"):
        raise InputFileError(
            f"{p}: is not a 2-D or 3-D MetaImage (ObjectType {fields.get('ObjectType')!r}, "
            f"NDims {fields.get('NDims')!r})"
        )
    d = int(fields["NDims"])
    size = numbers("DimSize", d, [])
    if not ((size >= 1) & (size == np.round(size))).all():
        raise InputFileError(f"{p}: its DimSize must hold positive whole numbers; got {fields['DimSize']!r}")
    channels = fields.get("ElementNumberOfChannels", "1")
    if channels != str(d):
        raise InputFileError(
            f"{p}: holds {channels} component(s) per voxel; a {d}-D displacement field has {d} (a vector image)"
        )
    kind = _MET_TYPES.get(fields.get("ElementType", ""))
    if kind is None:
        raise InputFileError(f"{p}: holds {fields.get('ElementType')!r}; a displacement field is {tuple(_MET_TYPES)}")
    if fields["ElementDataFile"] != "LOCAL" or fields.get("BinaryData", "True").lower() != "true":
        raise InputFileError(
            f"{p}: keeps its data elsewhere ({fields['ElementDataFile']!r}); lossfit reads binary LOCAL data, in "
            "the .mha file itself"
        )
    msb = fields.get("BinaryDataByteOrderMSB", fields.get("ElementByteOrderMSB", "False")).lower() == "true"
    dtype = np.dtype(kind).newbyteorder(">" if msb else "<")
    shape = (*(int(n) for n in size[::-1]), d)
    need = math.prod(shape) * dtype.itemsize
    data = raw[start : start + need]
    if fields.get("CompressedData", "False").lower() == "true":
        try:
            data = zlib.decompressobj().decompress(raw[start:], need)
        except zlib.error as exc:
            raise unreadable(p, "compressed MetaImage", exc) from None
    if len(data) < need:
        raise InputFileError(f"{p}: holds {len(data):,} bytes of data; its header claims {need:,}: it is truncated")
    field = np.frombuffer(data, dtype=dtype).reshape(shape).astype(np.float64)
    transform = numbers("TransformMatrix", d * d, np.eye(d).ravel().tolist(), "Rotation", "Orientation")
    geometry = {
        "spacing": numbers("ElementSpacing", d, [1.0] * d),
        "origin": numbers("Offset", d, [0.0] * d, "Position", "Origin"),
        "direction": transform.reshape(d, d).T,  # stored column by column
    }
    return field, geometry
