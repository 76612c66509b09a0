"""Reading, writing and inverting the linear transform files of ITK, SimpleITK, ANTs and 3D Slicer as lossfit matrices.

Convention: a transform is a ``(d+1, d+1)`` float64 homogeneous matrix (d = 2 or 3) acting on column points. It maps
points of the FIXED (reference, output) image's world space to the MOVING image's, in LPS millimetres. That is ITK's
own convention for the transforms it stores (the ones resampling needs), so a file's parameters become the matrix
directly, with no LPS/RAS flip. Every ITK type with a centre ``c`` (its FixedParameters) maps ``y = A (x - c) + t + c``.

Formats:

- ITK text (``.tfm``, ``.txt``; "#Insight Transform File V1.0"), as SimpleITK, ANTs and 3D Slicer write it, ``double``
  or ``float`` variants. A file whose Transform 0 is a ``CompositeTransform`` composes the transforms listed after it
  the way ITK's CompositeTransform applies them: the LAST one listed acts on the point first, so the matrix is
  ``T1 @ T2 @ ... @ Tn``. A file that lists several transforms without that header defines no composition in ITK
  (its reader returns a list); SimpleITK's ``ReadTransform`` and ANTs use only the first, and so does lossfit, with a
  :class:`~lossfit.errors.GeometryWarning` saying how many were ignored.
- ITK/ANTs binary ``.mat`` (MATLAB level 4, as ITK's MatlabTransformIO writes it: a column vector named after the
  transform type, then one named ``fixed``), little or big endian, double or single storage. ITK cannot keep a
  composite in this format, so such a file is refused.
- lossfit's ``.json``: an object with a ``"matrix"`` (nested lists), as ``Registration.to_dict()`` and
  :func:`write_transform` write it; the only format that may hold a projective matrix.

The parameterisations (:data:`ITK_TYPES`) were checked point by point against SimpleITK 2.5 (ITK 5.4).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lossfit._validation import as_real_tensor
from lossfit.errors import GeometryWarning, InputFileError
from lossfit.io import atomic_path, atomic_write_text
from lossfit.registration.itk_types import ITK_TYPES, ItkType

SUFFIXES = (".tfm", ".txt")  # ITK text
READ_SUFFIXES = (".tfm", ".txt", ".mat", ".json")
WRITE_SUFFIXES = READ_SUFFIXES
MAX_CONDITION = 1.0 / math.sqrt(float(np.finfo(np.float64).eps))  # ~6.7e7: beyond it an inverse keeps < 8 digits
_CONVENTION = "matrix maps homogeneous points of the fixed image's world space (LPS, mm) to the moving image's"

Array = np.ndarray
_NONLINEAR = ("BSpline", "Displacement", "Velocity", "Kernel", "Spline", "Field", "Gaussian")
_NAME = re.compile(r"^([A-Za-z0-9]+)_(double|float)_(\d+)_(\d+)$")


# ---------------------------------------------------------------------------------------------------------------
# One transform as a file stores it, and the matrix it means


@dataclass(frozen=True)
class _Record:
    name: str
    parameters: tuple[float, ...]
    fixed: tuple[float, ...]
    where: str  # "line 3" or "variable 1", for messages


def _fail(path: str | os.PathLike[str], what: str) -> InputFileError:
    return InputFileError(f"{os.fspath(path)}: {what}")


def _type_of(path: str | os.PathLike[str], name: str, where: str) -> tuple[str, int]:
    """The base type and dimension of an ITK type name such as ``AffineTransform_double_3_3``."""
    match = _NAME.match(name)
    if match is None:
        raise _fail(path, f"{where}: {name!r} is not an ITK transform type (like 'AffineTransform_double_3_3')")
    base, d_in, d_out = match.group(1), int(match.group(3)), int(match.group(4))
    if any(word in base for word in _NONLINEAR):
        raise _fail(path, f"{where}: {base} is a non-linear transform; non-linear transforms are not supported yet")
    if base == "CompositeTransform":
        return base, d_in
    if base not in ITK_TYPES:
        raise _fail(path, f"{where}: unsupported ITK transform type {base}; lossfit reads {', '.join(ITK_TYPES)}")
    if d_in != d_out or d_in not in ITK_TYPES[base].dimensions:
        dims = " or ".join(f"{k}-D" for k in ITK_TYPES[base].dimensions)
        raise _fail(path, f"{where}: {name} maps {d_in}-D to {d_out}-D points; {base} must be {dims}")
    return base, d_in


def _record_matrix(path: str | os.PathLike[str], record: _Record) -> Array:
    base, d = _type_of(path, record.name, record.where)
    kind = ITK_TYPES[base]
    p, f = np.array(record.parameters, dtype=np.float64), np.array(record.fixed, dtype=np.float64)
    if len(p) != kind.parameters(d):
        raise _fail(
            path, f"{record.where}: {record.name} needs {kind.parameters(d)} Parameters ({kind.layout}); got {len(p)}"
        )
    if kind.fixed is not None and len(f) not in kind.fixed(d):
        allowed = " or ".join(str(n) for n in kind.fixed(d))
        raise _fail(path, f"{record.where}: {record.name} needs {allowed} FixedParameters (the centre); got {len(f)}")
    try:
        a, t, c = kind.build(p, f, d)
    except ValueError as exc:
        raise _fail(path, f"{record.where}: {record.name}: {exc}") from None
    m = np.eye(d + 1)
    m[:d, :d] = a
    m[:d, d] = t + c - a @ c
    return m


def _compose(path: str | os.PathLike[str], records: list[_Record], binary: bool) -> Array:
    """One matrix for a file's transforms: a composite composed as ITK applies it, else the first (see module)."""
    if not records:
        raise _fail(path, "holds no transform")
    bases = [_type_of(path, r.name, r.where) for r in records]
    for (base, _), record in zip(bases[1:], records[1:], strict=True):
        if base == "CompositeTransform":
            raise _fail(path, f"{record.where}: a CompositeTransform can only be the first transform in a file")
    if bases[0][0] == "CompositeTransform":
        if binary:
            raise _fail(
                path,
                "holds a CompositeTransform, which ITK's .mat format cannot keep (only its last component's "
                "parameters are written); write the composite as .tfm instead",
            )
        if records[0].parameters:
            raise _fail(path, f"{records[0].where}: a CompositeTransform line must not have Parameters")
        d = bases[0][1]
        m = np.eye(d + 1)
        for (_, dc), record in zip(bases[1:], records[1:], strict=True):
            if dc != d:
                raise _fail(path, f"{record.where}: a {dc}-D component in a {d}-D CompositeTransform")
            m = m @ _record_matrix(path, record)  # the last listed acts on the point first
        return m
    matrices = [_record_matrix(path, r) for r in records]
    if len(matrices) > 1:
        warnings.warn(
            f"{os.fspath(path)}: lists {len(matrices)} transforms without a CompositeTransform header; using the "
            f"first ({records[0].name}) as SimpleITK and ANTs do and ignoring the other {len(matrices) - 1}",
            GeometryWarning,
            stacklevel=3,
        )
    return matrices[0]


# ---------------------------------------------------------------------------------------------------------------
# Parsers


def _numbers(path: str | os.PathLike[str], where: str, value: str) -> tuple[float, ...]:
    out = []
    for token in value.split():
        try:
            number = float(token)
        except ValueError:
            raise _fail(path, f"{where}: {token[:40]!r} is not a number") from None
        if not math.isfinite(number):
            raise _fail(path, f"{where}: {token!r} is not a finite number")
        out.append(number)
    return tuple(out)


def _text_records(path: str | os.PathLike[str], text: str) -> list[_Record]:
    """The transforms of an ITK text file, read as ITK's TxtTransformIO reads them (``Name: value`` lines)."""
    found: list[dict[str, Any]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, value = line.partition(":")
        name, value, where = name.strip(), value.strip(), f"line {number}"
        if not colon:
            raise _fail(path, f"{where}: expected 'Name: value' as in ITK transform files; got {line[:60]!r}")
        if name == "Transform":
            found.append({"name": value, "where": where})
        elif name in ("Parameters", "FixedParameters"):
            if not found:
                raise _fail(path, f"{where}: {name} before any 'Transform:' line")
            if name in found[-1]:
                raise _fail(path, f"{where}: a second {name} line for the transform of {found[-1]['where']}")
            found[-1][name] = _numbers(path, where, value)
        elif name == "ComponentTransformFile":
            raise _fail(path, f"{where}: components kept in other files (ComponentTransformFile) are not supported")
        # ITK ignores any other tag; so does lossfit.
    if not found:
        raise _fail(path, "holds no 'Transform:' line; not an ITK transform file")
    records = []
    for item in found:
        composite = item["name"].startswith("CompositeTransform")
        for key in ("Parameters", "FixedParameters"):
            if key not in item and not composite:
                raise _fail(path, f"{item['where']}: the transform {item['name']!r} has no {key} line")
        records.append(
            _Record(item["name"], item.get("Parameters", ()), item.get("FixedParameters", ()), item["where"])
        )
    return records


_MAT_PRECISION = {0: ("d", 8), 1: ("f", 4)}  # the P digit of a level-4 type code: double, single
_MAT_OTHER = {2: "int32", 3: "int16", 4: "uint16", 5: "uint8"}


def _mat_variables(path: str | os.PathLike[str], data: bytes) -> list[tuple[str, tuple[float, ...], int]]:
    """The ``(name, values, columns)`` of each variable of a MATLAB level-4 file (column-major, real)."""
    if data.startswith(b"MATLAB"):
        raise _fail(path, "a MATLAB 5 MAT-file; ITK and ANTs write level-4 .mat files")
    if data.startswith(b"\x89HDF"):
        raise _fail(path, "an HDF5 (MATLAB 7.3) file; ITK and ANTs write level-4 .mat files")
    out: list[tuple[str, tuple[float, ...], int]] = []
    pos = 0
    while pos < len(data):
        where = f"variable {len(out) + 1} (byte {pos})"
        if len(data) - pos < 20:
            raise _fail(path, f"{where}: a truncated header; not an ITK/ANTs .mat transform")
        for order, machine in (("<", 0), (">", 1)):
            code, rows, cols, imaginary, name_length = struct.unpack_from(order + "5i", data, pos)
            if 0 <= code < 5000 and code // 1000 == machine and rows >= 0 and cols >= 0 and 0 < name_length < 4096:
                break
        else:
            raise _fail(path, f"{where}: not a MATLAB level-4 header; not an ITK/ANTs .mat transform")
        precision, kind = (code // 10) % 10, code % 10
        if (code // 100) % 10 != 0 or kind != 0 or imaginary not in (0, 1):
            raise _fail(path, f"{where}: type code {code} is not a full real matrix")
        if imaginary:
            raise _fail(path, f"{where}: holds complex numbers; ITK transforms are real")
        if precision not in _MAT_PRECISION:
            stored = _MAT_OTHER.get(precision, f"precision digit {precision}")
            raise _fail(path, f"{where}: stores {stored}; ITK transforms are stored as double or single")
        letter, size = _MAT_PRECISION[precision]
        start, count = pos + 20 + name_length, rows * cols
        end = start + count * size
        if end > len(data):
            raise _fail(path, f"{where}: truncated (needs {end - pos} bytes, {len(data) - pos} left)")
        raw_name = data[pos + 20 : start].split(b"\0", 1)[0]
        try:
            name = raw_name.decode("ascii")
        except UnicodeDecodeError:
            raise _fail(path, f"{where}: its name is not ASCII text") from None
        out.append((name, struct.unpack_from(f"{order}{count}{letter}", data, start), cols))
        pos = end
    return out


def _mat_records(path: str | os.PathLike[str], data: bytes) -> list[_Record]:
    """The transforms of an ITK/ANTs .mat file: pairs of a parameter vector named by type and ``fixed``."""
    variables = _mat_variables(path, data)
    if not variables:
        raise _fail(path, "is empty; not an ITK/ANTs .mat transform")
    records = []
    for i in range(0, len(variables), 2):
        name, values, cols = variables[i]
        if i + 1 >= len(variables) or variables[i + 1][0] != "fixed":
            got = "nothing" if i + 1 >= len(variables) else repr(variables[i + 1][0])
            raise _fail(path, f"variable {i + 1} ({name!r}) must be followed by one named 'fixed'; got {got}")
        fixed, fixed_cols = variables[i + 1][1], variables[i + 1][2]
        if (cols != 1 and values) or (fixed_cols != 1 and fixed):
            raise _fail(path, f"variable {i + 1} ({name!r}): ITK stores transform parameters as column vectors")
        for number in (*values, *fixed):
            if not math.isfinite(number):
                raise _fail(path, f"variable {i + 1} ({name!r}) holds NaN or infinity")
        records.append(_Record(name, values, fixed, f"variable {i + 1} ({name})"))
    return records


def _json_matrix(path: str | os.PathLike[str], text: str) -> Array:
    try:
        content = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(path, f"not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(content, dict) or "matrix" not in content:
        raise _fail(path, "a lossfit transform is a JSON object with a 'matrix' key; this one has none")
    try:
        m = np.array(content["matrix"], dtype=np.float64)
    except (TypeError, ValueError):
        raise _fail(path, "'matrix' must be a square nested list of numbers") from None
    if m.ndim == 3:
        raise _fail(path, f"'matrix' holds {m.shape[0]} matrices (a batch); save one pair's matrix to read it")
    if m.ndim != 2 or m.shape not in ((3, 3), (4, 4)):
        raise _fail(path, f"'matrix' must be 3x3 (2-D) or 4x4 (3-D); got shape {m.shape}")
    if not np.isfinite(m).all():
        raise _fail(path, "'matrix' holds NaN or infinity")
    d = m.shape[0] - 1
    if "dimension" in content and content["dimension"] != d:
        raise _fail(path, f"'dimension' is {content['dimension']!r} but 'matrix' is {d + 1}x{d + 1} ({d}-D)")
    return m


# ---------------------------------------------------------------------------------------------------------------
# Public API


def _suffix(path: str | os.PathLike[str]) -> str:
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def read_transform(path: str | os.PathLike[str]) -> torch.Tensor:
    """The one linear transform a file holds, as a matrix (a composite is composed).

    Convention: the matrix maps homogeneous column points of the fixed image's world space (LPS, mm) to the moving
    image's, as ITK's transforms do; ITK types with a centre ``c`` become ``y = A (x - c) + t + c``.

    Args:
        path: an ITK text file (``.tfm``, ``.txt``), an ITK/ANTs binary ``.mat`` or a lossfit ``.json``. The ITK
            types read are those of :data:`ITK_TYPES`, ``double`` or ``float``. See the module docstring for
            composites and for files that list several transforms without a composite header.

    Returns:
        ``(d+1, d+1)`` float64 tensor, d = 2 or 3 (projective only from ``.json``).

    Raises:
        InputFileError: naming the path, in one line: a missing or unreadable file, an unsupported suffix, a
            non-linear or unknown transform type (B-splines, displacement fields, HDF5 files: not supported yet),
            wrong parameter counts, non-UTF-8 text, mixed dimensions in a composite, a malformed file.

    Warns:
        GeometryWarning: an ITK file lists several transforms without a CompositeTransform header (the first is
            used, as SimpleITK and ANTs use it).

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> with open(os.path.join(folder, "t.tfm"), "w") as handle:
        ...     _ = handle.write("#Insight Transform File V1.0\\n#Transform 0\\n"
        ...                      "Transform: Euler2DTransform_double_2_2\\n"
        ...                      "Parameters: 1.5707963267948966 10 0\\nFixedParameters: 1 1\\n")
        >>> read_transform(os.path.join(folder, "t.tfm")).round(decimals=12)
        tensor([[ 0., -1., 12.],
                [ 1.,  0.,  0.],
                [ 0.,  0.,  1.]], dtype=torch.float64)
        >>> import shutil; shutil.rmtree(folder)
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike; got {type(path).__name__}")
    p = Path(path)
    suffix = _suffix(p)
    if suffix in (".h5", ".hdf5"):
        raise _fail(path, "HDF5 transform files are not supported yet; save the transform as .tfm or .mat")
    if suffix in (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"):
        raise _fail(path, "an image: displacement fields (non-linear transforms) are not supported yet")
    if suffix not in READ_SUFFIXES:
        wanted = ", ".join(READ_SUFFIXES)
        raise _fail(path, f"unsupported transform file type {suffix or 'no suffix'!r}; lossfit reads {wanted}")
    if not p.exists():
        raise _fail(path, "no such file")
    if not p.is_file():
        raise _fail(path, "not a file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    if suffix == ".mat":
        m = _compose(path, _mat_records(path, data), binary=True)
    else:
        try:
            text = data.decode("utf-8-sig")  # a byte-order mark, if an editor added one, is not text
        except UnicodeDecodeError as exc:
            raise _fail(path, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
        m = _json_matrix(path, text) if suffix == ".json" else _compose(path, _text_records(path, text), binary=False)
    return torch.from_numpy(m)


def read_transforms(paths: Sequence[str | os.PathLike[str]]) -> torch.Tensor:
    """A chain of transform files composed as ``antsApplyTransforms -t paths[0] -t paths[1] ...`` applies them.

    Convention: ANTs' transform list acts on a fixed-space point FIRST with ``paths[0]``, then ``paths[1]``, and so
    on (checked against antspyx: ``apply_transforms(fixed, moving, [A, B])`` samples the moving image at
    ``B(A(x))``), so the matrix is ``M[n-1] @ ... @ M[1] @ M[0]``. That is the reverse of the order inside an ITK
    composite file or ``SimpleITK.CompositeTransform([A, B])`` (``A(B(x))``): ANTs builds its composite from the
    command line backwards. Each file is read with :func:`read_transform`.

    Args:
        paths: one or more transform files (a list or tuple, not a single string).

    Returns:
        ``(d+1, d+1)`` float64 tensor.

    Raises:
        TypeError: ``paths`` is a single string or path.
        ValueError: ``paths`` is empty.
        InputFileError: a file cannot be read (see :func:`read_transform`), or the files mix 2-D and 3-D.
    """
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise TypeError(f"`paths` must be a list of transform files; got a single {type(paths).__name__}")
    if len(paths) == 0:
        raise ValueError("`paths` must name at least one transform file; got none")
    total = read_transform(paths[0])
    for path in paths[1:]:
        m = read_transform(path)
        if m.shape != total.shape:
            raise _fail(path, f"a {m.shape[0] - 1}-D transform after {total.shape[0] - 1}-D ones; all must match")
        total = m @ total  # the later file acts after the earlier ones
    return total


def _checked_matrix(matrix: Any) -> torch.Tensor:
    m = as_real_tensor(matrix, "matrix").to(torch.float64)
    if m.dim() != 2 or tuple(m.shape) not in ((3, 3), (4, 4)):
        raise ValueError(f"`matrix` must be 3x3 (2-D) or 4x4 (3-D); got shape {tuple(m.shape)}")
    return m.cpu()


def _is_affine(m: torch.Tensor) -> bool:
    d = m.shape[0] - 1
    bottom = torch.zeros(d + 1, dtype=torch.float64)
    bottom[d] = 1
    return torch.allclose(m[d], bottom, rtol=0, atol=1e-12)


_PROJECTIVE = (
    "a projective matrix has no ITK transform file equivalent (ITK's affine family cannot hold it); "
    "save it as .json instead"
)


def itk_transform_text(matrix: Any) -> str:
    """The ITK text (``AffineTransform_double_D_D``, centre 0) of an affine ``(d+1, d+1)`` matrix (d = 2 or 3).

    Raises:
        TypeError: ``matrix`` does not hold real numbers.
        ValueError: its shape is not 3x3 or 4x4, it is not finite, or it is projective.

    Example:
        >>> print(itk_transform_text(torch.eye(3, dtype=torch.float64)), end="")
        #Insight Transform File V1.0
        #Transform 0
        Transform: AffineTransform_double_2_2
        Parameters: 1.0 0.0 0.0 1.0 0.0 0.0
        FixedParameters: 0 0
    """
    m = _checked_matrix(matrix)
    if not _is_affine(m):
        raise ValueError(f"`matrix` is projective: {_PROJECTIVE}")
    d = m.shape[0] - 1
    numbers = [*m[:d, :d].reshape(-1).tolist(), *m[:d, d].tolist()]
    return (
        "#Insight Transform File V1.0\n"
        "#Transform 0\n"
        f"Transform: AffineTransform_double_{d}_{d}\n"
        f"Parameters: {' '.join(repr(float(v)) for v in numbers)}\n"
        f"FixedParameters: {' '.join(['0'] * d)}\n"
    )


def _mat_variable(name: str, values: list[float]) -> bytes:
    encoded = name.encode("ascii") + b"\0"
    header = struct.pack("<5i", 0, len(values), 1, 0, len(encoded))  # little endian, double, full, real
    return header + encoded + struct.pack(f"<{len(values)}d", *values)


def _mat_bytes(m: torch.Tensor) -> bytes:
    d = m.shape[0] - 1
    numbers = [*m[:d, :d].reshape(-1).tolist(), *m[:d, d].tolist()]
    return _mat_variable(f"AffineTransform_double_{d}_{d}", numbers) + _mat_variable("fixed", [0.0] * d)


def write_transform(path: str | os.PathLike[str], matrix: Any) -> None:
    """Write a transform matrix atomically, in the format its suffix names.

    ``.tfm``/``.txt``: ITK text, one ``AffineTransform_double_D_D`` with centre 0 (so ``y = A x + t`` exactly).
    ``.mat``: the same transform in ITK/ANTs binary form (MATLAB level 4, little endian, double), as
    ``SimpleITK.WriteTransform`` writes it; both SimpleITK and antspyx read it. ``.json``: ``{"matrix": ...,
    "dimension": d, "projective": ..., "convention": ...}``, the only format a projective matrix can go to.

    Args:
        path: the file to write; its folder must exist.
        matrix: ``(d+1, d+1)`` real, finite (d = 2 or 3), fixed world to moving world (LPS, mm).

    Raises:
        TypeError: ``matrix`` does not hold real numbers.
        ValueError: ``path`` has another suffix; ``matrix`` has the wrong shape, is not finite, or is projective
            and ``path`` is not ``.json``.
        InputFileError: the folder of ``path`` does not exist.
    """
    suffix = _suffix(path)
    if suffix not in WRITE_SUFFIXES:
        raise ValueError(f"`path` must end in {', '.join(WRITE_SUFFIXES)}; got {os.fspath(path)!r}")
    m = _checked_matrix(matrix)
    projective = not _is_affine(m)
    if projective and suffix != ".json":
        raise ValueError(f"`matrix` is projective and `path` is {suffix}: {_PROJECTIVE}")
    if suffix in SUFFIXES:
        atomic_write_text(path, itk_transform_text(m))
    elif suffix == ".json":
        content = {"matrix": m.tolist(), "dimension": m.shape[0] - 1, "projective": projective}
        atomic_write_text(path, json.dumps({**content, "convention": _CONVENTION}, indent=2) + "\n")
    else:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            handle.write(_mat_bytes(m))


def write_itk_transform(path: str | os.PathLike[str], matrix: Any) -> None:
    """Write ``matrix`` as an ITK transform file: :func:`write_transform` for ``.tfm``/``.txt`` and ``.mat``."""
    if _suffix(path) not in (*SUFFIXES, ".mat"):
        raise ValueError(f"`path` must end in {', '.join((*SUFFIXES, '.mat'))}; got {os.fspath(path)!r}")
    write_transform(path, matrix)


read_itk_transform = read_transform


def invert_transform(matrix: Any) -> torch.Tensor:
    """The inverse transform: the moving world back to the fixed world.

    An affine matrix is inverted block-wise (``A^-1``, ``-A^-1 t``), so its last row stays exactly ``(0, ..., 0,
    1)``; a projective one as a whole, scaled so that its last entry is 1 where that entry is not 0.

    The matrix is refused when its condition number (2-norm; of the linear part ``A`` for an affine matrix, which
    does not depend on the translation's units, of the whole matrix for a projective one) exceeds
    :data:`MAX_CONDITION` = 1/sqrt(float64 epsilon) ~ 6.7e7: the relative error of an inverse grows like the
    condition number times epsilon, so beyond it less than half of float64's 16 digits would be right. A
    registration's linear part is far from it (a 100:1 anisotropic scaling has condition number 100).

    Args:
        matrix: ``(d+1, d+1)`` real, finite (d = 2 or 3); its dtype and device are kept in the result.

    Returns:
        ``(d+1, d+1)`` tensor, float64 unless ``matrix`` had another floating dtype.

    Raises:
        TypeError: ``matrix`` does not hold real numbers.
        ValueError: wrong shape, not finite, or singular or ill-conditioned.

    Example:
        >>> m = torch.tensor([[2.0, 0.0, 1.0], [0.0, 4.0, 2.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
        >>> invert_transform(m)
        tensor([[ 0.5000,  0.0000, -0.5000],
                [ 0.0000,  0.2500, -0.5000],
                [ 0.0000,  0.0000,  1.0000]], dtype=torch.float64)
    """
    given = as_real_tensor(matrix, "matrix")
    m = _checked_matrix(given)
    d = m.shape[0] - 1
    affine = _is_affine(m)
    part = m[:d, :d] if affine else m
    condition = float(torch.linalg.cond(part))
    if not math.isfinite(condition) or condition > MAX_CONDITION:
        raise ValueError(
            f"`matrix` is singular or ill-conditioned: condition number {condition:.3g} of its "
            f"{'linear part' if affine else 'whole (projective) matrix'} exceeds {MAX_CONDITION:.3g}, beyond which "
            "an inverse keeps less than half of float64's digits"
        )
    if affine:
        inverse = torch.eye(d + 1, dtype=torch.float64)
        inverse[:d, :d] = torch.linalg.inv(m[:d, :d])
        inverse[:d, d] = -inverse[:d, :d] @ m[:d, d]
    else:
        inverse = torch.linalg.inv(m)
        corner = inverse[d, d]
        if abs(float(corner)) > float(np.finfo(np.float64).eps) * float(inverse.abs().max()):
            inverse = inverse / corner
    dtype = given.dtype if given.is_floating_point() else torch.float64
    return inverse.to(dtype=dtype, device=given.device)


__all__ = [
    "ITK_TYPES",
    "MAX_CONDITION",
    "READ_SUFFIXES",
    "SUFFIXES",
    "WRITE_SUFFIXES",
    "ItkType",
    "invert_transform",
    "itk_transform_text",
    "read_itk_transform",
    "read_transform",
    "read_transforms",
    "write_itk_transform",
    "write_transform",
]
