"""A registration's matrix in world terms: rotation angles in degrees, translation in mm, scales.

A fixed-to-moving matrix ``y = A x + t`` (LPS, mm) is described about a centre ``c`` (the fixed image's centre),
as ITK describes its centred transforms: ``y = A (x - c) + c + translation``, so ``translation = A c + t - c`` is
where the centre moves to. The linear part is split by the polar decomposition ``A = R S``: ``R`` the rotation
nearest to ``A``, ``S`` symmetric positive definite (the identity for a rigid transform, ``s I`` for a similarity).

Rotation angles (degrees) are rotations about the world axes, applied in the order x, then y, then z
(``R = Rz(az) Ry(ay) Rx(ax)``); in 2-D one angle, counter-clockwise from x towards y. The angle and axis of the
rotation are given as well (3-D), which do not depend on an order.

Every quantity is a differentiable function of the matrix (the polar factor by Newton's iteration, which has no
trouble with the repeated singular values of a rigid transform), so standard errors propagate from the
parameters' covariance by the Jacobian.
"""

from __future__ import annotations

import math
from typing import Any

import torch

_POLAR_STEPS = 30  # Newton's polar iteration converges quadratically; 30 steps is far more than a transform needs


def polar_rotation(linear: torch.Tensor) -> torch.Tensor:
    """The rotation ``R`` of the polar decomposition ``A = R S`` of a ``(d, d)`` matrix with positive determinant."""
    x = linear
    for _ in range(_POLAR_STEPS):
        nxt = 0.5 * (x + torch.linalg.inv(x).transpose(-1, -2))
        if bool(((nxt - x).abs().max() <= 1e-15 * x.abs().max()).detach()):
            return nxt
        x = nxt
    return x


def euler_angles(rotation: torch.Tensor) -> torch.Tensor:
    """Angles (radians) ``(ax, ay, az)`` with ``R = Rz(az) Ry(ay) Rx(ax)`` for a 3x3 rotation (2-D: one angle)."""
    r = rotation
    if r.shape[-1] == 2:
        return torch.atan2(r[1, 0], r[0, 0]).reshape(1)
    ay = torch.asin((-r[2, 0]).clamp(-1.0, 1.0))
    ax = torch.atan2(r[2, 1], r[2, 2])
    az = torch.atan2(r[1, 0], r[0, 0])
    return torch.stack([ax, ay, az])


def describe(matrix: torch.Tensor, centre: torch.Tensor) -> dict[str, torch.Tensor]:
    """The world quantities of an affine ``(d+1, d+1)`` matrix about ``centre`` (tensors, differentiable):
    ``translation_mm``, ``rotation_deg``, ``scales`` (the eigenvalues of ``S``, smallest first), ``determinant``."""
    d = matrix.shape[-1] - 1
    a, t = matrix[:d, :d], matrix[:d, d]
    r = polar_rotation(a)
    stretch = r.transpose(-1, -2) @ a
    stretch = 0.5 * (stretch + stretch.transpose(-1, -2))
    return {
        "translation_mm": a @ centre + t - centre,
        "rotation_deg": torch.rad2deg(euler_angles(r)),
        "scales": torch.linalg.eigvalsh(stretch),
        "determinant": torch.linalg.det(a).reshape(1),
    }


def world_parameters(matrix: Any, centre: Any, transform: str, covariance: Any = None, jacobian: Any = None) -> dict:
    """The matrix in world terms, as JSON-ready numbers (see the module docstring); with the standard error of
    each where ``covariance`` (of the model's parameters) and ``jacobian`` (``d world / d parameters``, rows in the
    order of :func:`flatten`) are given.

    A projective matrix (2-D) gives only its perspective row besides the affine quantities of its upper-left part.
    A reflection (negative determinant) has no rotation: its angles are None.
    """
    m = torch.as_tensor(matrix, dtype=torch.float64)
    c = torch.as_tensor(centre, dtype=torch.float64)
    d = m.shape[-1] - 1
    out: dict[str, Any] = {"centre_mm": c.tolist(), "convention": _CONVENTION}
    affine = m / m[d, d]
    if transform == "projective":
        out["perspective"] = affine[d, :d].tolist()
        affine = affine.clone()
        affine[d, :d] = 0
    if float(torch.linalg.det(affine[:d, :d])) <= 0:
        out.update(translation_mm=(affine[:d, :d] @ c + affine[:d, d] - c).tolist(), rotation_deg=None)
        return out
    values = describe(affine, c)
    out["translation_mm"] = values["translation_mm"].tolist()
    out["rotation_deg"] = values["rotation_deg"].tolist()
    if d == 3:
        angle, axis = _angle_axis(polar_rotation(affine[:d, :d]))
        out["rotation_angle_deg"], out["rotation_axis"] = angle, axis
    if transform in ("similarity", "affine", "projective"):
        out["scales"] = values["scales"].tolist()
        out["scale"] = float(values["determinant"].abs()) ** (1 / d)
    if covariance is not None and jacobian is not None:
        cov = torch.as_tensor(jacobian) @ torch.as_tensor(covariance) @ torch.as_tensor(jacobian).T
        errors = cov.diagonal().clamp_min(0).sqrt()
        pieces = iter(errors.split([d, 1 if d == 2 else 3]))
        out["translation_mm_stderr"] = _finite(next(pieces))
        out["rotation_deg_stderr"] = _finite(next(pieces))
    return out


def flatten(matrix: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Translation (mm) and rotation angles (degrees) as one vector, for the Jacobian of :func:`world_parameters`."""
    values = describe(matrix, centre)
    return torch.cat([values["translation_mm"], values["rotation_deg"]])


def _angle_axis(r: torch.Tensor) -> tuple[float, list[float]]:
    cos = max(-1.0, min(1.0, (float(torch.trace(r)) - 1) / 2))
    angle = math.degrees(math.acos(cos))
    w = torch.stack([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    norm = float(torch.linalg.norm(w))
    if norm < 1e-12:  # no rotation, or a half turn: the axis from the symmetric part
        if angle < 90:
            return angle, [0.0, 0.0, 1.0]
        sym = (r + torch.eye(3, dtype=r.dtype)) / 2
        column = sym[:, int(sym.diagonal().argmax())]
        w, norm = column, float(torch.linalg.norm(column))
    return angle, (w / norm).tolist()


def _finite(values: torch.Tensor) -> list[float | None]:
    return [float(v) if math.isfinite(float(v)) else None for v in values]


_CONVENTION = (
    "y = A (x - centre_mm) + centre_mm + translation_mm maps fixed world points x to moving ones (LPS, mm); "
    "A = R S (polar); rotation_deg: angles about the world x, y, z axes applied in that order, R = Rz Ry Rx "
    "(2-D: one angle from x towards y); scales: the eigenvalues of S"
)

__all__ = ["describe", "euler_angles", "flatten", "polar_rotation", "world_parameters"]
