"""Evaluating a registration: target registration error on landmarks, and the displacement between two transforms."""

from __future__ import annotations

from typing import Any

import torch

from lossfit.registration.image import Image
from lossfit.registration.resample import apply_homogeneous


def _matrix(value: Any, argument: str, d: int | None = None) -> torch.Tensor:
    m = torch.as_tensor(value, dtype=torch.float64)
    k = m.shape[0] if m.dim() == 2 else -1
    if m.dim() != 2 or m.shape[1] != k or k < 3 or (d is not None and k != d + 1):
        want = f"{d + 1}x{d + 1}" if d is not None else "a square (d+1)x(d+1)"
        raise ValueError(f"`{argument}` must be {want} matrix; got shape {tuple(m.shape)}")
    return m


def target_registration_error(matrix: Any, fixed_points: Any, moving_points: Any) -> torch.Tensor:
    """Distances (mm) between ``matrix`` applied to landmarks of the fixed image and the same landmarks located in
    the moving image: ``|| T x_i - y_i ||`` for ``fixed_points (N, d)`` and ``moving_points (N, d)`` in world (LPS)."""
    x = torch.as_tensor(fixed_points, dtype=torch.float64)
    y = torch.as_tensor(moving_points, dtype=torch.float64)
    if x.dim() != 2 or x.shape != y.shape:
        raise ValueError(
            f"`fixed_points` and `moving_points` must both be (N, d); got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    m = _matrix(matrix, "matrix", x.shape[1])
    return (apply_homogeneous(m, x) - y).norm(dim=-1)


def displacement(a: Any, b: Any, image: Image, mask: Any = None) -> dict[str, float]:
    """How far apart two transforms put the voxels of ``image`` (mm): the mean, 95th percentile and largest
    ``|| A x - B x ||`` over its voxel centres ``x`` (those where ``mask``, a boolean tensor of the image's shape or
    an Image, is true)."""
    ma, mb = _matrix(a, "a", image.ndim), _matrix(b, "b", image.ndim)
    points = image.world_grid(torch.float64).reshape(-1, image.ndim)
    if mask is not None:
        keep = (mask.data if isinstance(mask, Image) else torch.as_tensor(mask)).reshape(-1).to(torch.bool)
        if keep.numel() != points.shape[0]:
            raise ValueError(f"`mask` must have the image's shape {tuple(image.shape)}")
        if not bool(keep.any()):
            raise ValueError("`mask` selects no voxel")
        points = points[keep.to(points.device)]
    dist = (apply_homogeneous(ma, points) - apply_homogeneous(mb, points)).norm(dim=-1)
    sample = dist if dist.numel() <= 1_000_000 else dist[:: dist.numel() // 1_000_000 + 1]
    return {"mean": float(dist.mean()), "p95": float(torch.quantile(sample, 0.95)), "max": float(dist.max())}
