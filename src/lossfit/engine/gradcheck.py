"""``check_gradient``: autograd against central finite differences, for users' own losses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lossfit.engine.problem import Objective, ParamSpec


@dataclass(frozen=True)
class GradientCheck:
    """The comparison of the autograd gradient with central differences (flattened parameters).

    Attributes:
        ok: True when every entry agrees within ``atol + rtol * |numeric|``.
        autograd: the gradient from autograd.
        numeric: the central-difference estimate.
        max_abs_error: the largest absolute difference.
        max_rel_error: the largest difference relative to ``max(|numeric|, |autograd|)``.
        worst: the flat index of the worst entry.
    """

    ok: bool
    autograd: torch.Tensor
    numeric: torch.Tensor
    max_abs_error: float
    max_rel_error: float
    worst: int


def check_gradient(
    loss_fn: Callable[..., torch.Tensor],
    params: Any,
    *,
    args: tuple = (),
    rtol: float = 1e-6,
    atol: float = 1e-9,
    step: float | None = None,
) -> GradientCheck:
    """Compare the gradient PyTorch computes for ``loss_fn`` with central finite differences, in float64.

    Args:
        loss_fn: ``loss_fn(params, *args) -> scalar``.
        params: a tensor or a dict of tensors (not modified); evaluated in float64.
        rtol, atol: the agreement required of each entry.
        step: the difference step; default ``eps**(1/3) * max(1, |x_i|)`` per entry.

    Example:
        >>> import torch, lossfit
        >>> check = lossfit.check_gradient(lambda w: ((w * 3.0 - 1.0) ** 2).mean(), torch.tensor([2.0]))
        >>> check.ok, round(float(check.autograd[0]), 6)
        (True, 30.0)
    """
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable; got {type(loss_fn).__name__}")
    spec = ParamSpec(params, None, False, torch.float64)
    x, aux = spec.initial()
    obj = Objective(loss_fn, spec, tuple(args), aux, kind="scalar")
    rows = torch.arange(1)
    _, g = obj.value_and_grad(x, rows)
    eps = torch.finfo(torch.float64).eps
    h = (eps ** (1 / 3)) * x[0].abs().clamp_min(1.0) if step is None else torch.full_like(x[0], float(step))
    n = x.shape[1]
    numeric = torch.empty(n, dtype=torch.float64)
    with torch.no_grad():
        for i in range(n):
            up, down = x.clone(), x.clone()
            up[0, i] += h[i]
            down[0, i] -= h[i]
            numeric[i] = (obj.value(up, rows)[0] - obj.value(down, rows)[0]) / (up[0, i] - down[0, i])
    auto = g[0]
    diff = (auto - numeric).abs()
    rel = diff / torch.maximum(auto.abs(), numeric.abs()).clamp_min(1e-300)
    ok = bool((diff <= atol + rtol * numeric.abs()).all())
    worst = int(diff.argmax())
    return GradientCheck(ok, auto, numeric, float(diff.max()), float(rel.max()), worst)
