"""What every solver shares: its state, what a step reports, and the small batched helpers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import torch

from lossfit.engine.problem import Problem
from lossfit.engine.result import Status


@dataclass(kw_only=True)
class State:
    """A solver's state over the running problems: what the driver reads, ``f`` (each problem's loss), ``gm`` (the
    gradient measure ``gtol`` tests) and, where the solver computed it, ``g`` (the gradient); each solver extends it
    with its own fields. Every tensor (also in a tuple or dict field) leads with one row per running problem, so
    that the driver can keep the rows of the problems still running (:meth:`take`)."""

    f: torch.Tensor
    gm: torch.Tensor
    g: torch.Tensor | None = None

    def take(self, keep: torch.Tensor) -> Self:
        """The state of the rows ``keep`` (a mask or indices)."""
        return dataclasses.replace(
            self, **{f.name: _rows(getattr(self, f.name), keep) for f in dataclasses.fields(self)}
        )

    def where(self, mask: torch.Tensor, new: State) -> Self:
        """This state with the fields that ``new`` has taken from ``new`` in the rows ``mask`` (an accepted step)."""
        changes = {}
        for f in dataclasses.fields(new):
            old, fresh = getattr(self, f.name), getattr(new, f.name)
            if isinstance(fresh, torch.Tensor) and isinstance(old, torch.Tensor):
                changes[f.name] = torch.where(mask.reshape(mask.shape + (1,) * (fresh.ndim - 1)), fresh, old)
        return dataclasses.replace(self, **changes)


def _rows(value: Any, keep: torch.Tensor) -> Any:
    if isinstance(value, torch.Tensor):
        return value[keep]
    if isinstance(value, tuple):
        return tuple(v[keep] for v in value)
    if isinstance(value, dict):
        return {k: v[keep] for k, v in value.items()}
    return value


@dataclass
class Evaluation:
    """Residuals and Jacobians a dense solver evaluated at its trial points, part by part (``parts`` slice the
    running rows): the driver keeps those of the problems that stop at an accepted trial, so that the final check
    need not evaluate them again."""

    parts: list[slice]
    residuals: list[torch.Tensor]
    jacobians: list[torch.Tensor]


@dataclass
class StepInfo:
    """What one step did, per problem: whether it moved, how far, and whether it can go on.

    Solvers with a local model also report the decrease the model ``predicted`` and the ``actual`` decrease of the
    trial point, so that ``ftol`` can hold at a minimum where every further step is rejected (as in MINPACK), and
    dense solvers what they ``evaluated`` there. A solver with a convergence test of its own (the minibatch mode's
    settled whole-data loss) reports where it held in ``converged``, with the status it means (``converged_as``).
    """

    accepted: torch.Tensor
    step_norm: torch.Tensor
    stalled: torch.Tensor | None  # None: the solver never stalls
    predicted: torch.Tensor | None = None
    actual: torch.Tensor | None = None
    evaluated: Evaluation | None = None
    converged: torch.Tensor | None = None
    converged_as: int = Status.CONVERGED_FTOL


@dataclass
class Solver:
    """A solver is a small object with ``init`` and ``step``; the driver owns the loop and the stopping rules.

    ``needs`` says what a solver asks of the problem: ``"gradient"`` (any scalar loss) or ``"residuals"``
    (least squares only). ``tolerances`` are the solver's defaults for ``ftol``, ``xtol`` and ``gtol``, and
    ``window`` the number of steps over which ``ftol`` compares the loss (first-order methods make small
    changes every step, so they compare over many). ``differentiates`` is false for a solver that never asks
    autograd for anything (the driver then runs it in ``torch.inference_mode``).
    """

    name: ClassVar[str] = ""
    needs: ClassVar[str] = "gradient"
    differentiates: ClassVar[bool] = True
    tolerances: ClassVar[dict[str, float]] = {"ftol": 1e-12, "xtol": 1e-12, "gtol": 1e-10}
    window: ClassVar[int] = 1
    options: dict[str, Any] = field(default_factory=dict)

    def init(self, obj: Problem, x: torch.Tensor, rows: torch.Tensor) -> State:
        """Evaluate the start: its :class:`State`."""
        raise NotImplementedError

    def step(
        self, obj: Problem, x: torch.Tensor, state: State, rows: torch.Tensor
    ) -> tuple[torch.Tensor, State, StepInfo]:
        """Take one step from ``x``; return the new point, its state and what happened."""
        raise NotImplementedError


def rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot product of two ``(B, n)`` matrices."""
    return (a * b).sum(dim=-1)


def gradient_measure(f: torch.Tensor, f0: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``||g||_inf / max(1, min(|f|, |f0|))``: the gradient test for a scalar loss.

    Relative to the loss, so invariant to scaling it; against the smaller of the current and the starting loss, so
    that neither a diverging run (whose loss outgrows its gradient) nor a huge start can make it pass early.
    """
    return g.abs().amax(dim=-1) / torch.minimum(f.abs(), f0.abs()).clamp_min(1.0)


def all_accepted(x: torch.Tensor) -> torch.Tensor:
    return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
