"""The cubic B-spline free-form deformation (``"bspline"``): a lattice of control points in the fixed image's grid.

Convention:
    The lattice is aligned with the level grid's index axes, with ``spacing`` mm between control points along every
    axis (``spacing / voxel size`` voxels per axis, so anisotropic grids get the same lattice in mm). Along an axis
    of ``n`` voxels and ``h`` voxels between control points it has ``ceil((n - 1) / h) + 3`` points, centred on the
    grid: one beyond each end, so that every voxel has its four. Each control point holds a world displacement
    (LPS mm); the field at voxel ``i`` is ``sum_k B3((i - p_k) / h) c_k`` along each axis (a tensor product).

A level minimises ``metric(u) / metric(0) + weight * energy(u) + folding * barrier(u)`` (the metric relative to its
value at the level's start, so that ``weight`` does not depend on the images' intensities; ``energy`` the bending
energy by default, or the diffusion or elastic energy, :mod:`.regularizers`; ``barrier`` a penalty on a Jacobian
determinant below 0.2, :func:`.regularizers.folding`, on by default; see :class:`Penalty`) over the control points
with the engine's L-BFGS (:func:`lossfit.engine.loop.run`), each pair stopping on its own. A level starts from the
previous level's field, fitted onto the new lattice by least squares (multi-level refinement: the lattice spacing
halves with the pyramid's voxels).
"""

from __future__ import annotations

import dataclasses
import math
from typing import cast

import torch

from lossfit.engine.loop import Stopping, run
from lossfit.engine.problem import Problem
from lossfit.engine.solvers import resolve
from lossfit.registration.deformable import regularizers as R
from lossfit.registration.deformable.fields import Grid, resample_field
from lossfit.registration.deformable.level import LevelPair

CHUNK = 20  # L-BFGS steps per round (see solve_level)
FOLD_WEIGHT = 100.0  # the default weight of the fold barrier (see regularizers.folding), besides the energy


def _cubic(t: torch.Tensor) -> torch.Tensor:
    t = t.abs()
    return torch.where(t < 1, (4 - 6 * t**2 + 3 * t**3) / 6, (2 - t).clamp_min(0) ** 3 / 6)


def basis(n: int, h: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(n, m)``: the weight of each of the ``m`` control points of an axis at each of its ``n`` voxels."""
    m = math.ceil((n - 1) / h - 1e-9) + 3
    offset = ((n - 1) - (m - 3) * h) / 2
    positions = (torch.arange(m, dtype=torch.float64) - 1) * h + offset
    voxels = torch.arange(n, dtype=torch.float64)
    return _cubic((voxels[:, None] - positions[None, :]) / h).to(device, dtype)


@dataclasses.dataclass(frozen=True)
class Lattice:
    """The control lattice of one level: a basis matrix per data axis."""

    bases: tuple[torch.Tensor, ...]  # data order, each (n_axis, m_axis)

    @classmethod
    def on(cls, grid: Grid, spacing_mm: float, dtype: torch.dtype, device: torch.device) -> Lattice:
        d = grid.ndim
        spacing = grid.spacing
        bases = []
        for axis, n in enumerate(grid.shape):
            h = spacing_mm / spacing[d - 1 - axis]
            if h < 1:
                raise ValueError(
                    f"`control_spacing` of {spacing_mm:.3g} mm is finer than a voxel ({spacing[d - 1 - axis]:.3g} "
                    f"mm) of a pyramid level; use at least the voxel size"
                )
            bases.append(basis(n, h, dtype, device))
        return cls(tuple(bases))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b.shape[1] for b in self.bases)

    def field(self, coefficients: torch.Tensor) -> torch.Tensor:
        """``(B, d, *lattice)`` control displacements -> ``(B, d, *shape)`` the dense field."""
        out = coefficients
        for axis, b in enumerate(self.bases):
            out = torch.movedim(torch.tensordot(out, b, dims=([2 + axis], [1])), -1, 2 + axis)
        return out

    def fit(self, field: torch.Tensor) -> torch.Tensor:
        """The control displacements whose spline is closest to ``field (B, d, *shape)`` (least squares)."""
        out = field
        for axis, b in enumerate(self.bases):
            out = torch.movedim(torch.tensordot(out, torch.linalg.pinv(b), dims=([2 + axis], [1])), -1, 2 + axis)
        return out


@dataclasses.dataclass(frozen=True)
class Penalty:
    """What a B-spline level adds to the metric: ``weight`` times the ``regularizer``'s energy (one of
    :data:`.regularizers.REGULARIZERS`, in world units) and ``folding`` times the fold barrier."""

    regularizer: str = "bending"
    weight: float = 0.01
    folding: float = FOLD_WEIGHT


class _Objective:
    """The level's loss over flat control displacements ``x (B, n)`` (the engine's scalar problem protocol)."""

    kind = "scalar"
    num_residuals = None
    counts: torch.Tensor | None = None
    keep_final = False
    jac = None

    def __init__(self, level: LevelPair, lattice: Lattice, penalty: Penalty, reference: torch.Tensor) -> None:
        self.level, self.lattice, self.penalty = level, lattice, penalty
        self.weight = penalty.weight
        self.reference = reference  # (B,): the metric at the level's start
        self.evals = 0
        self.count = level.grid.ndim * math.prod(lattice.shape)

    def _parts(self, x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        level = self.level if rows.numel() == self.level.batch else self.level.take(rows)
        u = self.lattice.field(x.reshape(x.shape[0], self.level.grid.ndim, *self.lattice.shape).to(level.fixed.dtype))
        self.evals += 1
        metric = level.value(u)
        energy = getattr(R, self.penalty.regularizer)
        penalty = energy(level.grid, u) if self.weight > 0 else torch.zeros_like(metric)
        if self.penalty.folding > 0:
            penalty = penalty + self.penalty.folding * R.folding(level.grid, u)
        return metric, penalty

    def loss(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        metric, penalty = self._parts(x, rows)
        return (metric / self.reference[rows].to(metric)).to(x.dtype) + self.weight * penalty.to(x.dtype)

    def value(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.loss(x, rows)

    def value_and_grad(self, x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            f = self.loss(x, rows)
            (g,) = torch.autograd.grad(f.sum(), x)
        return f.detach(), g


@dataclasses.dataclass
class SplineOutcome:
    field: torch.Tensor  # (B, d, *shape): the dense field of the level
    grid: Grid
    start: torch.Tensor
    best: torch.Tensor  # (B,): the metric (without the regulariser) at the answer
    steps: torch.Tensor
    converged: torch.Tensor
    history: list[torch.Tensor]


def solve_level(
    level: LevelPair,
    field: torch.Tensor | None,
    previous: Grid | None,
    spacing_mm: float,
    penalty: Penalty,
    max_steps: int,
    ftol: float,
) -> SplineOutcome:
    """Fit the level's lattice from the previous level's dense ``field`` (on ``previous``; None: the identity)."""
    d, b = level.grid.ndim, level.batch
    dtype = torch.float64
    lattice = Lattice.on(level.grid, spacing_mm, level.fixed.dtype, level.fixed.device)
    if field is None or previous is None:
        coefficients = torch.zeros(b, d, *lattice.shape, dtype=level.fixed.dtype, device=level.fixed.device)
    else:
        coefficients = lattice.fit(resample_field(field, previous, level.grid).to(level.fixed.dtype))
    with torch.no_grad():
        start_metric = level.value(lattice.field(coefficients)).to(dtype).cpu()
        identity = level.value(torch.zeros_like(lattice.field(coefficients))).to(dtype)
    problem = _Objective(level, lattice, penalty, identity.clamp_min(1e-30).to(level.fixed.device))
    # L-BFGS in rounds of CHUNK steps through the engine's driver (its own rules with tolerances too tight to end a
    # round early); the level has converged when a round gains less than ``ftol`` of all the level has gained.
    x = coefficients.reshape(b, -1).to(dtype)
    rows = torch.arange(b)
    first = problem.value(x, rows).cpu()
    losses, steps = [first], torch.zeros(b, dtype=torch.long)
    converged = torch.zeros(b, dtype=torch.bool)
    running = torch.ones(b, dtype=torch.bool)
    while bool(running.any()) and int(steps.max()) < max_steps:
        live = running.nonzero().squeeze(1)
        sub = problem
        if live.numel() < b:
            sub = _Objective(level.take(live), lattice, penalty, problem.reference[live])
        budget = Stopping(1e-12, 1e-12, 1e-14, min(CHUNK, max_steps - int(steps.max())), None)
        outcome = run(cast(Problem, sub), resolve("lbfgs", {}), x[live], budget, record=True)
        before = losses[-1][live]
        x[live] = outcome.x
        now = losses[-1].clone()
        now[live] = outcome.f.to(dtype).cpu()
        losses.append(now)
        steps[live] += outcome.steps.cpu()
        done = (before - now[live]) <= ftol * (first[live] - now[live]).clamp_min(0) + 1e-12 * now[live].abs()
        converged[live[done]] = True
        running[live[done]] = False
    coefficients = x.reshape(b, d, *lattice.shape).to(level.fixed.dtype)
    dense = lattice.field(coefficients)
    with torch.no_grad():
        best = level.value(dense).to(dtype).cpu()
    history = losses
    return SplineOutcome(dense.detach(), level.grid, start_metric, best, steps, converged, history)


__all__ = ["Lattice", "SplineOutcome", "basis", "solve_level"]
