"""Levenberg-Marquardt for millions of small independent problems at once (a parameter map: one fit per voxel).

The engine's batched driver handles any batched problem through ``torch.func``; this solver is for the case where the
problems are tiny (a few parameters, a few dozen observations) and there are millions of them, where per-problem
bookkeeping and ``(k, k)`` linear-algebra calls dominate. Everything here is elementwise over the voxels:

- The objective gives, per voxel, its cost, gradient ``g``, a positive semi-definite curvature ``H`` (for least
  squares ``0.5 ||r||^2``, ``J^T r`` and ``J^T J``; for a likelihood, its Fisher-scoring matrix) and ``||r||^2``.
- Each step solves ``(H + lam diag(H)) d = -g`` by a Cholesky factorisation written out per entry (``k <= 6``), with
  Marquardt's scaling and Nielsen's damping update; a trial point is projected onto the bounds; a step is kept where it
  lowers the cost.
- Each voxel stops on its own tests (MINPACK's: ``ftol`` on the actual and predicted reduction, ``xtol`` on the step,
  ``gtol`` on the largest cosine between the gradient and a parameter direction, bound-active directions excluded);
  stopped voxels leave the working set, so late iterations cost only the voxels still moving.

Convention: voxels on the last axis, structure of arrays: parameters ``(k, V)``, gradients ``(k, V)``, curvatures
``(k, k, V)``, data tensors ``(..., V)``; statuses are :class:`~lossfit.engine.Status` codes in an int8 tensor
``(V,)``. (With the voxels last, every per-voxel sum over the acquisitions adds contiguous rows: 5x faster on a
block of 2**16 voxels than summing the short inner axis of ``(V, m)``.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lossfit.engine.result import Status

Objective = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
"""``objective(p, *data) -> (cost (V,), gradient (k, V), curvature (k, k, V), residual2 (V,))``: ``residual2`` is the
squared length of the residual the gradient test divides by (``||r||^2`` for least squares)."""

MAX_UNKNOWNS = 6
"""Above this many parameters per voxel the written-out factorisation gives way to ``torch.linalg``."""


@dataclass(frozen=True)
class VoxelFit:
    """What :func:`levenberg_marquardt` returns: per voxel, the answer, its cost, status and step count."""

    params: torch.Tensor  # (k, V)
    cost: torch.Tensor  # (V,)
    status: torch.Tensor  # (V,) int8 Status codes
    steps: torch.Tensor  # (V,) int32


def cholesky_solve(h: torch.Tensor, rhs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``h x = rhs`` per voxel for symmetric positive definite ``h (k, k, V)``; returns ``x (k, V)`` and a
    bool ``(V,)`` that is False where ``h`` is not numerically positive definite (those ``x`` are garbage)."""
    k = h.shape[0]
    if k > MAX_UNKNOWNS:
        factor, info = torch.linalg.cholesky_ex(h.permute(2, 0, 1))
        solved = torch.cholesky_solve(rhs.T.unsqueeze(-1), factor).squeeze(-1).T
        return solved, (info == 0) & torch.isfinite(solved).all(dim=0)
    low: list[list[torch.Tensor]] = [[] for _ in range(k)]
    ok = torch.ones(h.shape[-1], dtype=torch.bool, device=h.device)
    tiny = torch.finfo(h.dtype).tiny
    for i in range(k):
        for j in range(i + 1):
            s = h[i, j]
            for q in range(j):
                s = s - low[i][q] * low[j][q]
            if i == j:
                ok = ok & (s > 0)
                low[i].append(s.clamp_min(tiny).sqrt())
            else:
                low[i].append(s / low[j][j])
    y: list[torch.Tensor] = []
    for i in range(k):
        s = rhs[i]
        for q in range(i):
            s = s - low[i][q] * y[q]
        y.append(s / low[i][i])
    solution: list[torch.Tensor] = [y[0]] * k
    for i in reversed(range(k)):
        s = y[i]
        for q in range(i + 1, k):
            s = s - low[q][i] * solution[q]
        solution[i] = s / low[i][i]
    out = torch.stack(solution)
    return out, ok & torch.isfinite(out).all(dim=0)


def levenberg_marquardt(
    objective: Objective,
    p0: torch.Tensor,
    data: tuple[torch.Tensor, ...],
    *,
    lower: torch.Tensor | None = None,
    upper: torch.Tensor | None = None,
    ftol: float = 1e-10,
    xtol: float = 1e-10,
    gtol: float = 1e-10,
    max_steps: int = 100,
    floor: torch.Tensor | None = None,
) -> VoxelFit:
    """Minimise every voxel's objective from ``p0 (k, V)``; ``lower``/``upper`` are ``(k,)`` bounds; a voxel whose
    cost is at or below ``floor (V,)`` (the rounding level of its data; 0 when None) stops as ``CONVERGED_ZERO``
    (there the gradient's direction is rounding noise, and the cosine test means nothing).

    One evaluation of the objective per step (at the trial point: its gradient and curvature are what the next step
    needs where the trial is kept). Voxels that stop are written back at once and leave the working tensors when a
    quarter of them has stopped. Returns a :class:`VoxelFit`; a voxel whose start is not finite gets ``NONFINITE``.
    """
    k, v = p0.shape
    lo = _bound(lower, k, p0, -torch.inf)
    hi = _bound(upper, k, p0, torch.inf)
    tiny = torch.finfo(p0.dtype).tiny
    params = torch.minimum(torch.maximum(p0, lo), hi).clone()
    cost = torch.full((v,), torch.nan, dtype=p0.dtype, device=p0.device)
    status = torch.zeros(v, dtype=torch.int8, device=p0.device)
    steps = torch.zeros(v, dtype=torch.int32, device=p0.device)

    rows = torch.arange(v, device=p0.device)
    p, d = params, data
    zero = torch.zeros(v, dtype=p0.dtype, device=p0.device) if floor is None else floor.to(p0.dtype)
    c, g, h, r2 = objective(p, *d)
    running = torch.isfinite(c) & torch.isfinite(g).all(dim=0) & torch.isfinite(h).all(dim=0).all(dim=0)
    code = torch.where(running, 0, int(Status.NONFINITE)).to(torch.int8)
    lam = torch.full((v,), 1e-3, dtype=p0.dtype, device=p0.device)
    nu = torch.full((v,), 2.0, dtype=p0.dtype, device=p0.device)
    count = torch.zeros(v, dtype=torch.int32, device=p0.device)
    eye = torch.eye(k, dtype=p0.dtype, device=p0.device)
    for _ in range(max_steps + 1):
        code = _stop_before_step(code, running, g, h, r2, c, zero, p, lo, hi, count, gtol, max_steps)
        stopped = running & (code != 0)
        if bool(stopped.any()):
            where = rows[stopped]
            params[:, where], cost[where], status[where], steps[where] = (
                p[:, stopped],
                c[stopped],
                code[stopped],
                count[stopped],
            )
            running = running & ~stopped
        live = int(running.sum())
        if live == 0:
            break
        if live <= 0.75 * rows.numel():
            rows, p, c, g, h, r2, lam, nu, count, code, zero = (
                t[..., running] for t in (rows, p, c, g, h, r2, lam, nu, count, code, zero)
            )
            d = tuple(t[..., running] for t in d)
            running = torch.ones_like(code, dtype=torch.bool)
        # Parameters held by a bound (on it, the descent pointing out) are fixed for this step: their rows and
        # columns leave the system (projected Newton on the active set), so the others are not dragged along.
        held = ~_free_directions(p, g, lo, hi)
        diag = torch.diagonal(h).T.clamp_min(tiny)  # (k, V)
        if bool(held.any()):
            free = (~held).to(p.dtype)
            system = h * (free[:, None] * free[None]) + eye[:, :, None] * ((lam * diag) * free + (1 - free) * diag)
            step, ok = cholesky_solve(system, -g * free)
        else:
            step, ok = cholesky_solve(h + eye[:, :, None] * (lam * diag)[None], -g)
        trial = torch.minimum(torch.maximum(p + step, lo), hi)
        step = trial - p
        c_t, g_t, h_t, r2_t = objective(trial, *d)
        predicted = -(g * step).sum(0) - 0.5 * (step[:, None] * h * step[None]).sum(dim=(0, 1))
        actual = c - c_t
        accept = running & ok & torch.isfinite(c_t) & (actual > 0)
        ratio = actual / predicted.clamp_min(tiny)
        small_f = accept & (actual <= ftol * c) & (predicted <= ftol * c)
        # Norms as sums of rows (torch's norm over the leading axis of (k, V) runs 20x slower).
        small_x = running & ok & ((step * step).sum(0).sqrt() <= xtol * (xtol + (p * p).sum(0).sqrt()))
        # Damping: Nielsen's update on a kept step, doubling growth on a rejected one.
        lam = torch.where(accept, lam * torch.clamp(1 - (2 * ratio - 1) ** 3, min=1 / 3), lam * nu)
        nu = torch.where(accept, torch.full_like(nu, 2.0), nu * 2)
        p, g, r2 = torch.where(accept, trial, p), torch.where(accept, g_t, g), torch.where(accept, r2_t, r2)
        c, h = torch.where(accept, c_t, c), torch.where(accept, h_t, h)
        count = count + running.int()
        code = torch.where(running & small_f, int(Status.CONVERGED_FTOL), code)
        code = torch.where(running & small_x & (code == 0), int(Status.CONVERGED_XTOL), code)
        code = torch.where(running & (lam > 1e16) & (code == 0), int(Status.STALLED), code).to(torch.int8)
    if bool(running.any()):
        where = rows[running]
        params[:, where], cost[where], steps[where] = p[:, running], c[running], count[running]
        status[where] = int(Status.MAX_STEPS)
    return VoxelFit(params, cost, status, steps)


def _stop_before_step(
    code: torch.Tensor,
    running: torch.Tensor,
    g: torch.Tensor,
    h: torch.Tensor,
    r2: torch.Tensor,
    c: torch.Tensor,
    zero: torch.Tensor,
    p: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    count: torch.Tensor,
    gtol: float,
    max_steps: int,
) -> torch.Tensor:
    """The tests at the current point: a cost at the rounding floor, the gradient (``gtol``), the step budget."""
    cosine = _gradient_cosine(g, h, r2, _free_directions(p, g, lo, hi))
    fresh = running & (code == 0)
    at_zero = fresh & (c <= zero)
    code = torch.where(at_zero, int(Status.CONVERGED_ZERO), code)
    code = torch.where(fresh & ~at_zero & (cosine <= gtol), int(Status.CONVERGED_GTOL), code)
    code = torch.where(running & (code == 0) & (count >= max_steps), int(Status.MAX_STEPS), code)
    return code.to(torch.int8)


def gradient_cosine(
    p: torch.Tensor,
    g: torch.Tensor,
    h: torch.Tensor,
    r2: torch.Tensor,
    lower: torch.Tensor | None = None,
    upper: torch.Tensor | None = None,
) -> torch.Tensor:
    """The largest cosine between the gradient and a free parameter direction, MINPACK's ``gtol`` measure
    (``|g_j| / (||J_j|| ||r||)`` for least squares, with ``H_jj = ||J_j||^2`` and ``r2 = ||r||^2``); 0 where
    every direction is held by a bound."""
    lo = _bound(lower, p.shape[0], p, -torch.inf)
    hi = _bound(upper, p.shape[0], p, torch.inf)
    return _gradient_cosine(g, h, r2, _free_directions(p, g, lo, hi))


def _gradient_cosine(g: torch.Tensor, h: torch.Tensor, r2: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    diag = torch.diagonal(h).T  # (k, V)
    scale = (diag * r2.clamp_min(0)).sqrt()
    cosine = torch.where(scale > 0, g.abs() / scale.clamp_min(torch.finfo(g.dtype).tiny), torch.zeros_like(g))
    return torch.where(free, cosine, torch.zeros_like(cosine)).amax(dim=0)


def _free_directions(p: torch.Tensor, g: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """False for a parameter on a bound whose descent direction (``-g``) points out of the box."""
    return ~(((p <= lo) & (g > 0)) | ((p >= hi) & (g < 0)))


def _bound(value: torch.Tensor | None, k: int, like: torch.Tensor, fill: float) -> torch.Tensor:
    """A ``(k, 1)`` bound (broadcast over the voxels)."""
    if value is None:
        return torch.full((k, 1), fill, dtype=like.dtype, device=like.device)
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(k, 1)
