"""Inverse, pseudo-inverse, solve and least squares, each derived by minimising a residual that is linear in X.

Convention: every function minimises ``mean(r**2)`` (the seed's MSE) over the entries of X, and reports the
relative residual ``||r||_F / ||target||_F`` in ``result.reference``. Started from zeros, Gauss-Newton, CG and
gradient descent stay in the row space of the matrix, so a rank-deficient problem converges to the minimum-norm
answer (the pseudo-inverse's), reported with the status ``RANK_DEFICIENT`` and the smallest singular value.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from lossfit.engine import FitResult, Status
from lossfit.engine.api import finish
from lossfit.engine.loop import Stopping, run
from lossfit.engine.solvers.iteration import Carry, NewtonSchulz, OwnIteration, take_rows
from lossfit.matrices import accurate
from lossfit.matrices._common import as_matrix, scaled, solve_least_squares, start, with_reference

NEWTON_SCHULZ_REASON = (
    "Newton-Schulz: the Gauss-Newton step M^-1 R with M^-1 replaced by the current X; quadratic convergence; "
    "then, for a square M, the same step on the right with an accurately computed residual (two-sided accuracy)"
)
POLISH_STEPS = 8
"""At most this many accurate-residual steps: one or two reach the correctly rounded inverse up to condition 1e8,
a few more at 1e12 (each step is kept only where it lowers the right residual)."""


def newton_schulz(m: torch.Tensor, max_steps: int = 200, polish_steps: int = POLISH_STEPS) -> FitResult:
    """Minimise ``mean((X M - I)**2)`` by the self-preconditioned Gauss-Newton iteration ``X <- (2I - X M) X``.

    For ``r = X M - I`` the Gauss-Newton step is ``-R M^-1``; replacing the unknown ``M^-1`` by the current ``X``
    gives Newton-Schulz, which converges quadratically once ``||I - X M|| < 1`` and, started from
    ``X0 = M^T / (||M||_1 ||M||_inf)``, converges for every matrix to the pseudo-inverse (Ben-Israel, 1966). It runs
    on the engine's driver (the solver :class:`~lossfit.engine.solvers.iteration.NewtonSchulz`), each matrix of a
    batch on its own: it stops when two steps in a row lower neither the loss nor the step length (the rounding
    floor) and returns the last iterate that did.

    That iterate is accurate as a left inverse only: its right residual ``M X - I`` is up to ``cond(M)`` times
    larger, because the residual it was refined with carries a rounding error of ``eps * cond(M)``. For a square M,
    :func:`polish` then takes the same step from the right with the residual computed accurately
    (:mod:`lossfit.matrices.accurate`), which reaches the correctly rounded inverse: accurate on both sides.
    """
    start_time = time.perf_counter()
    batch = m.ndim == 3
    mb = m if batch else m.unsqueeze(0)
    norm1 = mb.abs().sum(dim=-2).amax(dim=-1)
    norm_inf = mb.abs().sum(dim=-1).amax(dim=-1)
    x0 = mb.transpose(-1, -2) / (norm1 * norm_inf).clamp_min(1e-300)[:, None, None]
    problem = _NewtonSchulzProblem(mb, batch)
    solver = NewtonSchulz(options={"max_steps": max_steps})
    stop = Stopping(ftol=None, xtol=None, gtol=None, max_steps=max_steps, max_time=None)
    outcome = run(problem, solver, x0.flatten(1), stop)
    converged = torch.tensor([Status(int(c)).success for c in outcome.status.tolist()], device=m.device)
    if m.shape[-1] == m.shape[-2] and polish_steps > 0 and bool(converged.any()):
        x = problem.inverse(outcome.x)
        x[converged] = polish(x[converged], mb[converged], polish_steps)
        outcome.x = x.flatten(1)
    outcome.time = time.perf_counter() - start_time
    return finish(problem, solver, outcome, NEWTON_SCHULZ_REASON, outcome.x)


class _NewtonSchulzProblem(OwnIteration):
    """``X M = I`` for a batch of matrices ``M (B, r, c)``: the point is ``X (c, r)``, one flat row per matrix, and
    each step carries its residual ``R = X M - I`` to the next."""

    def __init__(self, m: torch.Tensor, batch: bool) -> None:
        self.m, self.batch = m, batch
        self.eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
        self.per_entry = 1.0 / (m.shape[-1] * m.shape[-1])  # the mean's weight over the entries of X M - I

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(-1, self.m.shape[-1], self.m.shape[-2])

    def start(self, x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Carry]:
        residual = torch.bmm(self.inverse(x), take_rows(self.m, rows)).sub_(self.eye)
        nan = torch.full_like(residual[:, 0, 0], math.nan)  # no gradient measure: the progress test decides
        return self._loss(residual), nan, {"residual": residual, "nan": nan}

    def iterate(
        self, x: torch.Tensor, carry: Carry, rows: torch.Tensor
    ) -> tuple[torch.Tensor, Carry, torch.Tensor, torch.Tensor, torch.Tensor]:
        # Each operation counts for a small matrix (a few microseconds each, whatever its size): bmm rather than
        # matmul's general broadcasting, the residual's identity subtracted in place.
        inverse = self.inverse(x)
        step = torch.bmm(carry["residual"], inverse)
        new = inverse - step
        residual = torch.bmm(new, take_rows(self.m, rows)).sub_(self.eye)
        self.evals += 1
        carried = {"residual": residual, "nan": carry["nan"]}
        size = torch.linalg.vector_norm(step, dim=(-2, -1))
        return new.view(new.shape[0], -1), carried, self._loss(residual), carry["nan"], size

    def _loss(self, residual: torch.Tensor) -> torch.Tensor:
        """``mean(R**2)`` per matrix, from the Frobenius norm (cheaper than the mean of the squares)."""
        return torch.linalg.vector_norm(residual, dim=(-2, -1)).square_().mul_(self.per_entry)

    def value(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        residual = self.inverse(x) @ take_rows(self.m, rows) - self.eye
        return (residual * residual).mean(dim=(-2, -1))

    def answer(self, x: torch.Tensor) -> torch.Tensor:
        inverse = self.inverse(x)
        return inverse if self.batch else inverse[0]


def polish(x: torch.Tensor, m: torch.Tensor, max_steps: int = POLISH_STEPS) -> torch.Tensor:
    """Refine an inverse ``X`` of a square ``M`` by ``X <- X + X (I - M X)`` with the residual computed accurately,
    per problem while the step lowers the right residual's norm (so a step never makes an answer worse)."""
    r = accurate.residual(m, x)
    size = r.norm(dim=(-2, -1))
    for _ in range(max_steps):
        candidate = x + x @ r
        r_new = accurate.residual(m, candidate)
        new_size = r_new.norm(dim=(-2, -1))
        better = new_size < size
        if not bool(better.any()):
            break
        keep = better[..., None, None]
        x, r, size = torch.where(keep, candidate, x), torch.where(keep, r_new, r), torch.minimum(size, new_size)
    return x


def _inverse_residual(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
    return scaled(x @ m - eye)


def _solve_residual(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return scaled(a @ x - b)


def inverse(m: Any, *, solver: str = "auto", init: Any = "zeros", seed: int = 0, **options: Any) -> FitResult:
    """The inverse ``X`` of a square matrix, minimising ``mean((X @ M - I)**2)``.

    Args:
        m: a square matrix ``(n, n)``, or a batch ``(B, n, n)`` solved in one call.
        solver: ``"auto"`` or ``"newton-schulz"`` (see :func:`newton_schulz`), or any engine solver on the same
            loss, e.g. ``"gd"`` with ``lr=0.9, momentum=0.9`` as in the blog post the demo reproduces, or
            ``"gauss-newton"``.
        init: ``"zeros"`` (default), ``"random"`` (uniform, seeded by ``seed``) or a tensor.
        **options: stopping rules and solver options passed to :func:`lossfit.least_squares`.

    Returns:
        A :class:`~lossfit.FitResult` whose ``params`` is X and whose ``reference`` holds the relative residual,
        the condition number and the error against ``torch.linalg.inv`` (or ``pinv`` when M is singular).

    Example:
        >>> import torch, lossfit
        >>> result = lossfit.matrices.inverse(torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)))
        >>> result.success, torch.diagonal(result.params).tolist()
        (True, [1.0, 0.5, 0.25])
    """
    m = as_matrix(m, "m", square=True)
    batch = m.ndim == 3
    if solver in ("auto", "newton-schulz"):
        result = newton_schulz(m, **options)
    else:
        x0 = start(tuple(m.shape), m, init, seed)
        result = solve_least_squares(_inverse_residual, x0, (m,), batch, solver, options)
    checked = _check(result, m, lambda x: x @ m - torch.eye(m.shape[-1], dtype=m.dtype), None, m)
    return _check_two_sided(checked, m)


def pinv(m: Any, *, solver: str = "auto", init: Any = "zeros", seed: int = 0, **options: Any) -> FitResult:
    """The Moore-Penrose pseudo-inverse ``X`` (``(n, m)`` for an ``(m, n)`` matrix), minimising ``mean((X M - I)**2)``.

    Started from zeros the iterates stay in the row space, so the minimiser reached is the minimum-norm one, which is
    the pseudo-inverse. Arguments as for :func:`inverse`; a rank-deficient M is expected here and reported in
    ``reference["rank"]`` without failing.
    """
    m = as_matrix(m, "m")
    batch = m.ndim == 3
    if solver in ("auto", "newton-schulz"):
        result = newton_schulz(m, **options)
    else:
        shape = (*m.shape[:-2], m.shape[-1], m.shape[-2])
        x0 = start(shape, m, init, seed)
        result = solve_least_squares(_inverse_residual, x0, (m,), batch, solver, options, min_norm=True)
    eye = torch.eye(m.shape[-1], dtype=m.dtype)
    return _check(result, m, lambda x: x @ m - eye, None, m, rank_deficient_ok=True)


def solve(a: Any, b: Any, *, solver: str = "auto", init: Any = "zeros", seed: int = 0, **options: Any) -> FitResult:
    """The solution ``X`` of ``A X = B`` for a square ``A``, minimising ``mean((A X - B)**2)``.

    ``b`` may be a vector ``(n,)`` or a matrix ``(n, k)`` (with a leading batch dimension if ``a`` has one).
    """
    a = as_matrix(a, "a", square=True)
    b_t, vector = _right_side(b, a)
    x0 = start(tuple(b_t.shape), a, init, seed)
    result = solve_least_squares(_solve_residual, x0, (a, b_t), a.ndim == 3, solver, options)
    reference = (
        torch.linalg.lstsq(a, b_t, driver="gelsd").solution if a.device.type == "cpu" else torch.linalg.pinv(a) @ b_t
    )
    checked = _check(result, a, lambda x: a @ x - b_t, reference, a, target=b_t)
    if solver == "auto":
        checked = _check_backward_error(checked, a, b_t)
    return _vector_params(checked, vector)


def lstsq(a: Any, b: Any, *, solver: str = "auto", init: Any = "zeros", seed: int = 0, **options: Any) -> FitResult:
    """The minimum-norm least-squares solution ``X`` of ``A X ~ B`` for any ``(m, n)`` ``A``.

    Compared with ``torch.linalg.lstsq`` (driver ``gelsd``, which also returns the minimum-norm solution).
    """
    a = as_matrix(a, "a")
    b_t, vector = _right_side(b, a)
    shape = (*a.shape[:-2], a.shape[-1], b_t.shape[-1])
    x0 = start(shape, a, init, seed)
    result = solve_least_squares(_solve_residual, x0, (a, b_t), a.ndim == 3, solver, options, min_norm=True)
    reference = torch.linalg.lstsq(a, b_t, driver="gelsd").solution
    checked = _check(result, a, lambda x: a @ x - b_t, reference, a, target=b_t, rank_deficient_ok=True)
    return _vector_params(checked, vector)


def _right_side(b: Any, a: torch.Tensor) -> tuple[torch.Tensor, bool]:
    b_t = as_matrix(b, "b", min_ndim=1)
    vector = False
    if b_t.ndim == 1:
        b_t, vector = b_t.reshape(-1, 1), True
    elif a.ndim == 3 and b_t.ndim == 2 and b_t.shape[0] == a.shape[0] and b_t.shape[1] == a.shape[1]:
        b_t, vector = b_t.unsqueeze(-1), True
    if b_t.ndim != a.ndim or b_t.shape[-2] != a.shape[-2] or (a.ndim == 3 and b_t.shape[0] != a.shape[0]):
        raise ValueError(
            f"`b` must have {a.shape[-2]} rows to match `a` of shape {tuple(a.shape)}; got shape {tuple(b_t.shape)}"
        )
    return b_t.to(torch.promote_types(a.dtype, b_t.dtype)), vector


def _vector_params(result: FitResult, vector: bool) -> FitResult:
    if not vector:
        return result
    import dataclasses

    return dataclasses.replace(result, params=result.params.squeeze(-1))


def _check(
    result: FitResult,
    m: torch.Tensor,
    residual: Any,
    reference: torch.Tensor | None,
    a: torch.Tensor,
    target: torch.Tensor | None = None,
    rank_deficient_ok: bool = False,
) -> FitResult:
    """Compare with the closed form and find rank deficiency from the singular values of the matrix.

    ``reference`` None means the pseudo-inverse of ``a``, built from the same SVD that gives the rank.
    """
    x = result.params
    with torch.no_grad():
        u, sv, vh = torch.linalg.svd(a, full_matrices=False)
        tol = sv[..., :1] * max(a.shape[-2:]) * torch.finfo(a.dtype).eps
        if reference is None:
            inv_sv = torch.where(sv > tol, 1 / sv.clamp_min(1e-300), torch.zeros_like(sv))
            reference = (vh.transpose(-1, -2) * inv_sv.unsqueeze(-2)) @ u.transpose(-1, -2)
        r = residual(x)
        tgt = torch.eye(m.shape[-1], dtype=m.dtype) if target is None else target
        rel_residual = _worst(r.norm(dim=(-2, -1)) / tgt.norm(dim=(-2, -1)).clamp_min(1e-300))
        error = _worst((x - reference).norm(dim=(-2, -1)) / reference.norm(dim=(-2, -1)).clamp_min(1e-300))
        rank = (sv > tol).sum(dim=-1)
        full = min(a.shape[-2:])
        smallest = float(sv[..., -1].min())
        cond = _worst(sv[..., 0] / sv[..., -1].clamp_min(1e-300))
        ref_res = _worst(residual(reference).norm(dim=(-2, -1)) / tgt.norm(dim=(-2, -1)).clamp_min(1e-300))
    reference_record = {
        "relative_residual": rel_residual,
        "torch_relative_residual": ref_res,
        "error_vs_torch": error,
        "condition_number": cond,
        "rank": int(rank.min()),
        "smallest_singular_value": smallest,
    }
    deficient = (rank < full).reshape(-1)
    status = Status.RANK_DEFICIENT if bool(deficient.any()) and not rank_deficient_ok else None
    return with_reference(result, reference_record, status, deficient, smallest_singular_value=smallest)


ACCURACY_FACTOR = 10.0
"""An answer fails as ``INACCURATE`` when a residual is more than this many times torch.linalg's on that side."""


def _check_two_sided(result: FitResult, m: torch.Tensor) -> FitResult:
    """Measure an inverse as a left and as a right inverse, against ``torch.linalg.inv`` on the same matrix.

    Residuals are relative, ``||I - X M||_F / ||I||_F`` and ``||I - M X||_F / ||I||_F``, computed accurately (so the
    measurement's own rounding, ``eps * cond(M)``, does not hide the difference). A side more than
    :data:`ACCURACY_FACTOR` times both torch's on that side and the answer's other side (and above ``n * eps``)
    fails the problem as ``INACCURATE``: the answer is an inverse on one side only. (A solver stopped by loose
    tolerances is as loose on both sides; that is what its tolerances asked for, and its status says so.)
    Singular matrices are left to the rank check.
    """
    assert result.reference is not None
    if result.reference["rank"] < m.shape[-1]:
        return result
    x = result.params
    with torch.no_grad():
        direct = torch.linalg.inv(m)
        size = math.sqrt(m.shape[-1])
        sides = {
            "left": accurate.residual(x, m).norm(dim=(-2, -1)) / size,
            "right": accurate.residual(m, x).norm(dim=(-2, -1)) / size,
            "torch_left": accurate.residual(direct, m).norm(dim=(-2, -1)) / size,
            "torch_right": accurate.residual(m, direct).norm(dim=(-2, -1)) / size,
        }
    floor = m.shape[-1] * torch.finfo(m.dtype).eps

    def one_sided(side: str, other: str) -> torch.Tensor:
        bound = ACCURACY_FACTOR * torch.maximum(sides[f"torch_{side}"], sides[other]).clamp_min(floor)
        return sides[side] > bound

    inaccurate = (one_sided("left", "right") | one_sided("right", "left")).reshape(-1)
    record = {**result.reference, **{f"{k}_residual": _worst(v) for k, v in sides.items()}}
    status = Status.INACCURATE if bool(inaccurate.any()) else None
    return with_reference(result, record, status, inaccurate)


def backward_error(a: torch.Tensor, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The componentwise backward error of ``x`` for ``A x = b`` as LAPACK's ``*gerfs`` reports it (``berr``):
    ``max_i |b - A x|_i / (|A| |x| + |b|)_i`` per column, the worst column per problem. The residual is computed
    accurately, so that the figure is the answer's and not the measurement's rounding."""
    r = accurate.residual(a, x, b).abs()
    scale = a.abs() @ x.abs() + b.abs()
    ratio = torch.where(scale > 0, r / scale.clamp_min(torch.finfo(a.dtype).tiny), torch.where(r > 0, math.inf, 0.0))
    return ratio.amax(dim=(-2, -1))


def _check_backward_error(result: FitResult, a: torch.Tensor, b: torch.Tensor) -> FitResult:
    """Record the backward error of the answer and of ``torch.linalg.solve``'s; more than :data:`ACCURACY_FACTOR`
    times torch's (and above ``n * eps``) fails the problem as ``INACCURATE``. Applied to the default solver, which
    promises a direct factorisation's accuracy; a named solver is held to the tolerances it was given. Singular
    matrices go to the rank check."""
    assert result.reference is not None
    if result.reference["rank"] < a.shape[-1]:
        return result
    with torch.no_grad():
        ours = backward_error(a, result.params, b)
        direct = backward_error(a, torch.linalg.solve(a, b), b)
    floor = a.shape[-1] * torch.finfo(a.dtype).eps
    inaccurate = (ours > ACCURACY_FACTOR * direct.clamp_min(floor)).reshape(-1)
    record = {**result.reference, "backward_error": _worst(ours), "torch_backward_error": _worst(direct)}
    status = Status.INACCURATE if bool(inaccurate.any()) else None
    return with_reference(result, record, status, inaccurate)


def _worst(values: torch.Tensor) -> float:
    return float(values.max()) if values.numel() else float("nan")
