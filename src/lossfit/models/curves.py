"""Curve fitting: ``curve_fit`` (nonlinear, weighted, robust least squares of ``y ~ f(x, p)``), for one data set, a
batch, or a list of sets of different sizes, with restarts when the answer looks like a local minimum."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from lossfit._validation import as_real_tensor
from lossfit.engine import FitResult, Status, least_squares
from lossfit.models.statistics import Regression, flat_params, result_fields, runs_z

RUNS_Z = 3.0
"""Residuals whose sign runs score below ``-RUNS_Z`` (:func:`~lossfit.models.runs_z`) suggest a missed feature."""
RESTARTS = 8
"""Perturbed starts tried by ``restarts="auto"``."""


def as_data(value: Any, argument: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """User data as a real tensor (named ``argument`` in errors), in ``dtype`` when given."""
    t = as_real_tensor(value, argument)
    return t if dtype is None else t.to(dtype)


def curve_fit(
    f: Callable[..., torch.Tensor],
    x: Any,
    y: Any,
    p0: Any,
    *,
    sigma: Any = None,
    bounds: tuple[Any, Any] | None = None,
    loss: str = "linear",
    f_scale: float = 1.0,
    batch: bool = False,
    restarts: int | str = "auto",
    **options: Any,
) -> Regression:
    """Fit ``y ~ f(x, p)`` by (robust, weighted) least squares; ``p`` is a tensor or a dict of tensors.

    Args:
        f: ``f(x, p) -> prediction`` with the shape of ``y`` (written for one data set when ``batch``).
        x, y: the data (any shapes ``f`` accepts); with ``batch=True`` both lead with the batch dimension, or are
            lists of data sets of different sizes (the points along each one's first dimension): each set is padded
            to the longest with copies of its last point, which count for nothing (``least_squares``'s ``mask``),
            and each fit stops on its own and keeps its own degrees of freedom (``dof`` per set).
        p0: the start.
        sigma: the standard deviation of each ``y`` (residuals are divided by it, as in scipy's ``curve_fit``); a
            list of one tensor per set with lists of data sets.
        bounds, loss, f_scale, **options: as for :func:`lossfit.least_squares`.
        restarts: ``"auto"``: when a fit fails, or succeeds but looks like a local minimum — its loss is above the best
            constant's, or its residuals in order of ``x`` change sign far less often than chance allows
            (:func:`runs_z` below -3: the model missed a feature of the data) — refit from 8 perturbed starts
            (log-normal, seeded) and from the start with each parameter, and all of them together, scaled by
            0.01, 0.1, 10 and 100 (those that give finite residuals inside the bounds), all in one batched call,
            and keep the lowest verified loss; an int always tries that many perturbed starts; ``0`` never. What
            happened is in ``extras["restarts"]``. Single problems with a tensor ``p0`` only.

    Returns:
        A :class:`Regression` with ``stderr``, ``covariance``, ``correlation`` and ``confidence_interval()``; the
        covariance is scaled by the residual variance ``2 * loss / dof`` (scipy's ``absolute_sigma=False``).

    Example:
        >>> import torch, lossfit
        >>> x = torch.linspace(0, 4, 30, dtype=torch.float64)
        >>> y = 3.0 * torch.exp(-0.7 * x) + 0.5
        >>> fit = lossfit.curve_fit(lambda x, p: p[0] * torch.exp(-p[1] * x) + p[2], x, y, torch.ones(3))
        >>> fit.success, [round(v, 9) for v in fit.params.tolist()]
        (True, [3.0, 0.7, 0.5])
    """
    if not callable(f):
        raise TypeError(f"`f` must be callable; got {type(f).__name__}")
    if isinstance(x, (list, tuple)) or isinstance(y, (list, tuple)):
        return _curve_fit_sets(f, x, y, p0, sigma, batch, bounds, loss, f_scale, options)
    x_t = as_data(x, "x")
    y_t = as_data(y, "y")
    w = None
    if sigma is not None:
        s = as_data(sigma, "sigma", y_t.dtype)
        if bool((s <= 0).any()):
            raise ValueError("`sigma` must be positive")
        w = torch.broadcast_to(1 / s, y_t.shape).clone()
    weight = torch.ones_like(y_t) if w is None else w

    residual = _curve_residual(f)
    result = least_squares(
        residual, p0, args=(x_t, y_t, weight), bounds=bounds, loss=loss, f_scale=f_scale, batch=batch, **options
    )
    if restarts and not batch and isinstance(p0, torch.Tensor) and result.residuals is not None:
        result = _restart(result, residual, p0, (x_t, y_t, weight), restarts, bounds, loss, f_scale, options)
    m = y_t[0].numel() if batch else y_t.numel()
    n = flat_params(p0 if not isinstance(p0, torch.Tensor) else p0[0] if batch else p0).numel()
    return Regression(**result_fields(result), dof=m - n)


def _curve_residual(f: Callable[..., torch.Tensor], where: str = "") -> Callable[..., torch.Tensor]:
    """``(f(x, p) - y) * w`` for one data set (without ``w``: unweighted), checking the prediction's shape."""

    def residual(p: Any, xx: torch.Tensor, yy: torch.Tensor, *ww: torch.Tensor) -> torch.Tensor:
        prediction = f(xx, p)
        if prediction.shape != yy.shape:
            raise ValueError(
                f"`f(x, p)` must have the shape of `y` {tuple(yy.shape)}{where}; got {tuple(prediction.shape)}"
            )
        return (prediction - yy) * ww[0] if ww else prediction - yy

    return residual


def _curve_fit_sets(
    f: Callable[..., torch.Tensor],
    xs: Any,
    ys: Any,
    p0: Any,
    sigma: Any,
    batch: bool,
    bounds: tuple[Any, Any] | None,
    loss: str,
    f_scale: float,
    options: dict[str, Any],
) -> Regression:
    """:func:`curve_fit` of a list of data sets of different sizes, in one batched call over the padded sets."""
    if not batch:
        raise ValueError("`x` and `y` as lists of data sets need `batch=True` (one fit per set)")
    if not (isinstance(xs, (list, tuple)) and isinstance(ys, (list, tuple))):
        raise TypeError("give `x` and `y` both as lists of data sets, or both as tensors")
    if len(xs) != len(ys) or not xs:
        raise ValueError(f"`x` and `y` must be lists of the same non-zero length; got {len(xs)} and {len(ys)}")
    if sigma is not None and not (isinstance(sigma, (list, tuple)) and len(sigma) == len(ys)):
        raise ValueError(f"with lists of data sets, `sigma` must be a list of {len(ys)} tensors, one per set")
    x_sets, y_sets = _data_sets(xs, "x"), _data_sets(ys, "y")
    for i, (xi, yi) in enumerate(zip(x_sets, y_sets, strict=True)):
        if xi.ndim == 0 or yi.ndim == 0 or xi.shape[0] != yi.shape[0] or yi.shape[0] == 0:
            raise ValueError(
                f"data set {i}: `x[{i}]` and `y[{i}]` must hold the same number (at least 1) of points along their "
                f"first dimension; got shapes {tuple(xi.shape)} and {tuple(yi.shape)}"
            )
        if xi.shape[1:] != x_sets[0].shape[1:] or yi.shape[1:] != y_sets[0].shape[1:]:
            raise ValueError(
                f"data set {i}: every set's points must have one shape (x {tuple(x_sets[0].shape[1:])}, y "
                f"{tuple(y_sets[0].shape[1:])}); got x {tuple(xi.shape[1:])}, y {tuple(yi.shape[1:])}"
            )
    lengths = torch.tensor([yi.shape[0] for yi in y_sets])
    longest = int(lengths.max())
    # Every set padded to the longest with copies of its last point (real data, so the model stays finite there;
    # the mask drops them): one gather from the concatenated sets.
    start = torch.cumsum(lengths, 0) - lengths
    index = start.unsqueeze(1) + torch.minimum(torch.arange(longest).unsqueeze(0), (lengths - 1).unsqueeze(1))
    x_t, y_t = torch.cat(x_sets)[index], torch.cat(y_sets)[index]
    w_t = None
    if sigma is not None:
        s_sets = [
            torch.broadcast_to(s_i, y_i.shape) for s_i, y_i in zip(_data_sets(sigma, "sigma"), y_sets, strict=True)
        ]
        s_t = torch.cat(s_sets)[index].to(y_t.dtype)
        if bool((s_t <= 0).any()):
            raise ValueError("`sigma` must be positive")
        w_t = 1 / s_t
    keep = torch.arange(longest).unsqueeze(0) < lengths.unsqueeze(1)
    mask = keep.reshape(*keep.shape, *([1] * (y_t.ndim - 2))).expand(y_t.shape)

    result = least_squares(
        _curve_residual(f, f" (the set padded to {longest} points)"),
        p0,
        args=(x_t, y_t) if w_t is None else (x_t, y_t, w_t),
        bounds=bounds,
        loss=loss,
        f_scale=f_scale,
        batch=True,
        mask=mask,
        **options,
    )
    n = flat_params(p0 if not isinstance(p0, torch.Tensor) else p0[0]).numel()
    return Regression(**result_fields(result), dof=result.extras["num_residuals"] - n)


def _data_sets(values: Any, argument: str) -> list[torch.Tensor]:
    """Each data set of a list as a real tensor, checked for finiteness all at once (one pass, not one per set)."""
    sets = [
        v.detach() if isinstance(v, torch.Tensor) and v.is_floating_point() else as_data(v, f"{argument}[{i}]")
        for i, v in enumerate(values)
    ]
    dtype = sets[0].dtype
    for i, t in enumerate(sets):
        if t.dtype != dtype:
            raise TypeError(
                f"`{argument}` must hold sets of one dtype; {argument}[0] is {dtype}, {argument}[{i}] {t.dtype}"
            )
    finite = torch.isfinite(torch.cat([t.reshape(-1) for t in sets]))
    if not bool(finite.all()):
        per_set = torch.split(finite, [t.numel() for t in sets])
        bad = next(i for i, part in enumerate(per_set) if not bool(part.all()))
        raise ValueError(f"`{argument}[{bad}]` must be finite; it holds NaN or infinity")
    return sets


def _robust_cost(r: torch.Tensor, loss: str, f_scale: float) -> float:
    """``0.5 * sum(f_scale**2 * rho((r / f_scale)**2))``, the engine's least-squares loss, for one residual row."""
    from lossfit.losses import rho_and_weight, robust_loss

    value, _ = rho_and_weight(robust_loss(loss), r, f_scale)
    return float(0.5 * value.sum())


def _restart(
    result: FitResult,
    residual: Callable[..., torch.Tensor],
    p0: torch.Tensor,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    restarts: int | str,
    bounds: tuple[Any, Any] | None,
    loss: str,
    f_scale: float,
    options: dict[str, Any],
) -> FitResult:
    """Refit from perturbed starts when the residuals suggest a local minimum; keep the lowest loss found."""
    x_t, y_t, weight = data
    r = result.residuals
    assert r is not None
    order = torch.argsort(x_t.reshape(-1)) if x_t.numel() == r.numel() else torch.arange(r.numel())
    z = runs_z(r.reshape(-1)[order])
    # A constant's loss, for the same loss function: a fit worse than a flat line is suspect too. The weighted mean
    # is the best constant for least squares; for a robust loss the weighted median's loss bounds the best one's.
    w2 = (weight * weight).reshape(-1)
    yy = y_t.reshape(-1)
    if loss == "linear":
        level = (w2 * yy).sum() / w2.sum()
    else:
        order = torch.argsort(yy)
        cumulative = torch.cumsum(w2[order], 0)
        level = yy[order][int(torch.searchsorted(cumulative, cumulative[-1] / 2).clamp(max=len(yy) - 1))]
    flat_residual = ((level - yy) * weight.reshape(-1)).unsqueeze(0)
    flat_loss = _robust_cost(flat_residual, loss, f_scale)
    worse_than_flat = bool(result.loss > flat_loss)
    failed = not bool(result.success) and result.status not in (Status.NONFINITE, Status.MAX_TIME)
    if restarts == "auto" and not (failed or z < -RUNS_Z or worse_than_flat):
        return result
    count = RESTARTS if restarts == "auto" else int(restarts)
    generator = torch.Generator().manual_seed(0)
    spread = torch.tensor([0.1, 0.3, 1.0], dtype=p0.dtype).repeat(count)[:count]
    noise = torch.randn((count, *p0.shape), generator=generator, dtype=p0.dtype).to(p0.device)
    starts = p0 * torch.exp(spread.to(p0.device).reshape(-1, *([1] * p0.dim())) * noise)
    if restarts == "auto":
        # And each parameter alone moved by one and two decades either way: a start whose amplitude or rate is off
        # by orders of magnitude (a flat start against data in the hundreds) runs a rate off to a plateau, and no
        # small perturbation of it finds the way back.
        flat = p0.reshape(-1)
        decades = torch.tensor([0.01, 0.1, 10.0, 100.0], dtype=p0.dtype, device=p0.device)
        scan = flat.repeat(flat.numel() * decades.numel(), 1)
        index = torch.arange(flat.numel(), device=p0.device).repeat_interleave(decades.numel())
        scan[torch.arange(scan.shape[0], device=p0.device), index] *= decades.repeat(flat.numel())
        # ... and all of them together (a badly scaled start, every parameter orders of magnitude off).
        scan = torch.cat([scan, flat * decades.unsqueeze(1)]).reshape(-1, *p0.shape)
        usable = [i for i in range(scan.shape[0]) if _usable_start(residual, scan[i], data, bounds)]
        starts = torch.cat([starts, scan[usable]])
        count = starts.shape[0]
    expand = [t.unsqueeze(0).expand(count, *t.shape) for t in (x_t, y_t, weight)]
    tried = least_squares(
        residual, starts, args=tuple(expand), bounds=bounds, loss=loss, f_scale=f_scale, batch=True, **options
    )
    ok = torch.tensor([status.success for status in tried.statuses], device=tried.loss.device)
    losses = torch.where(ok, tried.loss, torch.inf)
    best = int(torch.argmin(losses))
    # A lower loss wins; after a failure, a verified minimum at (about) the same loss wins too.
    slack = 1 + 1e-6 if failed else 1 - 1e-9
    improved = bool(losses[best] < result.loss * slack)
    note = {
        "tried": count,
        "runs_z": z,
        "improved": improved,
        "reason": "requested"
        if restarts != "auto"
        else f"the fit failed ({result.status.name})"
        if failed
        else f"the fit is worse than a constant (loss {float(result.loss):.6g} > {flat_loss:.6g})"
        if worse_than_flat
        else f"residuals in order of x form too few sign runs (z = {z:.1f} < -{RUNS_Z:g})",
    }
    if not improved:
        return dataclasses.replace(result, extras={**result.extras, "restarts": note})
    single = least_squares(residual, starts[best], args=data, bounds=bounds, loss=loss, f_scale=f_scale, **options)
    return dataclasses.replace(single, extras={**single.extras, "restarts": note})


def _usable_start(
    residual: Callable[..., torch.Tensor], start: torch.Tensor, data: tuple, bounds: tuple[Any, Any] | None
) -> bool:
    """Whether a start lies strictly inside the bounds and gives finite residuals."""
    if bounds is not None:
        lower, upper = (torch.as_tensor(b, dtype=start.dtype) for b in bounds)
        if not bool(((start > lower) & (start < upper)).all()):
            return False
    with torch.no_grad():
        return bool(torch.isfinite(residual(start, *data)).all())
