"""Regression and classification: ``fit`` a linear, logistic or softmax model, or any ``nn.Module``, to data by
minimising a loss over the samples (least squares where the loss allows, L-BFGS otherwise, or minibatches)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from lossfit.engine import least_squares, minimize
from lossfit.engine.minibatch import minimize_minibatches
from lossfit.losses import robust_for
from lossfit.models.curves import as_data
from lossfit.models.statistics import Regression, flat_params, huber_scale, result_fields

DATA_LOSSES = ("mse", "mae", "huber", "bce", "cross_entropy")


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
    kind = _check_model(model)
    loss = _check_loss(loss, kind)
    x_t, y_t, w = _checked_data(x, y, weights, kind)
    predict, p0 = _model(model, kind, x_t, y_t)
    n = x_t.shape[0]
    sample_w = torch.ones(n, dtype=x_t.dtype) if w is None else w / w.mean()
    data = (x_t, y_t, sample_w)
    by_least_squares = solver in ("auto", "lm", "gauss-newton", "krylov")
    if isinstance(loss, str) and loss in ("mse", "mae", "huber") and kind in ("linear", "module") and by_least_squares:
        return _fit_least_squares(predict, p0, data, kind, loss, solver, f_scale, options)
    per_sample = _per_sample_loss(loss)

    def objective(p: Any, xx: torch.Tensor, yy: torch.Tensor, ww: torch.Tensor) -> torch.Tensor:
        return (per_sample(predict(p, xx), yy) * ww).mean()

    chosen = "lbfgs" if solver == "auto" else solver
    result = minimize(objective, p0, args=data, solver=chosen, **options)
    return Regression(**result_fields(result), dof=0)


def _checked_data(x: Any, y: Any, weights: Any, kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``x (N, k)`` (any ``(N, ...)`` for a module), ``y`` (class indices for softmax, 0/1 for logistic) and the
    sample weights, checked against each other."""
    x_t = as_data(x, "x")
    if x_t.ndim == 1:
        x_t = x_t.unsqueeze(1)
    if x_t.ndim != 2 and kind != "module":
        raise ValueError(f"`x` must be (N, features) for a {kind} model; got shape {tuple(x_t.shape)}")
    n = x_t.shape[0]
    if kind == "softmax":
        y_t = as_data(y, "y").reshape(-1)
        if bool((y_t != y_t.round()).any()) or bool((y_t < 0).any()):
            raise ValueError("`y` for a softmax model must be class indices 0, 1, ..., C-1")
        y_t = y_t.long()
    else:
        y_t = as_data(y, "y", x_t.dtype)
        if kind == "logistic":
            y_t = y_t.reshape(-1)
            if bool(((y_t != 0) & (y_t != 1)).any()):
                raise ValueError("`y` for a logistic model must be 0 or 1")
    if y_t.shape[0] != n:
        raise ValueError(f"`x` and `y` must have the same number of samples; got {n} and {y_t.shape[0]}")
    w = None
    if weights is not None:
        w = as_data(weights, "weights", x_t.dtype).reshape(-1)
        if w.shape[0] != n or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"`weights` must be {n} non-negative values, not all zero")
    return x_t, y_t, w


def _fit_least_squares(
    predict: Callable[..., torch.Tensor],
    p0: Any,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    kind: str,
    loss: str,
    solver: str,
    f_scale: float | None,
    options: dict[str, Any],
) -> Regression:
    """A linear model or a module under mse, mae or huber, as (robust) least squares on weighted residuals."""
    x_t, y_t, _ = data

    def residual(p: Any, xx: torch.Tensor, yy: torch.Tensor, ww: torch.Tensor) -> torch.Tensor:
        r = predict(p, xx) - yy
        return (r * ww.sqrt().reshape(-1, *([1] * (r.ndim - 1)))).reshape(-1)

    robust: dict[str, Any] = {}
    if loss == "huber":
        plain = least_squares(residual, p0, args=data, history=False, rank_check=False)
        delta = f_scale or huber_scale(residual(plain.params, *data))
        robust = {"loss": "huber", "f_scale": delta}
    elif loss == "mae":
        robust = {"loss": robust_for(loss), "f_scale": 1e-6 * float(y_t.abs().max().clamp_min(1e-12))}
    # A network's parameters are not identifiable (permuted units fit as well): its Jacobian is rank deficient by
    # construction, so only convergence is judged there.
    result = least_squares(residual, p0, args=data, solver=solver, rank_check=kind != "module", **robust, **options)
    dof = x_t.shape[0] * (y_t[0].numel() if y_t.ndim > 1 else 1) - flat_params(p0).numel()
    return Regression(**result_fields(result), dof=dof)


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
    xb = as_data(first[0], "x")
    xb = xb.unsqueeze(1) if xb.ndim == 1 else xb
    yb = as_data(first[1], "y")
    if kind == "softmax":  # the class count needs every label: one pass
        classes = max(int(as_data(batch[1], "y").max()) for batch in loader) + 1
        yb = torch.tensor([classes - 1])
    predict, p0 = _model(model, kind, xb, yb)
    per_sample = _per_sample_loss(loss, f_scale)

    def objective(p: Any, xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
        xx = xx.to(xb.dtype)
        xx = xx.unsqueeze(1) if xx.ndim == 1 else xx
        yy = yy.long().reshape(-1) if kind == "softmax" else yy.to(xb.dtype).reshape(-1) if kind == "logistic" else yy
        return per_sample(predict(p, xx), yy.to(xb.dtype) if kind != "softmax" else yy).mean()

    result = minimize_minibatches(objective, p0, loader, solver="adam" if solver == "auto" else solver, **options)
    return Regression(**result_fields(result), dof=0)


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
