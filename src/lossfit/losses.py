"""One registry of losses: a name gives a function, and a callable is accepted in its place.

Robust losses for least squares follow one convention: with ``z = (r / f_scale)**2`` the cost of a residual is
``0.5 * f_scale**2 * rho(z)``, where ``rho(z) ~ z`` for small ``z`` so every loss agrees with plain least squares on
small residuals. ``rho`` is given by name or as a callable ``z -> rho(z)`` (its derivative comes from autograd).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Rho = Callable[[torch.Tensor], torch.Tensor]


def _linear(z: torch.Tensor) -> torch.Tensor:
    return z


def _huber(z: torch.Tensor) -> torch.Tensor:
    root = torch.sqrt(z.clamp_min(1.0))
    return torch.where(z <= 1, z, 2 * root - 1)


def _soft_l1(z: torch.Tensor) -> torch.Tensor:
    return 2 * (torch.sqrt(1 + z) - 1)


def _cauchy(z: torch.Tensor) -> torch.Tensor:
    return torch.log1p(z)


def _arctan(z: torch.Tensor) -> torch.Tensor:
    return torch.atan(z)


ROBUST: dict[str, Rho] = {
    "linear": _linear,
    "huber": _huber,
    "soft_l1": _soft_l1,
    "cauchy": _cauchy,
    "arctan": _arctan,
}


# Robust scales, in one place. The median absolute deviation times MAD_TO_SIGMA estimates a normal standard deviation;
# a loss's tuning constant (in those standard deviations) gives it 95% efficiency at Gaussian noise.
MAD_TO_SIGMA = 1.4826
TUNING = {"huber": 1.345, "cauchy": 2.385, "soft_l1": 1.0}


# A data loss by its users' name -> the engine's robust loss: mean absolute error is minimised as soft_l1 (smooth,
# and |r| far beyond its scale), the others are themselves.
DATA_TO_ROBUST = {"mse": "linear", "mae": "soft_l1", "huber": "huber", "cauchy": "cauchy", "soft_l1": "soft_l1"}


def robust_for(loss: str | None) -> str:
    """The engine's robust loss for a data loss by name (``None`` is mean squares); see ``DATA_TO_ROBUST``."""
    key = "mse" if loss is None else loss
    if key not in DATA_TO_ROBUST:
        raise ValueError(f"the loss must be one of {', '.join(DATA_TO_ROBUST)}; got {loss!r}")
    return DATA_TO_ROBUST[key]


def robust_tuning(loss: str) -> float:
    """The tuning constant of a robust loss by name, in robust standard deviations (1 for any other loss)."""
    return TUNING.get(loss, 1.0)


def robust_loss(loss: str | Rho) -> Rho:
    """Resolve a robust loss given by name (``linear``, ``huber``, ``soft_l1``, ``cauchy``, ``arctan``) or callable."""
    if callable(loss):
        return loss
    if not isinstance(loss, str):
        raise TypeError(f"`loss` must be a name or a callable z -> rho(z); got {type(loss).__name__}")
    if loss not in ROBUST:
        names = ", ".join(repr(n) for n in ROBUST)
        raise ValueError(f"`loss` must be one of {names} or a callable; got {loss!r}")
    return ROBUST[loss]


def rho_and_weight(rho: Rho, r: torch.Tensor, f_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``f_scale**2 * rho(z)`` and ``rho'(z)`` at ``z = (r / f_scale)**2``, elementwise.

    ``rho'(z)`` is the weight that turns a robust fit into a re-weighted least-squares step.
    """
    z = (r / f_scale) ** 2
    if rho is _linear:
        return r * r, torch.ones_like(r)
    with torch.enable_grad():
        zz = z.detach().requires_grad_(True)
        value = rho(zz)
        (weight,) = torch.autograd.grad(value.sum(), zz)
    return f_scale**2 * rho(z), weight.detach()
