"""One registry of losses: a name gives a function, and a callable is accepted in its place.

Robust losses for least squares follow one convention: with ``z = (r / f_scale)**2`` the cost of a residual is
``0.5 * f_scale**2 * rho(z)``, where ``rho(z) ~ z`` for small ``z`` so every loss agrees with plain least squares on
small residuals. ``rho`` is given by name or as a callable ``z -> rho(z)`` (its derivatives then come from
autograd); the registry's losses have their first two derivatives written out beside them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Rho = Callable[[torch.Tensor], torch.Tensor]
Derivatives = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


# Each robust loss with its first two derivatives in z written out beside it (the values autograd gives, without its
# overhead on every step). With z = (r / f_scale)**2 the gradient of the cost in r is rho'(z) r and its Hessian
# rho'(z) I + 2 rho''(z) z u u^T with u = r / |r|.
def _linear(z: torch.Tensor) -> torch.Tensor:
    return z


def _linear_d(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ones_like(z), torch.zeros_like(z)


def _huber(z: torch.Tensor) -> torch.Tensor:
    root = torch.sqrt(z.clamp_min(1.0))
    return torch.where(z <= 1, z, 2 * root - 1)


def _huber_d(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    inside = z <= 1
    root = torch.sqrt(z.clamp_min(1.0))
    return torch.where(inside, torch.ones_like(z), 1 / root), torch.where(inside, torch.zeros_like(z), -0.5 / root**3)


def _soft_l1(z: torch.Tensor) -> torch.Tensor:
    return 2 * (torch.sqrt(1 + z) - 1)


def _soft_l1_d(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    root = torch.sqrt(1 + z)
    return 1 / root, -0.5 / root**3


def _cauchy(z: torch.Tensor) -> torch.Tensor:
    return torch.log1p(z)


def _cauchy_d(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1 / (1 + z)
    return inv, -inv * inv


def _arctan(z: torch.Tensor) -> torch.Tensor:
    return torch.atan(z)


def _arctan_d(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1 / (1 + z * z)
    return inv, -2 * z * inv * inv


ROBUST: dict[str, Rho] = {
    "linear": _linear,
    "huber": _huber,
    "soft_l1": _soft_l1,
    "cauchy": _cauchy,
    "arctan": _arctan,
}
_DERIVATIVES: dict[Rho, Derivatives] = {
    _linear: _linear_d,
    _huber: _huber_d,
    _soft_l1: _soft_l1_d,
    _cauchy: _cauchy_d,
    _arctan: _arctan_d,
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
    return robust_value(rho, r, f_scale), robust_derivatives(rho, r, f_scale)[0]


def robust_value(rho: Rho, r: torch.Tensor, f_scale: float) -> torch.Tensor:
    """``f_scale**2 * rho(z)`` at ``z = (r / f_scale)**2``, elementwise (``r**2`` for the linear loss)."""
    if rho is _linear:
        return r * r
    return f_scale**2 * rho((r / f_scale) ** 2)


def robust_derivatives(rho: Rho, r: torch.Tensor, f_scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``rho'(z)``, ``rho''(z)`` and ``z = (r / f_scale)**2``, elementwise: written out for the registry's losses,
    by autograd for a callable."""
    z = (r / f_scale) ** 2
    written = _DERIVATIVES.get(rho)
    if written is not None:
        d1, d2 = written(z)
        return d1, d2, z
    with torch.enable_grad():
        zz = z.detach().requires_grad_(True)
        (d1,) = torch.autograd.grad(rho(zz).sum(), zz, create_graph=True)
        if d1.requires_grad:
            (d2,) = torch.autograd.grad(d1.sum(), zz, materialize_grads=True)
        else:
            d2 = torch.zeros_like(z)
    return d1.detach(), d2.detach(), z
