"""Writing and reading transforms in ITK's text format (``.tfm``/``.txt``), as SimpleITK, ANTs and 3D Slicer do.

An ITK transform maps points of the fixed (output) image's physical space to the moving image's, in LPS
millimetres: the same convention as :attr:`Registration.matrix`, so the matrix is written as it is. The format holds
the linear part row by row, then the translation (``Parameters``), and a centre of rotation (``FixedParameters``),
written here as zero so that ``y = A x + t`` exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from lossfit.errors import InputFileError
from lossfit.io import atomic_write_text

SUFFIXES = (".tfm", ".txt")


def itk_transform_text(matrix: Any) -> str:
    """The ITK text of an affine ``(d+1, d+1)`` matrix (d = 2 or 3)."""
    m = torch.as_tensor(matrix, dtype=torch.float64)
    d = m.shape[0] - 1
    if m.dim() != 2 or m.shape != (d + 1, d + 1) or d not in (2, 3):
        raise ValueError(f"`matrix` must be 3x3 or 4x4; got shape {tuple(m.shape)}")
    bottom = torch.zeros(d + 1, dtype=torch.float64)
    bottom[d] = 1
    if not torch.allclose(m[d], bottom, rtol=0, atol=1e-12):
        raise ValueError(
            "a projective matrix has no ITK transform file equivalent (ITK's affine family cannot hold it); "
            "save it as JSON with to_dict() instead"
        )
    numbers = [*m[:d, :d].reshape(-1).tolist(), *m[:d, d].tolist()]
    return (
        "#Insight Transform File V1.0\n"
        "#Transform 0\n"
        f"Transform: AffineTransform_double_{d}_{d}\n"
        f"Parameters: {' '.join(repr(float(v)) for v in numbers)}\n"
        f"FixedParameters: {' '.join(['0'] * d)}\n"
    )


def write_itk_transform(path: str | os.PathLike[str], matrix: Any) -> None:
    """Write ``matrix`` as an ITK transform file (atomically; the suffix must be .tfm or .txt)."""
    if not str(path).lower().endswith(SUFFIXES):
        raise ValueError(f"`path` must end in {' or '.join(SUFFIXES)}; got {os.fspath(path)!r}")
    atomic_write_text(path, itk_transform_text(matrix))


def read_itk_transform(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an ITK affine-family transform file (one transform) back into a ``(d+1, d+1)`` float64 matrix,
    honouring its centre of rotation: ``y = A (x - c) + t + c``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        lines = [line.strip() for line in text.splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{os.fspath(path)}: cannot read the transform ({exc})") from None
    fields = dict(line.split(":", 1) for line in lines if ":" in line and not line.startswith("#"))
    kind = fields.get("Transform", "").strip()
    try:
        d = int(kind.rsplit("_", 1)[-1])
        values = [float(v) for v in fields["Parameters"].split()]
        centre = [float(v) for v in fields.get("FixedParameters", "").split()] or [0.0] * d
    except (KeyError, ValueError):
        raise InputFileError(f"{os.fspath(path)}: not an ITK transform file with Parameters") from None
    known = ("AffineTransform_", "MatrixOffsetTransformBase_")
    if not kind.startswith(known) or len(values) != d * d + d or len(centre) != d:
        raise InputFileError(f"{os.fspath(path)}: only affine ITK transforms are read; got {kind!r}")
    a = torch.tensor(values[: d * d], dtype=torch.float64).reshape(d, d)
    t = torch.tensor(values[d * d :], dtype=torch.float64)
    c = torch.tensor(centre, dtype=torch.float64)
    m = torch.eye(d + 1, dtype=torch.float64)
    m[:d, :d] = a
    m[:d, d] = t + c - a @ c
    return m
