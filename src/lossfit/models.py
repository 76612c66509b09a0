"""Fitting models and curves to data: ``curve_fit`` (nonlinear regression) and ``fit`` (regression, classification,
any ``nn.Module``).

Both state a loss over data, solve it with the engine and return a :class:`~lossfit.FitResult` subclass with the
statistics that apply: standard errors, covariance, correlations and confidence intervals for least squares.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from lossfit._validation import as_real_tensor
from lossfit.engine import FitResult, Status, least_squares, minimize
from lossfit.engine.minibatch import minimize_minibatches
from lossfit.losses import MAD_TO_SIGMA, TUNING, robust_for
from lossfit.stats import t_quantile

DATA_LOSSES = ("mse", "mae", "huber", "bce", "cross_entropy")


@dataclass(frozen=True)
class Regression(FitResult):
    """A fit with its statistics. ``stderr``, ``covariance`` come from the FitResult (least-squares fits only).

    Attributes:
        dof: degrees of freedom, ``m - n`` (residuals minus parameters).
        names: parameter names, for tables.
    """

    dof: int | torch.Tensor = 0
    names: tuple[str, ...] = ()

    @property
    def correlation(self) -> torch.Tensor | None:
        """Correlations of the parameters (from the covariance)."""
        if self.covariance is None:
            return None
        sd = torch.diagonal(self.covariance, dim1=-2, dim2=-1).clamp_min(0).sqrt()
        return self.covariance / (sd.unsqueeze(-1) * sd.unsqueeze(-2)).clamp_min(1e-300)

    def confidence_interval(self, level: float = 0.95) -> torch.Tensor:
        """``(n, 2)`` lower and upper bounds of each flat parameter, from Student's t with ``dof`` degrees of
        freedom."""
        if not 0 < level < 1:
            raise ValueError(f"`level` must be between 0 and 1; got {level}")
        dof = self.dof if isinstance(self.dof, torch.Tensor) else torch.tensor([self.dof])
        if self.stderr is None or bool((dof <= 0).any()):
            raise ValueError("no confidence intervals: the fit has no covariance (or no degrees of freedom)")
        stderr = self.stderr
        q: torch.Tensor | float
        if isinstance(self.dof, torch.Tensor):  # a batch of data sets of different sizes: a quantile each
            quantiles = {d: t_quantile(0.5 + level / 2, d) for d in set(self.dof.tolist())}
            q = torch.tensor([quantiles[d] for d in self.dof.tolist()], dtype=stderr.dtype).unsqueeze(-1)
        else:
            q = t_quantile(0.5 + level / 2, self.dof)
        centre = _flat(self.params)
        return torch.stack([centre - q * stderr, centre + q * stderr], dim=-1)


def _flat(params: Any) -> torch.Tensor:
    if isinstance(params, dict):
        return torch.cat([v.reshape(-1) for v in params.values()])
    return params.reshape(-1) if params.ndim <= 1 else params.reshape(params.shape[0], -1)


def _tensor(value: Any, argument: str, dtype: torch.dtype | None = None) -> torch.Tensor:
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
    x_t = _tensor(x, "x")
    y_t = _tensor(y, "y")
    w = None
    if sigma is not None:
        s = _tensor(sigma, "sigma", y_t.dtype)
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
    n = _flat(p0 if not isinstance(p0, torch.Tensor) else p0[0] if batch else p0).numel()
    return Regression(**_fields(result), dof=m - n)


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
    n = _flat(p0 if not isinstance(p0, torch.Tensor) else p0[0]).numel()
    return Regression(**_fields(result), dof=result.extras["num_residuals"] - n)


def _data_sets(values: Any, argument: str) -> list[torch.Tensor]:
    """Each data set of a list as a real tensor, checked for finiteness all at once (one pass, not one per set)."""
    sets = [
        v.detach() if isinstance(v, torch.Tensor) and v.is_floating_point() else _tensor(v, f"{argument}[{i}]")
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


def runs_z(residuals: torch.Tensor) -> float:
    """Wald-Wolfowitz runs test on the signs of ``residuals`` in their order: the z score of the number of runs.

    Residuals of a good fit change sign at random (z near 0); a fit that misses a feature of the data leaves long runs
    of one sign (z strongly negative). Returns 0 when the test has nothing to say (under 20 values, or one sign only).
    """
    signs = residuals.reshape(-1) > 0
    m = signs.numel()
    n1 = int(signs.sum())
    n2 = m - n1
    if m < 20 or n1 == 0 or n2 == 0:
        return 0.0
    runs = 1 + int((signs[1:] != signs[:-1]).sum())
    mean = 2 * n1 * n2 / m + 1
    var = (mean - 1) * (mean - 2) / (m - 1)
    return (runs - mean) / var**0.5 if var > 0 else 0.0


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


RUNS_Z = 3.0
RESTARTS = 8


def _fields(result: FitResult) -> dict[str, Any]:
    return {f.name: getattr(result, f.name) for f in dataclasses.fields(FitResult)}


def _huber_scale(r: torch.Tensor) -> float:
    """1.345 robust standard deviations (median absolute deviation): Huber's 95%-efficiency threshold."""
    mad = (r - r.median()).abs().median()
    return float(TUNING["huber"] * MAD_TO_SIGMA * mad.clamp_min(1e-12))


def fit(
    model: str | nn.Module,
    x: Any,
    y: Any = None,
    loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    *,
    weights: Any = None,
    solver: str = "auto",
    f_scale: float | None = None,
    seed: int = 0,
    **options: Any,
) -> Regression:
    """Fit a model to data ``x (N, k)``, ``y (N,)`` (or ``(N, j)``) by minimising a loss over the samples. An
    ``nn.Module`` takes any ``x (N, ...)`` it accepts (a batch of images ``(N, C, H, W)`` for a Conv2d, say).

    Args:
        model: ``"linear"`` (``y = x W + b``), ``"logistic"`` (binary, ``P(y=1) = sigmoid(x w + b)``),
            ``"softmax"`` (classes ``0 .. C-1``), or any ``nn.Module`` (its parameters are fitted; it is not modified:
            the fitted values come back in ``params``, keyed by parameter name).
        loss: ``"mse"``, ``"mae"`` (absolute error, smoothed at 1e-6 of the data scale), ``"huber"``, ``"bce"``,
            ``"cross_entropy"``, or ``callable(prediction, y) -> per-sample losses``. Default: ``mse`` for linear,
            ``bce`` for logistic and ``cross_entropy`` for softmax.
        weights: a weight per sample.
        solver: ``"auto"``: least squares (Levenberg-Marquardt) for mse, mae and huber on a linear model,
            L-BFGS otherwise; or any engine solver.
        f_scale: Huber's threshold (default 1.345 robust standard deviations of the least-squares residuals).
        seed: seeds an ``nn.Module``'s start only through the module's own initialisation (not used otherwise).
        x may also be a ``torch.utils.data.DataLoader`` yielding ``(x, y)`` minibatches (``y`` and ``weights`` then
            None), for data that does not fit one step: a first-order solver (``"adam"`` for ``"auto"``; ``lr=``,
            ``epochs=``, ``ftol=``, ``patience=`` as for :func:`lossfit.engine.minibatch.minimize_minibatches`) takes
            one step per minibatch, and convergence is judged on the whole-data loss once per epoch.

    Returns:
        A :class:`Regression`; for least-squares fits with ``stderr``, ``covariance`` and confidence intervals.
    """
    del seed
    if isinstance(x, DataLoader):
        return _fit_minibatches(model, x, y, loss, weights, solver, f_scale, options)
    if y is None:
        raise ValueError("`y` is required unless `x` is a DataLoader of (x, y) minibatches")
    x_t = _tensor(x, "x")
    kind = _check_model(model)
    if x_t.ndim == 1:
        x_t = x_t.unsqueeze(1)
    if x_t.ndim != 2 and kind != "module":
        raise ValueError(f"`x` must be (N, features) for a {kind} model; got shape {tuple(x_t.shape)}")
    n = x_t.shape[0]
    loss = _check_loss(loss, kind)
    if kind == "softmax":
        y_t = _tensor(y, "y").reshape(-1)
        if bool((y_t != y_t.round()).any()) or bool((y_t < 0).any()):
            raise ValueError("`y` for a softmax model must be class indices 0, 1, ..., C-1")
        y_t = y_t.long()
    else:
        y_t = _tensor(y, "y", x_t.dtype)
        if kind == "logistic":
            y_t = y_t.reshape(-1)
            if bool(((y_t != 0) & (y_t != 1)).any()):
                raise ValueError("`y` for a logistic model must be 0 or 1")
    if y_t.shape[0] != n:
        raise ValueError(f"`x` and `y` must have the same number of samples; got {n} and {y_t.shape[0]}")
    w = None
    if weights is not None:
        w = _tensor(weights, "weights", x_t.dtype).reshape(-1)
        if w.shape[0] != n or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"`weights` must be {n} non-negative values, not all zero")

    predict, p0 = _model(model, kind, x_t, y_t)
    per_sample = _per_sample_loss(loss)
    sample_w = torch.ones(n, dtype=x_t.dtype) if w is None else w / w.mean()

    least_squares_loss = isinstance(loss, str) and loss in ("mse", "mae", "huber") and kind in ("linear", "module")
    if least_squares_loss and solver in ("auto", "lm", "gauss-newton", "krylov"):

        def residual(p: Any, xx: torch.Tensor, yy: torch.Tensor, ww: torch.Tensor) -> torch.Tensor:
            r = predict(p, xx) - yy
            return (r * ww.sqrt().reshape(-1, *([1] * (r.ndim - 1)))).reshape(-1)

        robust: dict[str, Any] = {}
        if loss == "huber":
            plain = least_squares(residual, p0, args=(x_t, y_t, sample_w), history=False, rank_check=False)
            delta = f_scale or _huber_scale(residual(plain.params, x_t, y_t, sample_w))
            robust = {"loss": "huber", "f_scale": delta}
        elif loss == "mae":
            robust = {"loss": robust_for(loss), "f_scale": 1e-6 * float(y_t.abs().max().clamp_min(1e-12))}
        # A network's parameters are not identifiable (permuted units fit as well): its Jacobian is rank deficient
        # by construction, so only convergence is judged there.
        result = least_squares(
            residual, p0, args=(x_t, y_t, sample_w), solver=solver, rank_check=kind != "module", **robust, **options
        )
        dof = n * (y_t[0].numel() if y_t.ndim > 1 else 1) - _flat(p0).numel()
        return Regression(**_fields(result), dof=dof)

    def objective(p: Any, xx: torch.Tensor, yy: torch.Tensor, ww: torch.Tensor) -> torch.Tensor:
        return (per_sample(predict(p, xx), yy) * ww).mean()

    chosen = "lbfgs" if solver == "auto" else solver
    result = minimize(objective, p0, args=(x_t, y_t, sample_w), solver=chosen, **options)
    return Regression(**_fields(result), dof=0)


def _check_model(model: Any) -> str:
    if isinstance(model, str) and model not in ("linear", "logistic", "softmax"):
        raise ValueError(f"`model` must be 'linear', 'logistic', 'softmax' or an nn.Module; got {model!r}")
    if not isinstance(model, (str, nn.Module)):
        raise TypeError(f"`model` must be a name or an nn.Module; got {type(model).__name__}")
    return model if isinstance(model, str) else "module"


def _check_loss(loss: Any, kind: str) -> Any:
    loss = loss or {"linear": "mse", "logistic": "bce", "softmax": "cross_entropy", "module": "mse"}[kind]
    if isinstance(loss, str) and loss not in DATA_LOSSES:
        raise ValueError(f"`loss` must be one of {', '.join(repr(v) for v in DATA_LOSSES)} or a callable; got {loss!r}")
    return loss


def _fit_minibatches(
    model: str | nn.Module,
    loader: DataLoader,
    y: Any,
    loss: Any,
    weights: Any,
    solver: str,
    f_scale: float | None,
    options: dict[str, Any],
) -> Regression:
    """``fit`` over a DataLoader of ``(x, y)`` minibatches: a first-order solver, one step per minibatch."""
    if y is not None or weights is not None:
        raise ValueError("with a DataLoader as `x`, `y` and `weights` must be None: the loader yields (x, y) pairs")
    kind = _check_model(model)
    loss = _check_loss(loss, kind)
    if loss == "huber" and f_scale is None:
        raise ValueError("`loss='huber'` over minibatches needs `f_scale` (the threshold cannot be estimated first)")
    first = next(iter(loader), None)
    if not (isinstance(first, (tuple, list)) and len(first) == 2):
        raise ValueError("the DataLoader given as `x` must yield (x, y) pairs")
    xb = _tensor(first[0], "x")
    xb = xb.unsqueeze(1) if xb.ndim == 1 else xb
    yb = _tensor(first[1], "y")
    if kind == "softmax":  # the class count needs every label: one pass
        classes = max(int(_tensor(batch[1], "y").max()) for batch in loader) + 1
        yb = torch.tensor([classes - 1])
    predict, p0 = _model(model, kind, xb, yb)
    per_sample = _per_sample_loss(loss, f_scale)

    def objective(p: Any, xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
        xx = xx.to(xb.dtype)
        xx = xx.unsqueeze(1) if xx.ndim == 1 else xx
        yy = yy.long().reshape(-1) if kind == "softmax" else yy.to(xb.dtype).reshape(-1) if kind == "logistic" else yy
        return per_sample(predict(p, xx), yy.to(xb.dtype) if kind != "softmax" else yy).mean()

    result = minimize_minibatches(objective, p0, loader, solver="adam" if solver == "auto" else solver, **options)
    return Regression(**_fields(result), dof=0)


def _model(
    model: str | nn.Module, kind: str, x: torch.Tensor, y: torch.Tensor
) -> tuple[Callable[..., torch.Tensor], Any]:
    k = x.shape[1]
    if kind == "linear":
        outputs = y.shape[1] if y.ndim > 1 else 0
        shape = (k, outputs) if outputs else (k,)
        p0 = {"weight": torch.zeros(shape, dtype=x.dtype), "bias": torch.zeros(shape[1:], dtype=x.dtype)}
        return (lambda p, xx: xx @ p["weight"] + p["bias"]), p0
    if kind == "logistic":
        p0 = {"weight": torch.zeros(k, dtype=x.dtype), "bias": torch.zeros((), dtype=x.dtype)}
        return (lambda p, xx: xx @ p["weight"] + p["bias"]), p0
    if kind == "softmax":
        classes = int(y.max()) + 1
        p0 = {"weight": torch.zeros(k, classes, dtype=x.dtype), "bias": torch.zeros(classes, dtype=x.dtype)}
        return (lambda p, xx: xx @ p["weight"] + p["bias"]), p0
    assert isinstance(model, nn.Module)
    start = {name: value.detach().clone().to(x.dtype) for name, value in model.named_parameters()}
    if not start:
        raise ValueError("`model` has no parameters to fit")

    def predict(p: dict[str, torch.Tensor], xx: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model, p, (xx,))
        return out

    return predict, start


def _per_sample_loss(loss: Any, delta: float | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if callable(loss):
        return loss

    def reduce(values: torch.Tensor) -> torch.Tensor:
        return values.reshape(values.shape[0], -1).mean(dim=1) if values.ndim > 1 else values

    if loss == "mse":
        return lambda p, y: reduce((p - y) ** 2)
    if loss == "mae":
        return lambda p, y: reduce((p - y).abs())
    if loss == "huber":
        return lambda p, y: reduce(torch.nn.functional.huber_loss(p, y, reduction="none", delta=delta or 1.0))
    if loss == "bce":
        return lambda p, y: torch.nn.functional.binary_cross_entropy_with_logits(p.reshape(-1), y, reduction="none")
    return lambda p, y: torch.nn.functional.cross_entropy(p, y, reduction="none")
