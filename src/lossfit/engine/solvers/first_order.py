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


@dataclass
class FirstOrder(Solver):
    """A first-order method: each step moves by ``direction(state)``, from the gradient ``state["g"]`` and the
    method's own ``buffers`` (momentum, moment estimates), so the minibatch mode can step on one minibatch's gradient
    at a time with the same rule."""

    tolerances: ClassVar[dict[str, float]] = {"ftol": 1e-12, "xtol": 0.0, "gtol": 1e-10}
    window: ClassVar[int] = 50

    def init(self, obj: Problem, x: torch.Tensor, rows: torch.Tensor) -> State:
        f, g = obj.value_and_grad(x, rows)
        return {"f": f, "f0": f, "g": g, "gm": gradient_measure(f, f, g), **self.buffers(x)}

    def buffers(self, x: torch.Tensor) -> State:
        return {}

    def direction(self, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def step(
        self, obj: Problem, x: torch.Tensor, state: State, rows: torch.Tensor
    ) -> tuple[torch.Tensor, State, StepInfo]:
        delta, buffers = self.direction(state)
        x_new = x + delta
        f, g = obj.value_and_grad(x_new, rows)
        info = StepInfo(all_accepted(x), delta.norm(dim=-1), None)
        new = {"f": f, "f0": state["f0"], "g": g, "gm": gradient_measure(f, state["f0"], g), **buffers}
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

    def buffers(self, x: torch.Tensor) -> State:
        return {"v": torch.zeros_like(x)}

    def direction(self, state: State) -> tuple[torch.Tensor, State]:
        lr, mu = self.options["lr"], self.options["momentum"]
        g = state["g"]
        v = mu * state["v"] + g
        d = g + mu * v if self.options["nesterov"] else v
        return -lr * d, {"v": v}


@dataclass
class Adam(FirstOrder):
    """Adam (Kingma and Ba, 2015) with bias correction. Options: ``lr`` (0.001), ``betas`` ((0.9, 0.999)), ``eps``."""

    name: ClassVar[str] = "adam"

    def __post_init__(self) -> None:
        self.options = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, **self.options}

    def buffers(self, x: torch.Tensor) -> State:
        zeros = torch.zeros_like(x)
        return {"m": zeros, "v": zeros.clone(), "t": torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device)}

    def direction(self, state: State) -> tuple[torch.Tensor, State]:
        b1, b2 = self.options["betas"]
        g, t = state["g"], state["t"] + 1
        m = b1 * state["m"] + (1 - b1) * g
        v = b2 * state["v"] + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        return -self.options["lr"] * m_hat / (v_hat.sqrt() + self.options["eps"]), {"m": m, "v": v, "t": t}


@dataclass
class RMSprop(FirstOrder):
    """RMSprop (Tieleman and Hinton). Options: ``lr`` (0.01), ``alpha`` (0.99), ``eps`` (1e-8), ``momentum`` (0)."""

    name: ClassVar[str] = "rmsprop"

    def __post_init__(self) -> None:
        self.options = {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "momentum": 0.0, **self.options}

    def buffers(self, x: torch.Tensor) -> State:
        return {"sq": torch.zeros_like(x), "buf": torch.zeros_like(x)}

    def direction(self, state: State) -> tuple[torch.Tensor, State]:
        alpha, g = self.options["alpha"], state["g"]
        sq = alpha * state["sq"] + (1 - alpha) * g * g
        scaled = g / (sq.sqrt() + self.options["eps"])
        buf = self.options["momentum"] * state["buf"] + scaled
        return -self.options["lr"] * buf, {"sq": sq, "buf": buf}
