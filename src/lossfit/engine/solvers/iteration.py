"""Solvers that run a problem's own fixed-point iteration on the driver: Newton-Schulz (``X <- X - (X M - I) X``) and
Jacobi sweeps of plane rotations, whose steps are not a generic method's but the problem's.

The problem (an :class:`IterationProblem`) knows how to step; the solver keeps the bookkeeping every such iteration
shares, so the driver's stopping rules, row dropping, history and the one finishing path serve them as they serve
the other solvers. ``x`` holds the point (the matrix being refined; for Jacobi also the rotated matrix, which the
answer needs) and the solver's state what a step carries from one point to the next (Newton-Schulz's residual), so
that the driver keeps both right as problems finish.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

from lossfit.engine.problem import WithoutResiduals
from lossfit.engine.result import Status
from lossfit.engine.scalars import on_host, select, smaller
from lossfit.engine.solvers.base import Solver, State, StepInfo, all_accepted

Carry = dict[str, torch.Tensor]
"""What an iteration's step needs besides the point (Newton-Schulz's residual ``X M - I``), one row per problem: the
solver keeps it in its state, so the driver drops the rows of finished problems from it too."""


class IterationProblem(Protocol):
    """What an iteration asks of its problem (besides the driver's ``kind = "iteration"``, ``evals`` and the rest of
    :class:`~lossfit.engine.problem.Problem`): the start's loss, gradient measure (NaN where it has none) and carry,
    and one step of the iteration from a point and its carry: the new point, its carry, loss and gradient measure,
    and the length of the step."""

    def start(self, x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Carry]: ...

    def iterate(
        self, x: torch.Tensor, carry: Carry, rows: torch.Tensor
    ) -> tuple[torch.Tensor, Carry, torch.Tensor, torch.Tensor, torch.Tensor]: ...


class OwnIteration(WithoutResiduals):
    """A base for a family's iteration problems: what the driver asks of every problem, with the least-squares half
    refused (an iteration has no residual function to differentiate). Subclasses set ``batch`` and implement
    ``start``, ``iterate``, ``value`` (the loss at a point) and ``answer`` (the parameters a point stands for)."""

    kind = "iteration"
    what = "an iteration's problem"
    batch = False
    evals = 0

    def value(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def value_and_grad(self, x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise TypeError("an iteration's problem has no gradient here: its own step replaces the solver's")


def take_rows(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``t[rows]`` for a problem's per-matrix data, without a copy while every problem is running (``rows`` is then
    all of them, in order)."""
    return t if rows.numel() == t.shape[0] else t[rows]


@dataclass(kw_only=True)
class IterationState(State):
    """An iteration's state: what the problem carries from step to step and, where the best iterate is kept, the
    current iterate, the lowest loss and the shortest step so far, and the steps in a row without progress (``(B,)``
    tensors, or Python numbers for one problem on the CPU, with ``flags`` the one-element tensors False and True
    that the step reports then)."""

    carry: Carry
    current: torch.Tensor | None = None
    best_f: Any = None
    best_step: Any = None
    stalls: Any = None
    flags: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass
class Iteration(Solver):
    """Each step is the problem's ``iterate``. With ``keep_best`` the driver's point is the best iterate so far
    (progress is a lower loss or a shorter step: the rounding floor shows as neither), and ``stall_steps`` steps in a
    row without progress are convergence at that floor (``CONVERGED_XTOL``); without it every iterate is kept and the
    driver's tests (the gradient measure, for Jacobi's largest cosine) decide."""

    name: ClassVar[str] = "iteration"
    needs: ClassVar[str] = "iteration"
    differentiates: ClassVar[bool] = False
    keep_best: ClassVar[bool] = False
    stall_steps: ClassVar[int] = 0

    def init(self, obj: IterationProblem, x: torch.Tensor, rows: torch.Tensor) -> IterationState:  # type: ignore[override]
        f, gm, carry = obj.start(x, rows)
        if not self.keep_best:
            return IterationState(f=f, gm=gm, carry=carry)
        if on_host(x):  # one problem on the CPU: the progress test on Python numbers (lossfit.engine.scalars)
            flags = (torch.zeros(1, dtype=torch.bool), torch.ones(1, dtype=torch.bool))
            return IterationState(
                f=f, gm=gm, carry=carry, current=x, best_f=f.item(), best_step=math.inf, stalls=0, flags=flags
            )
        never = torch.full_like(f, math.inf)
        return IterationState(f=f, gm=gm, carry=carry, current=x, best_f=f, best_step=never, stalls=torch.zeros_like(f))

    def step(  # type: ignore[override]
        self, obj: IterationProblem, x: torch.Tensor, state: IterationState, rows: torch.Tensor
    ) -> tuple[torch.Tensor, IterationState, StepInfo]:
        if state.current is None:
            x_new, carry, f, gm, size = obj.iterate(x, state.carry, rows)
            return x_new, IterationState(f=f, gm=gm, carry=carry), StepInfo(all_accepted(x), size, None)
        x_new, carry, f, gm, size = obj.iterate(state.current, state.carry, rows)
        host = state.flags is not None
        value, length = (f.item(), size.item()) if host else (f, size)
        better = (value < state.best_f) | (length < state.best_step)  # progress: a lower loss or a shorter step
        stalls = select(better, 0, state.stalls + 1)
        converged = stalls >= self.stall_steps
        new = IterationState(
            f=f,
            gm=gm,
            carry=carry,
            current=x_new,
            best_f=smaller(state.best_f, value),
            best_step=smaller(state.best_step, length),
            stalls=stalls,
            flags=state.flags,
        )
        if state.flags is not None:
            kept = x_new if better else x
            better, converged = state.flags[better], state.flags[converged]
        else:
            kept = torch.where(better.unsqueeze(1), x_new, x)
        info = StepInfo(better, size, None, converged=converged, converged_as=Status.CONVERGED_XTOL)
        return kept, new, info


@dataclass
class NewtonSchulz(Iteration):
    """Newton-Schulz's self-preconditioned Gauss-Newton iteration for an inverse; stops at the rounding floor."""

    name: ClassVar[str] = "newton-schulz"
    keep_best: ClassVar[bool] = True
    stall_steps: ClassVar[int] = 2


@dataclass
class Jacobi(Iteration):
    """Jacobi sweeps: every iterate is kept; converged when a sweep's largest cosine meets the driver's ``gtol``."""

    name: ClassVar[str] = "jacobi"
