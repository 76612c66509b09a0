"""Limited-memory BFGS with a strong Wolfe line search, batched: every problem has its own memory and step length.

The line search is Nocedal and Wright's bracketing phase and zoom (Numerical Optimization, 2nd ed., algorithms 3.5
and 3.6) with safeguarded cubic interpolation, written over a batch: each problem carries its own bracket, and only
the problems still searching are evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lossfit.engine.problem import Problem
from lossfit.engine.solvers.base import Solver, State, StepInfo, gradient_measure, rowdot


@dataclass(kw_only=True)
class LBFGSState(State):
    """L-BFGS's state: the gradient, the start's loss, and the memory of steps ``s``, gradient changes ``y`` and
    their ``rho = 1 / (s . y)`` (``(B, memory, n)``, newest last; ``rho = 0`` marks an empty slot)."""

    g: torch.Tensor
    f0: torch.Tensor
    s: torch.Tensor
    y: torch.Tensor
    rho: torch.Tensor


@dataclass
class LBFGS(Solver):
    """L-BFGS. Options: ``memory`` (10 pairs), ``c1`` (1e-4), ``c2`` (0.9), ``max_line_search`` (25 evaluations)."""

    name: ClassVar[str] = "lbfgs"

    def __post_init__(self) -> None:
        self.options = {"memory": 10, "c1": 1e-4, "c2": 0.9, "max_line_search": 25, **self.options}

    def init(self, obj: Problem, x: torch.Tensor, rows: torch.Tensor) -> LBFGSState:
        f, g = obj.value_and_grad(x, rows)
        b, n, mem = x.shape[0], x.shape[1], self.options["memory"]
        s, y, rho = x.new_zeros(b, mem, n), x.new_zeros(b, mem, n), x.new_zeros(b, mem)
        return LBFGSState(f=f, f0=f, g=g, gm=gradient_measure(f, f, g), s=s, y=y, rho=rho)

    def _direction(self, state: LBFGSState) -> torch.Tensor:
        return -lbfgs_product(state.s, state.y, state.rho, state.g)

    def step(  # type: ignore[override]
        self, obj: Problem, x: torch.Tensor, state: LBFGSState, rows: torch.Tensor
    ) -> tuple[torch.Tensor, LBFGSState, StepInfo]:
        g, f = state.g, state.f
        d = self._direction(state)
        slope = rowdot(g, d)
        fresh = (state.rho == 0).all(dim=1)
        bad = ~(slope < 0) | ~torch.isfinite(slope)
        # Not a descent direction: forget the memory and go downhill.
        d = torch.where(bad.unsqueeze(1), -g, d)
        slope = torch.where(bad, -rowdot(g, g), slope)
        fresh = fresh | bad
        gnorm = g.abs().amax(dim=1).clamp_min(1e-300)
        first = torch.where(fresh, torch.clamp(1 / gnorm, max=1.0), torch.ones_like(gnorm))
        alpha, f_new, g_new, ok = self._line_search(obj, x, f, slope, d, first, rows)
        step = alpha.unsqueeze(1) * d
        x_new = torch.where(ok.unsqueeze(1), x + step, x)
        f_new = torch.where(ok, f_new, f)
        g_new = torch.where(ok.unsqueeze(1), g_new, g)
        s_k, y_k = step, g_new - g
        sy = rowdot(s_k, y_k)
        keep = ok & (sy > 1e-10 * rowdot(y_k, y_k).sqrt() * rowdot(s_k, s_k).sqrt())
        s = torch.where(keep[:, None, None], torch.cat([state.s[:, 1:], s_k.unsqueeze(1)], 1), state.s)
        y = torch.where(keep[:, None, None], torch.cat([state.y[:, 1:], y_k.unsqueeze(1)], 1), state.y)
        rho_new = torch.cat([state.rho[:, 1:], (1 / sy.clamp_min(1e-300)).unsqueeze(1)], 1)
        rho = torch.where(keep.unsqueeze(1), rho_new, state.rho)
        reset = bad & ok
        rho = torch.where(reset.unsqueeze(1) & ~keep.unsqueeze(1), torch.zeros_like(rho), rho)
        # A failed line search along a quasi-Newton direction restarts from steepest descent (the memory may be
        # stale); only a failure along the gradient itself is a stall.
        restart = ~ok & ~fresh
        rho = torch.where(restart.unsqueeze(1), torch.zeros_like(rho), rho)
        gm = gradient_measure(f_new, state.f0, g_new)
        new_state = LBFGSState(f=f_new, f0=state.f0, g=g_new, gm=gm, s=s, y=y, rho=rho)
        step_norm = torch.where(ok, step.norm(dim=1), torch.zeros_like(f))
        return x_new, new_state, StepInfo(ok, step_norm, ~ok & fresh)

    def _line_search(
        self,
        obj: Problem,
        x: torch.Tensor,
        f0: torch.Tensor,
        slope0: torch.Tensor,
        d: torch.Tensor,
        first: torch.Tensor,
        rows: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step lengths meeting the strong Wolfe conditions, with the loss and gradient there, and which succeeded."""
        c1, c2 = self.options["c1"], self.options["c2"]
        b = x.shape[0]
        zeros = torch.zeros_like(f0)
        # Bracket ends: lo is the best point meeting sufficient decrease so far; hi the other end.
        a_lo, f_lo, s_lo = zeros.clone(), f0.clone(), slope0.clone()
        g_lo = torch.zeros_like(x)
        a_hi, f_hi, s_hi = zeros.clone(), f0.clone(), slope0.clone()
        a_try = first.clone()
        zoom = torch.zeros(b, dtype=torch.bool, device=x.device)
        done = torch.zeros_like(zoom)
        moved = torch.zeros_like(zoom)
        a_out, f_out, g_out = zeros.clone(), f0.clone(), torch.zeros_like(x)
        for _ in range(self.options["max_line_search"]):
            searching = ~done
            if not bool(searching.any()):
                break
            # Evaluate the problems still searching; every update below runs over the whole batch, masked, so one
            # problem (or a batch where all are still searching) costs no gathers and scatters.
            a = a_try
            if bool(searching.all()):
                f_a, g_a = obj.value_and_grad(x + a.unsqueeze(1) * d, rows)
            else:
                live = searching.nonzero().squeeze(1)
                f_part, g_part = obj.value_and_grad(x[live] + a[live].unsqueeze(1) * d[live], rows[live])
                f_a, g_a = f0.clone(), g_lo.clone()
                f_a[live], g_a[live] = f_part, g_part
            s_a = rowdot(g_a, d)
            finite = torch.isfinite(f_a) & torch.isfinite(s_a)
            f_a = torch.where(finite, f_a, torch.full_like(f_a, float("inf")))
            armijo_fail = ~finite | (f_a > f0 + c1 * a * slope0) | (f_a >= f_lo) & moved
            curvature = s_a.abs() <= -c2 * slope0
            z = zoom
            # A point without sufficient decrease becomes the high end (and starts the zoom).
            to_hi = searching & armijo_fail
            accept = searching & ~armijo_fail & curvature
            # Otherwise the point is the new low end; the old low end becomes high if the slope points back.
            new_lo = searching & ~armijo_fail & ~curvature
            flip = new_lo & (s_a * (a_hi - a_lo) >= 0) & z
            up_hill = new_lo & (s_a >= 0) & ~z
            back = flip | up_hill
            a_hi = torch.where(to_hi, a, torch.where(back, a_lo, a_hi))
            f_hi = torch.where(to_hi, f_a, torch.where(back, f_lo, f_hi))
            s_hi = torch.where(to_hi, s_a, torch.where(back, s_lo, s_hi))
            a_lo = torch.where(new_lo, a, a_lo)
            f_lo = torch.where(new_lo, f_a, f_lo)
            s_lo = torch.where(new_lo, s_a, s_lo)
            g_lo = torch.where(new_lo.unsqueeze(1), g_a, g_lo)
            moved = moved | new_lo
            zoom = z | to_hi | up_hill
            a_out = torch.where(accept, a, a_out)
            f_out = torch.where(accept, f_a, f_out)
            g_out = torch.where(accept.unsqueeze(1), g_a, g_out)
            done = done | accept
            # Next trial: extrapolate while bracketing, interpolate inside the bracket while zooming.
            inside = _cubic_min(a_lo, f_lo, s_lo, a_hi, f_hi, s_hi)
            lo_end, hi_end = torch.minimum(a_lo, a_hi), torch.maximum(a_lo, a_hi)
            width = hi_end - lo_end
            safe = (inside > lo_end + 0.1 * width) & (inside < hi_end - 0.1 * width) & torch.isfinite(inside)
            inside = torch.where(safe, inside, (a_lo + a_hi) / 2)
            a_try = torch.where(searching, torch.where(zoom, inside, a * 2.0), a_try)
            # A bracket that has shrunk to rounding cannot give a better point.
            collapsed = searching & zoom & (width <= 1e-12 * hi_end.clamp_min(1e-300))
            done = done | collapsed
        # Out of evaluations or collapsed: fall back to the best point with sufficient decrease, if any.
        fallback = ~(a_out > 0) & moved
        a_out = torch.where(fallback, a_lo, a_out)
        f_out = torch.where(fallback, f_lo, f_out)
        g_out = torch.where(fallback.unsqueeze(1), g_lo, g_out)
        ok = (a_out > 0) & (f_out <= f0)
        return a_out, f_out, g_out, ok


def _cubic_min(
    a: torch.Tensor, fa: torch.Tensor, da: torch.Tensor, b: torch.Tensor, fb: torch.Tensor, db: torch.Tensor
) -> torch.Tensor:
    """The minimiser of the cubic through two points with their slopes (NaN where it has none)."""
    d1 = da + db - 3 * (fa - fb) / (a - b)
    rad = d1 * d1 - da * db
    d2 = torch.sign(b - a) * torch.sqrt(rad.clamp_min(0))
    t = b - (b - a) * (db + d2 - d1) / (db - da + 2 * d2)
    return torch.where(rad >= 0, t, torch.full_like(t, float("nan")))


def lbfgs_product(s: torch.Tensor, y: torch.Tensor, rho: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``H g`` for the L-BFGS inverse Hessian of the stored pairs, in the compact form (Byrd, Nocedal and Schnabel,
    Math. Programming 63, 1994), batched.

    ``s`` and ``y`` are ``(B, k, n)`` with the oldest pair first, ``rho = 1 / s^T y`` (0 marks an empty slot, which
    is left out); ``H0 = gamma I`` with ``gamma = s^T y / y^T y`` of the newest pair (1 with none). With
    ``R = triu(S^T Y)``, ``D = diag(S^T Y)``, ``a = S^T g``, ``b = Y^T g`` and ``t = R^-1 a``:
    ``H g = gamma g + S R^-T ((D + gamma Y^T Y) t - gamma b) - gamma Y t`` -- the two-loop recursion's result in
    a fixed number of batched products and two triangular solves, instead of two passes over the memory.
    """
    valid = (rho > 0).to(g.dtype)
    s = s * valid.unsqueeze(-1)
    y = y * valid.unsqueeze(-1)
    newest_sy = 1 / rho[:, -1].clamp_min(1e-300)
    yy_newest = rowdot(y[:, -1], y[:, -1])
    gamma = torch.where(rho[:, -1] > 0, newest_sy / yy_newest.clamp_min(1e-300), torch.ones_like(yy_newest))
    sy = torch.bmm(s, y.transpose(1, 2))  # (B, k, k): s_i . y_j
    eye = torch.eye(sy.shape[-1], dtype=g.dtype, device=g.device)
    r = torch.triu(sy) + eye * (1 - valid).unsqueeze(-1)  # an empty slot solves to 0 on a unit diagonal
    ab = torch.bmm(torch.cat([s, y], dim=1), g.unsqueeze(-1))
    a, b = ab[:, : s.shape[1]], ab[:, s.shape[1] :]
    t = torch.linalg.solve_triangular(r, a, upper=True)
    middle = torch.diagonal(sy, dim1=-2, dim2=-1).unsqueeze(-1) * t
    middle = middle + gamma[:, None, None] * (torch.bmm(y, torch.bmm(y.transpose(1, 2), t)) - b)
    u = torch.linalg.solve_triangular(r.transpose(1, 2), middle, upper=False)
    product = gamma.unsqueeze(1) * g + torch.bmm(s.transpose(1, 2), u).squeeze(-1)
    return product - gamma.unsqueeze(1) * torch.bmm(y.transpose(1, 2), t).squeeze(-1)
