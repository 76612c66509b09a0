"""Matrix-free Gauss-Newton: each step solves the damped normal equations by conjugate gradients.

The Jacobian is never formed: CG needs only ``J v`` (forward mode) and ``J^T w`` (reverse mode), so a problem with
a million parameters costs a few residual evaluations per CG iteration. The damping follows Levenberg-Marquardt
(accept a step by the ratio of actual to predicted decrease), measured against the curvature along the gradient so
that it needs no scaling from the user; the CG tolerance follows a forcing sequence (loose far from the answer,
tight near it), which keeps the outer iteration superlinear.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from lossfit.engine.problem import Objective, Problem
from lossfit.engine.solvers.base import Solver, State, StepInfo, rowdot


@dataclass(kw_only=True)
class KrylovState(State):
    """The matrix-free solver's state: the largest gradient entry at the start ``g0`` (0 until measured: the
    gradient measure is relative to it) and the damping ``lam``."""

    g0: torch.Tensor
    lam: torch.Tensor


@dataclass
class KrylovGaussNewton(Solver):
    """Gauss-Newton with conjugate gradients on Jacobian-vector products.

    Options: ``damping`` (initial lambda, relative to the curvature along the gradient; 1e-3, and 0 for an undamped
    Gauss-Newton step, right for linear least squares), ``cg_rtol`` (CG stops when its residual falls below this
    fraction of the gradient; ``None`` for the adaptive forcing sequence ``min(0.5, sqrt(|g| / |g0|))``),
    ``cg_max`` (most CG iterations per step; default the number of parameters, capped at 1000).
    """

    name: ClassVar[str] = "krylov"
    needs: ClassVar[str] = "residuals"
    # Damping, not convergence, can make steps short on a badly scaled problem, so `xtol` is off by default; and
    # the gradient measure (relative to the start's) is only trusted when tiny.
    tolerances: ClassVar[dict[str, float]] = {"ftol": 1e-12, "xtol": 0.0, "gtol": 1e-14}

    def __post_init__(self) -> None:
        self.options = {"damping": 1e-3, "cg_rtol": None, "cg_max": None, **self.options}

    def init(self, obj: Problem, x: torch.Tensor, rows: torch.Tensor) -> KrylovState:
        r = obj.residual(x, rows)
        f = obj.cost(r)
        lam = torch.full_like(f, float(self.options["damping"]))
        return KrylovState(f=f, gm=torch.full_like(f, float("inf")), g0=torch.zeros_like(f), lam=lam)

    def step(  # type: ignore[override]
        self, obj: Problem, x: torch.Tensor, state: KrylovState, rows: torch.Tensor
    ) -> tuple[torch.Tensor, KrylovState, StepInfo]:
        if not isinstance(obj, Objective):
            raise TypeError(
                f"the krylov solver needs Jacobian-vector products of a user's function; got {type(obj).__name__}"
            )
        r, forward, backward = obj.linearize(x, rows)
        w = obj.weights(r)
        root = None if w is None else w.sqrt()

        def gauss_newton(v: torch.Tensor) -> torch.Tensor:
            jv = forward(v)
            return backward(jv if root is None else jv * root * root).detach()

        g = backward(r if w is None else r * w).detach()
        f, lam = state.f, state.lam
        gmax = g.abs().amax(dim=1)
        g0 = torch.where(state.g0 > 0, state.g0, gmax.clamp_min(1e-300))
        gm = gmax / g0
        gg = rowdot(g, g).clamp_min(1e-300)
        shift = lam * rowdot(g, gauss_newton(g)) / gg
        rtol = self.options["cg_rtol"]
        rtol_t = torch.clamp(gm.sqrt(), max=0.5) if rtol is None else torch.full_like(f, float(rtol))
        step = self._cg(gauss_newton, g, shift, rtol_t)
        predicted = -(rowdot(g, step) + 0.5 * rowdot(step, gauss_newton(step)))
        f_trial = obj.cost(obj.residual(x + step, rows))
        ratio = (f - f_trial) / predicted.clamp_min(1e-300)
        accept = torch.isfinite(f_trial) & (predicted > 0) & (ratio > 1e-4)
        grow = torch.where(lam > 0, lam * 4, torch.full_like(lam, 1e-3))
        shrink = torch.where(lam < 1e-12, torch.zeros_like(lam), lam * torch.clamp(1 - (2 * ratio - 1) ** 3, min=1 / 3))
        lam_new = torch.where(accept, shrink, grow).clamp_max(1e16)
        keep = accept.unsqueeze(1)
        x_new = torch.where(keep, x + step, x)
        # `gm` is measured where this step started: a converged start stops the solver one step later, better off.
        new = KrylovState(f=torch.where(accept, f_trial, f), gm=gm, g0=g0, lam=lam_new)
        stalled = ~accept & (lam >= 1e16)
        step_norm = torch.where(accept, step.norm(dim=1), torch.zeros_like(f))
        return x_new, new, StepInfo(accept, step_norm, stalled, predicted, f - f_trial)

    def _cg(
        self, product: Callable[[torch.Tensor], torch.Tensor], g: torch.Tensor, shift: torch.Tensor, rtol: torch.Tensor
    ) -> torch.Tensor:
        """Solve ``(J^T W J + shift) p = -g`` row by row by conjugate gradients."""
        n = g.shape[1]
        cg_max = self.options["cg_max"] or min(n, 1000)
        p = torch.zeros_like(g)
        res = -g
        d = res.clone()
        rs = rowdot(res, res)
        target = rtol * rtol * rowdot(g, g)
        running = rs > target
        for _ in range(cg_max):
            if not bool(running.any()):
                break
            ad = product(d) + shift.unsqueeze(1) * d
            curvature = rowdot(d, ad)
            alpha = torch.where(running & (curvature > 0), rs / curvature.clamp_min(1e-300), torch.zeros_like(rs))
            p = p + alpha.unsqueeze(1) * d
            res = res - alpha.unsqueeze(1) * ad
            rs_new = rowdot(res, res)
            running = running & (rs_new > target) & (curvature > 0)
            beta = rs_new / rs.clamp_min(1e-300)
            d = res + beta.unsqueeze(1) * d
            rs = rs_new
        return p
