"""Residuals of matrix products computed to well below the working precision's rounding.

The residual ``I - M X`` of an inverse, formed the plain way, carries a rounding error of about
``eps * ||M|| * ||X||`` = ``eps * cond(M)``: at condition 1e8 in float64 that is 2e-8, far above the residual of a
correctly rounded inverse (about 5e-10 on both sides). Refining X with such a residual only trades one side's
accuracy for the other's. Refined with an accurate residual, X reaches the correctly rounded inverse, accurate as a
left and as a right inverse.

Float32 and float16 residuals are formed in float64 (exact enough). Float64 residuals use error-free splitting
(Ozaki et al., "Error-free transformations of matrix multiplication", 2012): each factor is cut into slices whose
entries carry few enough bits that every slice-by-slice product is exact in float64, and the slices' products are
summed smallest-order last.
"""

from __future__ import annotations

import math

import torch

SLICES = 3
"""Slices per factor: two exact ones of ``beta`` bits and the remainder (whose products round at ``2**-2beta``)."""


def residual(a: torch.Tensor, b: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """``target - a @ b`` (``target`` the identity when None) accurate to far below ``eps * |a| |b|``, in the dtype
    of ``a`` (batched over leading axes)."""
    if target is None:
        target = torch.eye(a.shape[-2], b.shape[-1], dtype=a.dtype, device=a.device)
    if a.dtype != torch.float64:
        return (target.double() - a.double() @ b.double()).to(a.dtype)
    exact = _exact_products(a, b)
    if exact is None:  # magnitudes too close to the float64 range to split: the plain product is all there is
        return target - a @ b
    total = target - exact[0]
    for term in exact[1:]:
        total = total - term
    return total


def _exact_products(a: torch.Tensor, b: torch.Tensor) -> list[torch.Tensor] | None:
    """The products of the slices of ``a`` (cut per row) and ``b`` (cut per column), largest order first."""
    inner = a.shape[-1]
    beta = (53 - math.ceil(math.log2(max(inner, 2)))) // 2
    rows = _slices(a, -1, beta)
    cols = _slices(b, -2, beta)
    if rows is None or cols is None:
        return None
    order = sorted((i + j, i, j) for i in range(SLICES) for j in range(SLICES))
    return [rows[i] @ cols[j] for _, i, j in order]


def _slices(x: torch.Tensor, dim: int, beta: int) -> list[torch.Tensor] | None:
    """Cut ``x`` into ``SLICES`` parts that sum to it exactly, the first ones with at most ``beta`` significant bits
    relative to the largest magnitude along ``dim`` (rounding to a power-of-two grid by adding and subtracting it)."""
    parts, rest = [], x
    for _ in range(SLICES - 1):
        top = rest.abs().amax(dim=dim, keepdim=True)
        exponent = torch.where(top > 0, torch.ceil(torch.log2(top)), torch.zeros_like(top))
        shift = torch.ldexp(torch.ones_like(top), (exponent + (53 - beta)).to(torch.int32))
        if not bool(torch.isfinite(shift).all()):
            return None
        high = (rest + shift) - shift
        parts.append(high)
        rest = rest - high
    parts.append(rest)
    return parts
