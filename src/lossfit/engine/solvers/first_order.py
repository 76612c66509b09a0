"""First-order solvers: gradient descent (with momentum and Nesterov's variant), Adam and RMSprop.

These are the seeds' methods, kept so that users can reproduce and compare them; each costs one gradient per step
and converges slowly on ill-conditioned problems. Conventions follow ``torch.optim`` (momentum without dampening,
Adam with bias correction), so a run here matches the same run written with ``torch.optim``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lossfit.engine.problem import Problem
from lossfit.engine.solvers.base import Solver, State, StepInfo, all_accepted, gradient_measure


@dataclass(kw_only=True)
class FirstOrderState(State):
    """A first-order method's state: the gradient ``g``, the start's loss ``f0`` (for the gradient measure) and the
    method's ``moments`` (momentum; Adam's moment estimates and step count; RMSprop's mean square and buffer)."""

    g: torch.Tensor
    f0: torch.Tensor
    moments: tuple[torch.Tensor, ...] = ()


@dataclass
class FirstOrder(Solver):
    """A first-order method: each step moves by ``direction(g, moments)``, from the gradient and the method's own
    ``moments``, so the minibatch mode can step on one minibatch's gradient at a time with the same rule."""

    tolerances: ClassVar[dict[str, float]] = {"ftol": 1e-12, "xtol": 0.0, "gtol": 1e-10}
    window: ClassVar[int] = 50

    def init(self, obj: Problem, x: torch.Tensor, rows: torch.Tensor) -> FirstOrderState:
        f, g = obj.value_and_grad(x, rows)
        return FirstOrderState(f=f, f0=f, g=g, gm=gradient_measure(f, f, g), moments=self.buffers(x))

    def buffers(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The method's moments at the start, one row per problem."""
        return ()

    def direction(
        self, g: torch.Tensor, moments: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The step from gradient ``g`` and the moments, and the moments after it."""
        raise NotImplementedError

    def step(  # type: ignore[override]
        self, obj: Problem, x: torch.Tensor, state: FirstOrderState, rows: torch.Tensor
    ) -> tuple[torch.Tensor, FirstOrderState, StepInfo]:
        delta, moments = self.direction(state.g, state.moments)
        x_new = x + delta
        f, g = obj.value_and_grad(x_new, rows)
        info = StepInfo(all_accepted(x), delta.norm(dim=-1), None)
        new = FirstOrderState(f=f, f0=state.f0, g=g, gm=gradient_measure(f, state.f0, g), moments=moments)
        return x_new, new, info


@dataclass
class GradientDescent(FirstOrder):
    """Gradient descent ``v = momentum * v + g; x -= lr * v`` (``x -= lr * (g + momentum * v)`` with Nesterov).

    Options: ``lr`` (default 0.01), ``momentum`` (0), ``nesterov`` (False).
    """

    name: ClassVar[str] = "gd"

    def __post_init__(self) -> None:
        self.options = {"lr": 0.01, "momentum": 0.0, "nesterov": False, **self.options}
        if self.options["nesterov"] and self.options["momentum"] <= 0:
            raise ValueError("`nesterov=True` needs `momentum` > 0")

    def buffers(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (torch.zeros_like(x),)  # the velocity

    def direction(
        self, g: torch.Tensor, moments: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        lr, mu = self.options["lr"], self.options["momentum"]
        v = mu * moments[0] + g
        d = g + mu * v if self.options["nesterov"] else v
        return -lr * d, (v,)


@dataclass
class Adam(FirstOrder):
    """Adam (Kingma and Ba, 2015) with bias correction. Options: ``lr`` (0.001), ``betas`` ((0.9, 0.999)), ``eps``."""

    name: ClassVar[str] = "adam"

    def __post_init__(self) -> None:
        self.options = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, **self.options}

    def buffers(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        zeros = torch.zeros_like(x)  # the first and second moment estimates and the step count
        return zeros, zeros.clone(), torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device)

    def direction(
        self, g: torch.Tensor, moments: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        b1, b2 = self.options["betas"]
        m, v, t = moments
        t = t + 1
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        return -self.options["lr"] * m_hat / (v_hat.sqrt() + self.options["eps"]), (m, v, t)


@dataclass
class RMSprop(FirstOrder):
    """RMSprop (Tieleman and Hinton). Options: ``lr`` (0.01), ``alpha`` (0.99), ``eps`` (1e-8), ``momentum`` (0)."""

    name: ClassVar[str] = "rmsprop"

    def __post_init__(self) -> None:
        self.options = {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "momentum": 0.0, **self.options}

    def buffers(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.zeros_like(x), torch.zeros_like(x)  # the mean square and the momentum buffer

    def direction(
        self, g: torch.Tensor, moments: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        alpha = self.options["alpha"]
        sq = alpha * moments[0] + (1 - alpha) * g * g
        scaled = g / (sq.sqrt() + self.options["eps"])
        buf = self.options["momentum"] * moments[1] + scaled
        return -self.options["lr"] * buf, (sq, buf)
