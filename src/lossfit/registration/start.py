"""Where a registration starts: the transform ``T = L M(p) R``, its initialisation and its parameter scaling.

``R`` moves the fixed image's centre to the origin (rotations and scalings turn about it) and ``L`` holds the
initialisation (the centres, centres of mass or principal axes brought together, or the user's matrix). Parameters
are scaled by the physical shift they cause (ITK's idea): each is divided by the largest distance a unit change moves
a corner of the fixed image, so a step of 1 in any scaled parameter moves voxels by about 1 mm.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lossfit import transforms as T
from lossfit.registration.image import Image
from lossfit.registration.pyramid import corner_indices

INITS = ("geometry", "mass", "moments", "none")
_FLOAT = torch.float64


def starts(
    fixed: list[Image], moving: list[Image], init: str, model: str, initial: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """``L`` and ``R`` for each pair, ``(B, d+1, d+1)`` each: from ``initial`` (a world matrix, fixed to moving)
    when given, else from ``init``."""
    d = fixed[0].ndim
    lefts, rights = [], []
    m0 = None
    if initial is not None:
        m0 = torch.as_tensor(initial, dtype=_FLOAT)
        if m0.shape != (d + 1, d + 1) or not bool(torch.isfinite(m0).all()):
            raise ValueError(f"`initial` must be a finite {d + 1}x{d + 1} matrix; got shape {tuple(m0.shape)}")
    for f_img, m_img in zip(fixed, moving, strict=True):
        if m0 is not None:
            right = torch.eye(d + 1, dtype=_FLOAT)
            right[:d, d] = -torch.tensor(f_img.center, dtype=_FLOAT)
            lefts.append(m0 @ torch.linalg.inv(right))
            rights.append(right)
        else:
            left, right = _initial(f_img, m_img, init, model)
            lefts.append(left)
            rights.append(right)
    return torch.stack(lefts), torch.stack(rights)


def _centre(image: Image, how: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A centre (world, float64) and principal axes (columns) of an image, by geometry or intensity mass."""
    d = image.ndim
    if how == "geometry":
        return torch.tensor(image.center, dtype=_FLOAT), torch.eye(d, dtype=_FLOAT)
    data = image.data.to(_FLOAT)
    step = max(1, round((data.numel() / 2e5) ** (1 / d)))
    sub = data[(slice(None, None, step),) * d]
    weight = (sub - sub.min()).reshape(-1)
    index_grid = torch.stack(
        torch.meshgrid(*[torch.arange(0, n, step, dtype=_FLOAT) for n in data.shape], indexing="ij")[::-1], dim=-1
    ).reshape(-1, d)
    world = image.index_to_world(index_grid)
    total = weight.sum().clamp_min(1e-300)
    mean = (weight.unsqueeze(1) * world).sum(0) / total
    centred = world - mean
    cov = (weight.unsqueeze(1) * centred).T @ centred / total
    _, axes = torch.linalg.eigh(cov)
    return mean, axes


def _initial(fixed: Image, moving: Image, init: str, model: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``L`` and ``Q`` of ``T = L M(p) Q`` for one pair: turn about the fixed centre, start from ``init``."""
    d = fixed.ndim
    how = "geometry" if init in ("geometry", "none") else "mass"
    c_f, axes_f = _centre(fixed, how)
    c_m, axes_m = _centre(moving, how)
    if init == "none":
        c_m = c_f
    rot = torch.eye(d, dtype=_FLOAT)
    if init == "moments" and model != "translation":
        best = -math.inf
        for signs in torch.cartesian_prod(*[torch.tensor([1.0, -1.0], dtype=_FLOAT)] * d).reshape(-1, d):
            candidate = axes_m @ torch.diag(signs) @ axes_f.T
            if float(torch.linalg.det(candidate)) > 0 and float(candidate.trace()) > best:
                best, rot = float(candidate.trace()), candidate
    left = torch.eye(d + 1, dtype=_FLOAT)
    left[:d, :d] = rot
    left[:d, d] = c_m
    right = torch.eye(d + 1, dtype=_FLOAT)
    right[:d, d] = -c_f
    return left, right


def identity_params(model: str, d: int) -> torch.Tensor:
    return T.params(model, torch.eye(d + 1, dtype=_FLOAT))


def physical_scales(model: str, d: int, fixed: Image, right: torch.Tensor) -> torch.Tensor:
    """Per parameter: 1 / the largest distance (mm) a unit change moves a corner of the fixed image, at identity."""
    world = fixed.index_to_world(corner_indices(fixed))
    centred = torch.cat([world, torch.ones(len(world), 1, dtype=_FLOAT)], dim=1) @ right.T

    def moved(p: torch.Tensor) -> torch.Tensor:
        h = centred @ T.matrix(model, p, d).T
        return h[:, :d] / h[:, d : d + 1]

    jac = torch.autograd.functional.jacobian(moved, identity_params(model, d))  # (corners, d, n)
    reach = jac.norm(dim=1).amax(dim=0)
    return 1 / reach.clamp_min(1e-12)


__all__ = ["INITS", "identity_params", "physical_scales", "starts"]
