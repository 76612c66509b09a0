"""The robust loss's derivatives, for re-weighted and Newton-like least-squares steps.

Convention (as in :mod:`lossfit.losses`): with ``z = (r / f_scale)**2`` a residual (or a group's Euclidean length)
``r`` costs ``0.5 * f_scale**2 * rho(z)``. Its gradient in ``r`` is ``rho'(z) r`` and its Hessian
``rho'(z) I + 2 rho''(z) z u u^T`` with ``u = r / |r|``. The losses of the registry have their derivatives written
out (the same values autograd gives, without its overhead on every step); a callable ``rho`` is differentiated by
autograd.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lossfit.losses import ROBUST, Rho

Derivatives = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _huber(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    inside = z <= 1
    root = torch.sqrt(z.clamp_min(1.0))
    return torch.where(inside, torch.ones_like(z), 1 / root), torch.where(inside, torch.zeros_like(z), -0.5 / root**3)


def _soft_l1(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    root = torch.sqrt(1 + z)
    return 1 / root, -0.5 / root**3


def _cauchy(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1 / (1 + z)
    return inv, -inv * inv


def _arctan(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1 / (1 + z * z)
    return inv, -2 * z * inv * inv


def _linear(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ones_like(z), torch.zeros_like(z)


_WRITTEN: dict[Rho, Derivatives] = {
    ROBUST["linear"]: _linear,
    ROBUST["huber"]: _huber,
    ROBUST["soft_l1"]: _soft_l1,
    ROBUST["cauchy"]: _cauchy,
    ROBUST["arctan"]: _arctan,
}


def value(rho: Rho, r: torch.Tensor, f_scale: float) -> torch.Tensor:
    """``f_scale**2 * rho(z)`` at ``z = (r / f_scale)**2``, elementwise (``r**2`` for the linear loss)."""
    if rho is ROBUST["linear"]:
        return r * r
    return f_scale**2 * rho((r / f_scale) ** 2)


def derivatives(rho: Rho, r: torch.Tensor, f_scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``rho'(z)``, ``rho''(z)`` and ``z = (r / f_scale)**2``, elementwise."""
    z = (r / f_scale) ** 2
    written = _WRITTEN.get(rho)
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
