"""Gauss-Newton and Levenberg-Marquardt with a dense Jacobian, batched.

Both build the normal equations ``(H + lambda D) step = -J^T W r`` for each problem, where ``W`` holds the robust
loss's weights ``rho'(z)``. Gauss-Newton takes ``H = J^T W J`` (re-weighted least-squares steps) and backtracks
along its step. Levenberg-Marquardt adds the robust loss's own curvature to ``H`` (clamped where the loss
redescends, as scipy does), so that robust fits converge like Newton's method instead of linearly; it adapts
``lambda`` per problem by the ratio of actual to predicted decrease (Nielsen's update) and scales it by the running
maximum of the diagonal of ``J^T W J`` (Marquardt's scaling), so badly scaled parameters need no tuning. Every
acceptance test uses the true robust loss. Levenberg-Marquardt works through a large batch part by part (see
:meth:`Problem.parts`) and hands the driver what it evaluated, so that the final check can reuse it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from lossfit.engine.problem import Problem
from lossfit.engine.solvers.base import Evaluation, Solver, State, StepInfo, rowdot


def solve_spd(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``a x = b`` for a batch of symmetric positive (semi)definite ``a``; also return which solves failed.

    One and two unknowns are solved in closed form (much faster than a batched factorisation for many tiny
    systems); larger systems by Cholesky.
    """
    n = a.shape[-1]
    if n == 1:
        den = a[:, 0, 0]
        return b / den.unsqueeze(1), ~(den > 0)
    if n == 2:
        a00, a01, a11 = a[:, 0, 0], a[:, 0, 1], a[:, 1, 1]
        det = a00 * a11 - a01 * a01
        bad = ~(det > 1e-14 * a00 * a11) | ~(a00 > 0)
        safe = torch.where(bad, torch.ones_like(det), det)
        x0 = (a11 * b[:, 0] - a01 * b[:, 1]) / safe
        x1 = (a00 * b[:, 1] - a01 * b[:, 0]) / safe
        return torch.stack([x0, x1], dim=1), bad
    factor, info = torch.linalg.cholesky_ex(a)
    bad = info != 0
    if bool(bad.any()):
        eye = torch.eye(n, dtype=a.dtype, device=a.device)
        factor = torch.where(bad[:, None, None], eye.expand_as(a), factor)
    x = torch.cholesky_solve(b.unsqueeze(-1), factor).squeeze(-1)
    return x, bad


def normal_equations(
    obj: Problem, r: torch.Tensor, jac: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradient ``J^T W r``, the Gauss-Newton matrix ``J^T W J``, the model Hessian and the loss.

    For plain least squares the model Hessian is ``J^T J``; for a robust loss it adds the loss's own curvature
    (:meth:`Problem.robust_terms`), ``sum_i c_i (J_i^T u_i)(J_i^T u_i)^T``, so that steps are Newton steps in the
    residuals (re-weighting alone converges only linearly). ``J^T W J`` stays the measure of the columns (for the
    gradient test and Marquardt's scaling).
    """
    f = obj.cost(r)
    jt = jac.transpose(1, 2)
    terms = obj.robust_terms(r)
    if terms is None:
        a = torch.bmm(jt, jac)
        return torch.bmm(jt, r.unsqueeze(-1)).squeeze(-1), a, a, f
    w, c, u = terms
    b, m, n = jac.shape
    k = m // w.shape[1]
    lengths = (u * r).reshape(b, -1, k).sum(-1)  # |r_i| per group: u_i . r_i
    # v_i = J_i^T u_i for each group i (a sum over the group's k rows, written out: k is 1 to 3 for points).
    j4, u3 = jac.reshape(b, -1, k, n), u.reshape(b, -1, k)
    v = j4[:, :, 0] * u3[:, :, :1]
    for i in range(1, k):
        v = v + j4[:, :, i] * u3[:, :, i : i + 1]
    # J^T W r = sum_i rho'_i |r_i| v_i: from v, without another pass over the Jacobian.
    g = torch.bmm(v.transpose(1, 2), (w * lengths).unsqueeze(-1)).squeeze(-1)
    jw = jac * (w if k == 1 else w.repeat_interleave(k, dim=1)).sqrt().unsqueeze(-1)
    a = torch.bmm(jw.transpose(1, 2), jw)
    h = a + torch.bmm((v * c.unsqueeze(-1)).transpose(1, 2), v)
    return g, a, h, f


def column_cosine(g: torch.Tensor, a: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """MINPACK's gradient test: the largest cosine between the residual vector and a column of the Jacobian."""
    col = torch.diagonal(a, dim1=-2, dim2=-1).clamp_min(0).sqrt()
    rnorm = (2 * f).clamp_min(0).sqrt()
    cos = g.abs() / (col * rnorm.unsqueeze(1)).clamp_min(1e-300)
    return torch.where(col > 0, cos, torch.zeros_like(cos)).amax(dim=1)


@dataclass(kw_only=True)
class DenseState(State):
    """A dense least-squares solver's state at a point: the gradient ``g = J^T W r``, the Gauss-Newton matrix
    ``a = J^T W J`` and the model Hessian ``h`` (``a`` itself for plain least squares)."""

    g: torch.Tensor
    a: torch.Tensor
    h: torch.Tensor


@dataclass(kw_only=True)
class MarquardtState(DenseState):
    """Levenberg-Marquardt's: the damping ``lam``, its growth factor ``nu`` and Marquardt's scaling ``scale`` (the
    largest diagonal of ``a`` seen so far)."""

    lam: torch.Tensor
    nu: torch.Tensor
    scale: torch.Tensor


@dataclass(kw_only=True)
class GaussNewtonState(State):
    """Gauss-Newton's: the gradient, ``a = J^T W J``, and the weighted Jacobian and residuals for the step."""

    g: torch.Tensor
    a: torch.Tensor
    jw: torch.Tensor
    rw: torch.Tensor


@dataclass
class _Dense(Solver):
    needs: ClassVar[str] = "residuals"

    def _evaluate(self, obj: Problem, x: torch.Tensor, rows: torch.Tensor) -> tuple[DenseState, Evaluation]:
        # Part by part: the whole batch's normal equations are put together, not its Jacobian.
        m = obj.num_residuals or 1
        out, done = [], Evaluation([], [], [])
        parts = obj.parts(x.shape[0], m * (x.shape[1] + 1))
        for part in parts:
            whole = len(parts) == 1
            r, jac = obj.residual_and_jacobian(x, rows) if whole else obj.residual_and_jacobian(x[part], rows, part)
            out.append(normal_equations(obj, r, jac))
            done.parts.append(part)
            done.residuals.append(r)
            done.jacobians.append(jac)
        g, a, h, f = (torch.cat(z) if len(out) > 1 else z[0] for z in zip(*out, strict=True))
        h = a if all(o[1] is o[2] for o in out) else h
        return DenseState(f=f, g=g, a=a, h=h, gm=column_cosine(g, a, f)), done


@dataclass
class LevenbergMarquardt(_Dense):
    """Levenberg-Marquardt. Options: ``damping`` (initial lambda relative to the scaled diagonal, 1e-3)."""

    name: ClassVar[str] = "lm"

    def __post_init__(self) -> None:
        self.options = {"damping": 1e-3, **self.options}

    def init(self, obj: Problem, x: torch.Tensor, rows: torch.Tensor) -> MarquardtState:
        at, _ = self._evaluate(obj, x, rows)
        return MarquardtState(
            f=at.f,
            gm=at.gm,
            g=at.g,
            a=at.a,
            h=at.h,
            lam=torch.full_like(at.f, self.options["damping"]),
            nu=torch.full_like(at.f, 2.0),
            scale=torch.diagonal(at.a, dim1=-2, dim2=-1).clamp_min(1e-300),
        )

    def step(  # type: ignore[override]
        self, obj: Problem, x: torch.Tensor, state: MarquardtState, rows: torch.Tensor
    ) -> tuple[torch.Tensor, MarquardtState, StepInfo]:
        g, h, f, lam, scale = state.g, state.h, state.f, state.lam, state.scale
        damped = h + torch.diag_embed(lam.unsqueeze(1) * scale)
        step, bad = solve_spd(damped, -g)
        predicted = -(rowdot(g, step) + 0.5 * rowdot(step, torch.einsum("bij,bj->bi", h, step)))
        trial, evaluated = self._evaluate(obj, x + step, rows)
        actual = f - trial.f
        ratio = actual / predicted.clamp_min(1e-300)
        accept = ~bad & torch.isfinite(trial.f) & (predicted > 0) & (ratio > 1e-4)
        # Nielsen's damping update: shrink smoothly after a good step, grow geometrically after a rejection. A
        # rejection at a damping far below the scaled curvature (lambda << 1) would retry nearly the same step (the
        # Gauss-Newton one) several times over; so it restarts from lambda = 1, which about halves the step in the
        # well-determined directions, as a trust region halves its radius after a failed step.
        shrink = torch.clamp(1 - (2 * ratio - 1) ** 3, min=1 / 3)
        lam_new = torch.where(accept, lam * shrink, torch.clamp(lam * state.nu, min=1.0))
        nu_new = torch.where(accept, torch.full_like(lam, 2.0), state.nu * 2)
        keep = accept.unsqueeze(1)
        new = state.where(accept, trial)
        new = dataclasses.replace(
            new,
            lam=lam_new.clamp(1e-16, 1e16),
            nu=nu_new.clamp_max(1e16),
            scale=torch.maximum(scale, torch.diagonal(new.a, dim1=-2, dim2=-1)),
        )
        x_new = torch.where(keep, x + step, x)
        stalled = ~accept & (lam >= 1e16)
        step_norm = torch.where(accept, step.norm(dim=1), torch.zeros_like(f))
        return x_new, new, StepInfo(accept, step_norm, stalled, predicted, actual, evaluated)


@dataclass
class GaussNewton(_Dense):
    """Gauss-Newton with a backtracking (Armijo) line search. Options: ``max_backtracks`` (30).

    The step is the minimum-norm least-squares solution of ``J step = -r`` (by a complete orthogonal
    decomposition, not the normal equations), so it keeps the accuracy of the Jacobian's own condition number and,
    for a rank-deficient Jacobian, moves only within its row space: from a zero start a linear problem is solved
    in one step with the minimum-norm answer.
    """

    name: ClassVar[str] = "gauss-newton"

    def __post_init__(self) -> None:
        self.options = {"max_backtracks": 30, **self.options}

    def _evaluate_gn(self, obj: Problem, x: torch.Tensor, rows: torch.Tensor) -> GaussNewtonState:
        r, jac = obj.residual_and_jacobian(x, rows)
        w = obj.weights(r)
        root = torch.ones_like(r) if w is None else w.sqrt()
        jw, rw = jac * root.unsqueeze(-1), r * root
        g = torch.einsum("bmn,bm->bn", jw, rw)
        a = torch.einsum("bmi,bmj->bij", jw, jw)
        f = obj.cost(r)
        return GaussNewtonState(f=f, g=g, a=a, jw=jw, rw=rw, gm=column_cosine(g, a, f))

    def init(self, obj: Problem, x: torch.Tensor, rows: torch.Tensor) -> GaussNewtonState:
        return self._evaluate_gn(obj, x, rows)

    def step(  # type: ignore[override]
        self, obj: Problem, x: torch.Tensor, state: GaussNewtonState, rows: torch.Tensor
    ) -> tuple[torch.Tensor, GaussNewtonState, StepInfo]:
        g, a, f = state.g, state.a, state.f
        step = _min_norm_step(state.jw, state.rw)
        bad = ~torch.isfinite(step).all(dim=1)
        step = torch.where(bad.unsqueeze(1), -g, step)
        slope = rowdot(g, step)
        predicted = -(slope + 0.5 * rowdot(step, torch.einsum("bij,bj->bi", a, step)))
        t = torch.ones_like(f)
        f_trial = obj.cost(obj.residual(x + step, rows))
        actual = f - f_trial
        # Backtrack on the residuals alone; the Jacobian is evaluated once, where the step ends.
        for _ in range(self.options["max_backtracks"]):
            ok = torch.isfinite(f_trial) & (f_trial <= f + 1e-4 * t * slope)
            if bool(ok.all()):
                break
            t = torch.where(ok, t, t / 2)
            retry = (~ok).nonzero().squeeze(1)
            f_trial[retry] = obj.cost(obj.residual(x[retry] + t[retry].unsqueeze(1) * step[retry], rows[retry]))
        accept = torch.isfinite(f_trial) & (f_trial <= f + 1e-4 * t * slope) & (slope < 0)
        taken = t.unsqueeze(1) * step
        x_new = torch.where(accept.unsqueeze(1), x + taken, x)
        if bool(accept.any()):
            new = state.where(accept, self._evaluate_gn(obj, x_new, rows))
        else:
            new = state
        step_norm = torch.where(accept, taken.norm(dim=1), torch.zeros_like(f))
        return x_new, new, StepInfo(accept, step_norm, ~accept, predicted, actual)


def _min_norm_step(jac: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """The minimum-norm solution of ``jac @ step = -r`` for each problem (SVD-based on CPU, QR-based elsewhere)."""
    driver = "gelsd" if jac.device.type == "cpu" else None
    return torch.linalg.lstsq(jac, -r.unsqueeze(-1), driver=driver).solution.squeeze(-1)
