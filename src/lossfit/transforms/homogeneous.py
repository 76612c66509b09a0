"""Parametrised geometric transforms as homogeneous matrices, in any dimension the maths allows.

Convention: a transform of d-dimensional points is a ``(d + 1, d + 1)`` homogeneous matrix acting on column points
``[p; 1]``; points are stored as rows, shape ``(..., N, d)``. ``compose(a, b)`` applies ``b`` first. Every model maps
an unconstrained parameter vector to a matrix (``matrix``), and back (``params``), so that every parameter value is a
valid transform of its kind: rotations use the exponential map of a skew-symmetric matrix (axis-angle in 3-D),
scales their logarithm, and a projective matrix is normalised so its last entry is 1.

All functions take a leading batch of parameter vectors or matrices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MODELS = ("translation", "linear", "affine", "rigid", "similarity", "projective")


def check_model(model: str) -> None:
    if model not in MODELS:
        raise ValueError(f"`model` must be one of {', '.join(repr(m) for m in MODELS)}; got {model!r}")


def num_params(model: str, d: int) -> int:
    """The number of parameters of ``model`` in ``d`` dimensions."""
    check_model(model)
    rotations = d * (d - 1) // 2
    return {
        "translation": d,
        "linear": d * d,
        "affine": d * d + d,
        "rigid": rotations + d,
        "similarity": rotations + d + 1,
        "projective": (d + 1) ** 2 - 1,
    }[model]


def min_points(model: str, d: int) -> int:
    """The fewest point pairs that determine ``model`` in ``d`` dimensions (each pair gives d equations)."""
    if model == "rigid" or model == "similarity":
        return d if d > 2 else 2
    return math.ceil(num_params(model, d) / d)


def _skew(w: torch.Tensor, d: int) -> torch.Tensor:
    """A skew-symmetric ``(d, d)`` matrix from ``d (d - 1) / 2`` values (in 3-D, the cross-product matrix of w)."""
    if d == 2:
        z = torch.zeros_like(w[..., 0])
        return torch.stack([torch.stack([z, -w[..., 0]], -1), torch.stack([w[..., 0], z], -1)], -2)
    if d == 3:
        x, y, z = w[..., 0], w[..., 1], w[..., 2]
        o = torch.zeros_like(x)
        return torch.stack([torch.stack([o, -z, y], -1), torch.stack([z, o, -x], -1), torch.stack([-y, x, o], -1)], -2)
    rows, cols = torch.triu_indices(d, d, 1, device=w.device)
    upper = torch.zeros(*w.shape[:-1], d, d, dtype=w.dtype, device=w.device)
    upper[..., rows, cols] = w
    return upper - upper.transpose(-1, -2)


def _unskew(s: torch.Tensor, d: int) -> torch.Tensor:
    if d == 2:
        return s[..., 1, 0].unsqueeze(-1)
    if d == 3:
        return torch.stack([s[..., 2, 1], s[..., 0, 2], s[..., 1, 0]], -1)
    rows, cols = torch.triu_indices(d, d, 1, device=s.device)
    return s[..., rows, cols]


def rotation(w: torch.Tensor, d: int) -> torch.Tensor:
    """The rotation ``exp(skew(w))``: in 2-D ``w`` is the angle (radians, counter-clockwise), in 3-D axis * angle.

    2-D and 3-D use closed forms (cosine and sine; Rodrigues' formula, with Taylor series near angle 0 so that the
    derivatives stay exact there); higher dimensions the matrix exponential.
    """
    if d == 2:
        c, s = torch.cos(w[..., 0]), torch.sin(w[..., 0])
        return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    if d == 3:
        theta2 = (w * w).sum(-1)
        small = theta2 < 1e-8
        safe2 = torch.where(small, torch.ones_like(theta2), theta2)
        theta = safe2.sqrt()
        a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)  # sin(t) / t
        b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / safe2)  # (1 - cos(t)) / t^2
        k = _skew(w, 3)
        eye = torch.eye(3, dtype=w.dtype, device=w.device)
        return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)
    return torch.linalg.matrix_exp(_skew(w, d))


def rotation_log(r: torch.Tensor, d: int) -> torch.Tensor:
    """The parameters ``w`` of a rotation matrix (the inverse of :func:`rotation`, angles in (-pi, pi])."""
    if d == 2:
        return torch.atan2(r[..., 1, 0], r[..., 0, 0]).unsqueeze(-1)
    if d == 3:
        cos = ((torch.diagonal(r, dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
        angle = torch.acos(cos)
        axis = _unskew(r - r.transpose(-1, -2), 3) / 2
        sin = axis.norm(dim=-1, keepdim=True)
        small = sin < 1e-7
        # Near angle pi the antisymmetric part vanishes: take the axis from the symmetric part instead.
        near_pi = (angle > math.pi - 1e-4).unsqueeze(-1)
        sym = (r + torch.eye(3, dtype=r.dtype, device=r.device)) / 2
        column = torch.argmax(torch.diagonal(sym, dim1=-2, dim2=-1), dim=-1)
        pick = torch.gather(sym, -1, column[..., None, None].expand(*sym.shape[:-1], 1)).squeeze(-1)
        pi_axis = pick / pick.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        unit = torch.where(small, axis, axis / sin.clamp_min(1e-300))
        w = torch.where(small & ~near_pi, axis, unit * angle.unsqueeze(-1))
        return torch.where(near_pi, pi_axis * angle.unsqueeze(-1), w)
    # General d: the principal matrix logarithm through an eigen-decomposition of the (normal) rotation.
    values, vectors = torch.linalg.eig(r)
    log = (vectors * torch.log(values).unsqueeze(-2)) @ torch.linalg.inv(vectors)
    return _unskew(log.real.to(r.dtype), d)


def matrix(model: str, params: torch.Tensor, d: int) -> torch.Tensor:
    """The ``(..., d + 1, d + 1)`` homogeneous matrix of ``model`` for parameters ``(..., num_params)``.

    Parameter layout: translation ``t``; linear ``A`` row by row; affine ``A`` then ``t``; rigid ``w`` (rotation)
    then ``t``; similarity ``w``, ``t``, then ``log(scale)``; projective the first ``(d + 1)^2 - 1`` entries of the
    matrix, row by row, the last entry fixed to 1.
    """
    check_model(model)
    k = num_params(model, d)
    if params.shape[-1] != k:
        raise ValueError(f"`params` for a {d}-D {model} transform must have {k} values; got {params.shape[-1]}")
    batch = params.shape[:-1]
    eye = torch.eye(d, dtype=params.dtype, device=params.device).expand(*batch, d, d)
    r = d * (d - 1) // 2
    if model == "translation":
        linear, shift = eye, params
    elif model == "linear":
        linear, shift = params.reshape(*batch, d, d), torch.zeros(*batch, d, dtype=params.dtype, device=params.device)
    elif model == "affine":
        linear, shift = params[..., : d * d].reshape(*batch, d, d), params[..., d * d :]
    elif model == "rigid":
        linear, shift = rotation(params[..., :r], d), params[..., r:]
    elif model == "similarity":
        scale = torch.exp(params[..., -1])[..., None, None]
        linear, shift = scale * rotation(params[..., :r], d), params[..., r : r + d]
    else:
        ones = torch.ones(*batch, 1, dtype=params.dtype, device=params.device)
        return torch.cat([params, ones], dim=-1).reshape(*batch, d + 1, d + 1)
    top = torch.cat([linear, shift.unsqueeze(-1)], dim=-1)
    bottom = torch.zeros(*batch, 1, d + 1, dtype=params.dtype, device=params.device)
    bottom[..., 0, d] = 1
    return torch.cat([top, bottom], dim=-2)


def params(model: str, m: torch.Tensor) -> torch.Tensor:
    """The parameters of ``model`` that give the homogeneous matrix ``m`` (the inverse of :func:`matrix`).

    ``m`` must be of the model's kind (for rigid and similarity the linear part a scaled rotation); the projective
    matrix is scaled so its last entry is 1.
    """
    check_model(model)
    d = m.shape[-1] - 1
    batch = m.shape[:-2]
    linear, shift = m[..., :d, :d], m[..., :d, d]
    if model == "translation":
        return shift.clone()
    if model == "linear":
        return linear.reshape(*batch, d * d).clone()
    if model == "affine":
        return torch.cat([linear.reshape(*batch, d * d), shift], dim=-1)
    if model == "rigid":
        return torch.cat([rotation_log(linear, d), shift], dim=-1)
    if model == "similarity":
        scale = torch.linalg.det(linear).abs() ** (1.0 / d)
        rot = linear / scale[..., None, None]
        return torch.cat([rotation_log(rot, d), shift, torch.log(scale).unsqueeze(-1)], dim=-1)
    normalised = m / m[..., d : d + 1, d : d + 1]
    return normalised.reshape(*batch, (d + 1) ** 2)[..., :-1].clone()


SMALL_D = 4
"""Up to this dimension points are mapped entry by entry: for batches of tiny matrices that is far faster than a
batched matrix product (and no slower for one matrix and many points)."""


def apply(m: torch.Tensor, points: torch.Tensor, projective: bool = True) -> torch.Tensor:
    """Map points ``(..., N, d)`` by homogeneous matrices ``(..., d + 1, d + 1)``, dividing by ``w``.

    The one point-mapping function of the library (transforms, point alignment, registration). ``projective=False``
    skips the division, for callers that know the last row is ``(0, ..., 0, 1)``: ``w`` is then exactly 1, so the
    result is the same, only cheaper.
    """
    d = m.shape[-1] - 1
    if points.shape[-1] != d:
        raise ValueError(
            f"`points` must have {d} coordinates to match a {d + 1}x{d + 1} matrix; got {points.shape[-1]}"
        )
    if d > SMALL_D:
        mapped = points @ m[..., :d, :d].transpose(-1, -2) + m[..., None, :d, d]
        if not projective:
            return mapped
        return mapped / (points @ m[..., d:, :d].transpose(-1, -2) + m[..., None, d:, d])
    mapped = m[..., None, :d, d]
    for j in range(d):
        mapped = mapped + points[..., j : j + 1] * m[..., None, :d, j]
    if not projective:
        return mapped
    w = m[..., None, d, d]
    for j in range(d):
        w = w + points[..., j] * m[..., None, d, j]
    return mapped / w.unsqueeze(-1)


def compose(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The transform that applies ``b`` first, then ``a``: the matrix product ``a @ b``."""
    return a @ b


def inverse(m: torch.Tensor) -> torch.Tensor:
    """The inverse transform (normalised so the last entry is 1 for projective matrices)."""
    inv = torch.linalg.inv(m)
    return inv / inv[..., -1:, -1:]


@dataclass(frozen=True)
class Transform:
    """A model name with its dimension: ``Transform("rigid", 3).matrix(params)``."""

    model: str
    d: int

    def __post_init__(self) -> None:
        check_model(self.model)
        if not isinstance(self.d, int) or self.d < 1 or (self.model in ("rigid", "similarity") and self.d < 2):
            raise ValueError(f"`d` must be a dimension >= {2 if self.model in ('rigid', 'similarity') else 1}")

    @property
    def num_params(self) -> int:
        return num_params(self.model, self.d)

    def matrix(self, p: torch.Tensor) -> torch.Tensor:
        return matrix(self.model, p, self.d)

    def params(self, m: torch.Tensor) -> torch.Tensor:
        return params(self.model, m)

    def identity(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The parameters of the identity transform."""
        return params(self.model, torch.eye(self.d + 1, dtype=dtype))
