"""Regularisers of a displacement field, in world units: the physical spacing (and direction) of the grid counts.

Each takes a channel-first field ``u (B, d, *shape)`` (world mm, :mod:`.fields`) on a :class:`.fields.Grid` and
returns its mean energy per voxel ``(B,)``, differentiable in ``u``:

- ``diffusion``: ``|grad u|_F^2``, the sum of the squared first derivatives with respect to world coordinates;
- ``bending``: ``|Hessian u|_F^2``, the squared second derivatives (thin-plate bending energy), mm^-2;
- ``elastic``: ``mu |eps|_F^2 + lam / 2 tr(eps)^2`` with the small-strain tensor ``eps = (J + J^T) / 2``, ``J`` the
  world Jacobian of ``u`` (linear elasticity with Lame constants ``mu``, ``lam``).

Derivatives are central differences (one-sided at the border) through the grid's index -> world matrix, so an
anisotropic or oblique grid gives the same energy as an axis-aligned isotropic one for the same world field.
"""

from __future__ import annotations

import torch

from lossfit.registration.deformable.fields import Grid, matvec

REGULARIZERS = ("diffusion", "bending", "elastic")


def world_jacobian(grid: Grid, u: torch.Tensor) -> torch.Tensor:
    """``(B, d, d, *shape)``: ``J[b, c, l] = d u_c / d x_l`` (world)."""
    d = grid.ndim
    by_index = torch.gradient(u, dim=tuple(range(2, d + 2)))  # data axes (z, y, x)
    g_index = torch.stack(list(reversed(by_index)), dim=2)  # (B, d components, d index axes, ...)
    inv = torch.linalg.inv(grid.affine[:d, :d]).to(u.device, u.dtype)  # d index / d world
    return torch.stack([matvec(inv.T, g_index[:, c]) for c in range(d)], dim=1)


def diffusion(grid: Grid, u: torch.Tensor) -> torch.Tensor:
    return world_jacobian(grid, u).pow(2).sum(dim=(1, 2)).flatten(1).mean(-1)


def bending(grid: Grid, u: torch.Tensor) -> torch.Tensor:
    d = grid.ndim
    j = world_jacobian(grid, u)  # (B, d, d, ...)
    flat = j.reshape(j.shape[0], d * d, *j.shape[3:])
    second = world_jacobian(grid, flat)  # (B, d*d, d, ...)
    return second.pow(2).sum(dim=(1, 2)).flatten(1).mean(-1)


def elastic(grid: Grid, u: torch.Tensor, mu: float = 1.0, lam: float = 1.0) -> torch.Tensor:
    j = world_jacobian(grid, u)
    eps = 0.5 * (j + j.transpose(1, 2))
    trace = torch.diagonal(eps, dim1=1, dim2=2).sum(-1)
    energy = mu * eps.pow(2).sum(dim=(1, 2)) + 0.5 * lam * trace.pow(2)
    return energy.flatten(1).mean(-1)


def folding(grid: Grid, u: torch.Tensor, floor: float = 0.2) -> torch.Tensor:
    """The mean of ``relu(floor - det(I + J))^2`` over voxels: zero while the map keeps every voxel's volume above
    ``floor``, a steep penalty as it nears a fold (det <= 0)."""
    j = world_jacobian(grid, u)
    eye = torch.eye(grid.ndim, dtype=u.dtype, device=u.device).reshape(1, grid.ndim, grid.ndim, *([1] * grid.ndim))
    det = torch.linalg.det((j + eye).movedim(1, -1).movedim(1, -1).transpose(-1, -2))
    return (floor - det).clamp_min(0).pow(2).flatten(1).mean(-1) * 100.0


def energy(name: str, grid: Grid, u: torch.Tensor) -> torch.Tensor:
    """The regulariser ``name`` (one of :data:`REGULARIZERS`)."""
    if name == "diffusion":
        return diffusion(grid, u)
    if name == "bending":
        return bending(grid, u)
    if name == "elastic":
        return elastic(grid, u)
    raise ValueError(f"`regularizer` must be one of {', '.join(map(repr, REGULARIZERS))}; got {name!r}")


__all__ = ["REGULARIZERS", "bending", "diffusion", "elastic", "energy", "folding", "world_jacobian"]
