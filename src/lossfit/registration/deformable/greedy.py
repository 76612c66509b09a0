"""The dense solvers: a stationary velocity field (``"svf"``) or a displacement field (``"field"``) on a level's grid.

Each iteration takes a step per voxel, smooths it, adds it and smooths the result:

- **Mean squares**: the step solves each voxel's own Gauss-Newton normal equation for the residual
  ``r = I_f - I_m o phi`` with the symmetric (ESM) gradient ``J = (grad I_f + grad (I_m o phi)) / 2`` in world
  coordinates, damped by the residual (Thirion's demons): ``delta = r J / (|J|^2 + r^2 / K)``, with ``K`` the
  level's mean squared voxel size, so that no step is longer than half a voxel, and a floor (``GRADIENT_FLOOR`` of
  the fixed image's mean squared gradient) that stops voxels without information (a flat background, where residual
  and gradient are both rounding) from drifting: there the regulariser alone moves the field.
- **Other metrics** (local NCC, mutual information): the metric's gradient with respect to the field (autograd
  through the resampling), scaled so that its 95th percentile length is a quarter of a voxel, no step longer.

The step is smoothed by a Gaussian of ``fluid`` (mm; the "fluid" regulariser), added — to the velocity (log-domain:
the field is then ``exp(v)``, by scaling and squaring, a diffeomorphism whose inverse is ``exp(-v)``) or to the
displacement — and the sum is smoothed by ``diffusion`` (mm; the "diffusion" regulariser). The Gaussians are
isotropic in the world: per axis they span ``sigma / spacing`` voxels, so anisotropic grids are smoothed alike in mm.

**Symmetric** (``"svf"`` only, SyN-style): both images are pulled half-way, the fixed one through ``exp(-v/2)`` and
the moving one through ``A exp(v/2)``, and the metric compares them there; the residual, the gradients (of the two
half-way images) and the step are those above, since a step ``delta`` of ``v`` moves the two sample points by
``-delta/2`` and ``+delta/2``. Neither image is the reference: the result depends less on which is called fixed.
The whole mapping is ``A exp(v/2) o exp(v/2) = A exp(v)``.

Every pair keeps the best field it has seen and stops on its own: when its last ``window`` iterations have improved
the metric by less than ``ftol`` of all that the level has gained so far, or after ``max_steps``.
"""

from __future__ import annotations

import dataclasses

import torch

from lossfit.registration.deformable.fields import Grid, coarser, exponential, smooth, world_gradient
from lossfit.registration.deformable.level import LevelPair

_WINDOW = 10
STEP_QUANTILE = 0.95  # a gradient metric's step: this quantile of the gradient's length moves by step_voxels
_COARSE_FROM = 48  # grids at least this many voxels along every axis square their velocity on every second voxel


@dataclasses.dataclass(frozen=True)
class GreedyOptions:
    """How a dense level is solved (see the module docstring); lengths in mm."""

    model: str  # "svf" or "field"
    fluid: float
    diffusion: float
    max_steps: int
    ftol: float
    step_voxels: float = 0.25  # the longest step of a gradient metric, in voxels
    symmetric: bool = False  # "svf" only: both images pulled half-way (see the module docstring)


@dataclasses.dataclass
class GreedyOutcome:
    field: torch.Tensor  # (B, d, *shape): the velocity (svf) or the displacement (field), the best seen
    start: torch.Tensor  # (B,): the metric at the start of the level
    best: torch.Tensor  # (B,): the metric of the best field
    steps: torch.Tensor  # (B,) long
    converged: torch.Tensor  # (B,) bool: stopped by ftol, not max_steps
    history: list[torch.Tensor]  # the metric per iteration (B,)


def displacement_of(grid: Grid, field: torch.Tensor, model: str, coarse: Grid | None = None) -> torch.Tensor:
    """The displacement a solver's field stands for: ``exp(v)`` for a velocity (its squarings on ``coarse`` when
    given), the field itself otherwise."""
    return exponential(grid, field, coarse=coarse) if model == "svf" else field


def half_way(grid: Grid, velocity: torch.Tensor, coarse: Grid | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The symmetric model's two half maps of a velocity: ``exp(v/2)`` (pulls the moving image, before the affine
    stage) and ``exp(-v/2)`` (pulls the fixed image)."""
    return exponential(grid, 0.5 * velocity, coarse=coarse), exponential(grid, -0.5 * velocity, coarse=coarse)


def squaring_grid(grid: Grid, model: str) -> Grid | None:
    """Where a velocity on ``grid`` is squared: on large grids every second voxel (see
    :func:`.fields.exponential`), else the grid itself (None)."""
    return coarser(grid) if model == "svf" and min(grid.shape) >= _COARSE_FROM else None


def solve_level(level: LevelPair, start: torch.Tensor, options: GreedyOptions) -> GreedyOutcome:
    """Improve the field ``start (B, d, *shape)`` on ``level`` until each pair has converged."""
    b = level.batch
    field = start.clone()
    best_field = start.clone()
    best = torch.full((b,), torch.inf, dtype=torch.float64)
    first = torch.full((b,), torch.nan, dtype=torch.float64)
    steps = torch.zeros(b, dtype=torch.long)
    running = torch.ones(b, dtype=torch.bool)
    converged = torch.zeros(b, dtype=torch.bool)
    past: list[torch.Tensor] = []  # the best metric after each iteration
    history: list[torch.Tensor] = []
    spacing = level.grid.spacing
    norm2 = sum(s * s for s in spacing) / len(spacing)
    step_mm = options.step_voxels * min(spacing)
    coarse = squaring_grid(level.grid, options.model)
    for iteration in range(options.max_steps + 1):
        value, step = _step(level, field, options, norm2, step_mm, coarse)
        value = value.detach().to(torch.float64).cpu()
        history.append(value)
        if iteration == 0:
            first = value.clone()
        better = running & (value < best)
        if bool(better.any()):
            best = torch.where(better, value, best)
            index = better.nonzero().squeeze(1).to(field.device)
            best_field[index] = field[index]
        past.append(best.clone())
        if len(past) > _WINDOW:
            old = past[-1 - _WINDOW]
            done = running & (old - best <= options.ftol * (first - best).clamp_min(0) + 1e-12 * best.abs())
            converged |= done
            running &= ~done
        if iteration == options.max_steps or not bool(running.any()):
            break
        steps += running.long()
        step = smooth(level.grid, step, options.fluid)
        keep = running.to(field.device).reshape(-1, *([1] * (field.dim() - 1)))
        field = torch.where(keep, smooth(level.grid, field + step, options.diffusion), field)
    return GreedyOutcome(best_field, first, best, steps, converged, history)


def _step(
    level: LevelPair, field: torch.Tensor, options: GreedyOptions, norm2: float, step_mm: float, coarse: Grid | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The metric of ``field`` and the step to add to it, ``(B, d, *shape)``."""
    model, symmetric = options.model, options.symmetric
    if level.metric == "mse":
        with torch.no_grad():
            if symmetric:
                u, back = half_way(level.grid, field, coarse)
                fixed = level.warp_fixed(back)
                fixed_gradient = world_gradient(level.grid, fixed)
            else:
                u = displacement_of(level.grid, field, model, coarse)
                fixed, fixed_gradient = level.fixed, level.fixed_gradient
            warped, inside = level.warp(u)
            w = level.weight(inside)
            r = (fixed - warped) * w
            count = w.flatten(1).sum(-1).clamp_min(1.0)
            value = (r * r).flatten(1).sum(-1) / count
            j = 0.5 * (fixed_gradient + world_gradient(level.grid, warped))
            assert level.gradient_floor is not None  # set by LevelPair.build
            floor = level.gradient_floor.reshape(-1, *([1] * (r.dim() - 1)))
            denom = (j * j).sum(1) + r * r / norm2 + floor
            scale = torch.where(denom > 0, r / denom.clamp_min(1e-30), torch.zeros_like(r))
            return value, j * scale.unsqueeze(1)
    with torch.enable_grad():
        v = field.detach().requires_grad_(True)
        if symmetric:
            value = level.value(*half_way(level.grid, v, coarse))
        else:
            value = level.value(displacement_of(level.grid, v, model, coarse))
        (grad,) = torch.autograd.grad(value.sum(), v)
    # The step's scale from a high quantile of the gradient's length, not its largest value (a few voxels at edges
    # would otherwise freeze the rest): no voxel steps further than ``step_mm``.
    norms = grad.norm(dim=1).flatten(1)
    sample = norms[:, :: max(1, norms.shape[1] // 100_000)]
    scale = torch.quantile(sample, STEP_QUANTILE, dim=1).clamp_min(1e-30)
    step = -grad * (step_mm / scale).reshape(-1, *([1] * (grad.dim() - 1)))
    length = step.norm(dim=1, keepdim=True)
    return value.detach(), step * (step_mm / length.clamp_min(step_mm)).clamp(max=1.0)


__all__ = ["GreedyOptions", "GreedyOutcome", "displacement_of", "half_way", "solve_level", "squaring_grid"]
