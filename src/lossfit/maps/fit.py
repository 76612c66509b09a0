"""``fit_map``: a signal model fitted at every voxel of a series, each voxel with its own status and standard errors.

Convention:
    - The acquisition axis is a :class:`~lossfit.registration.series.Series`'s time axis (one volume per echo,
      inversion time or b-value), or the last axis of a tensor ``(..., m)``.
    - Maps have the series' grid (an :class:`~lossfit.registration.image.Image` per parameter) or the tensor's
      leading shape. Voxels outside the mask are NaN with status 0 ("not fitted"); a fitted voxel always has a
      status, and a NaN in a fitted voxel's map comes only with the status ``NONFINITE``.
    - Standard errors: least squares as scipy's ``curve_fit`` (``absolute_sigma=False``): ``sqrt(diag((J^T J)^-1)
      * 2 cost / (m - k))``; the Rician likelihood from its Gaussian Fisher information ``J^T J / sigma^2``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from lossfit.engine.result import Status
from lossfit.engine.solvers.voxelwise import VoxelFit, cholesky_solve, gradient_cosine, levenberg_marquardt
from lossfit.losses import ROBUST
from lossfit.maps.models import MapModel, resolve
from lossfit.maps.objective import LeastSquares, Objective, Projected, Rician
from lossfit.maps.result import NOT_FITTED, MapResult, converged
from lossfit.registration.image import Image
from lossfit.registration.series import Series

ZERO_FLOOR = 100.0
"""A least-squares voxel whose residual norm is within this many ``eps * ||y||`` of zero fits its data exactly (to
rounding): it stops as ``CONVERGED_ZERO``, and the gradient test (meaningless there) is not applied."""
VERIFY_GTOL = 1e-4
"""A voxel reported converged must pass MINPACK's gradient test at this tolerance at its answer, or have no
meaningful decrease left (:data:`VERIFY_FIT`), else it is ``SUSPECT_GRADIENT``: no solver stop is taken on trust."""
VERIFY_FIT = 1e-8
"""The other way to pass the check, for fits close to exact (where the residual lies in the Jacobian's range and
the cosine test cannot pass): a full Gauss-Newton step from the answer would lower the residual norm by less than
this fraction of the signal's norm."""
BLOCK = 1 << 16
"""Voxels per solver call: small enough that a block's working tensors stay in the CPU's cache (elementwise work on
2**16 voxels ran 10x faster per voxel than on 2**20 on the 2-core test machine), large enough to amortise dispatch."""


def fit_map(
    series: Series | torch.Tensor,
    x: Any,
    model: Any,
    start: Any = None,
    *,
    mask: Any = None,
    loss: str = "linear",
    f_scale: float = 1.0,
    noise: str | None = None,
    sigma: float | None = None,
    background: Any = None,
    bounds: tuple[Sequence[float], Sequence[float]] | None = None,
    variable: str = "x",
    dtype: torch.dtype = torch.float64,
    max_steps: int = 100,
    ftol: float = 1e-10,
    xtol: float = 1e-10,
    gtol: float = 1e-10,
    progress: Callable[[int, int], None] | None = None,
) -> MapResult:
    """Fit ``model`` to the signal of every voxel.

    Args:
        series: a :class:`Series` (volume ``t`` acquired at ``x[t]``) or a tensor ``(..., m)``.
        x: the ``m`` acquisition values (echo or inversion times, b-values), finite; increasing for ``"t1-ir"``.
        model: ``"t2"`` (``S0 exp(-x / T2)``, also ``"t2star"``), ``"t2-offset"`` (``+ C``), ``"t1-ir"``
            (``|A - B exp(-x / T1)|`` on magnitude data, the polarity restored by fitting both sign patterns around
            the signal's null and keeping the better, as Barral et al. 2010 do), ``"ivim"`` (``S0 (f exp(-b D*) +
            (1 - f) exp(-b D))`` with ``D < 0.004 < D*`` mm^2/s), a formula in ``variable`` such as
            ``"a*exp(-x/b)+c"``, or a callable ``f(x (m,), p (V, k)) -> (V, m)``.
        start: None for a built-in's closed-form start (the weighted log-linear fit where it applies); else a dict
            name -> number, ``(V,)``-shaped tensor or Image, or a tensor ``(k,)`` or ``(..., k)`` in parameter order.
        mask: voxels to fit: a bool tensor of the spatial shape, or an Image (one on another grid is resampled onto
            the series' grid, nearest neighbour). None fits every voxel.
        loss: least-squares loss (``"linear"``, ``"soft_l1"``, ``"huber"``, ``"cauchy"``, ``"arctan"``) with
            ``f_scale``; ignored with ``noise="rician"``.
        noise: None (least squares) or ``"rician"``: the likelihood of magnitude data with noise ``sigma`` per
            channel; when ``sigma`` is None it is estimated from ``background`` (a mask as for ``mask``), or from
            the voxels outside ``mask``, as ``sqrt(median(y^2) / (2 ln 2))`` (the Rayleigh median).
        bounds: ``(lower, upper)`` of ``k`` values each; a built-in's own when None.
        variable: the acquisition variable's name in a formula.
        dtype: the arithmetic (float64 by default, the precision the verification assumes).
        max_steps, ftol, xtol, gtol: per-voxel stopping rules (MINPACK's tests).
        progress: called as ``progress(done, total)`` (voxels) after each block, for a progress bar.

    Returns:
        A :class:`MapResult`: ``maps``, ``stderr``, ``status``, ``rms``, the status counts and ``save(folder)``.

    Raises:
        TypeError, ValueError: bad input, naming the argument (before any fitting).
    """
    started = time.perf_counter()
    _check_options(dtype, max_steps, ftol, xtol, gtol)
    flat, spatial, grid = _signals(series)  # (m, N): voxels last, as the solver works
    acq = _acquisition(x, flat.shape[0], dtype)
    spec = resolve(model, variable)
    if spec.increasing_x and not bool((acq[1:] > acq[:-1]).all()):
        raise ValueError(f"`x` must be increasing for the {spec.name!r} model; got {acq.tolist()}")
    selected = voxel_mask(mask, spatial, grid, "mask")
    index = torch.nonzero(selected.reshape(-1)).reshape(-1) if selected is not None else None
    y = (flat if index is None else flat[:, index]).to(dtype).contiguous()
    names, p0 = _start(spec, start, y.shape[1], index, spatial, dtype)
    lower, upper = _bounds(spec, bounds, len(names), dtype)
    if spec.lower is None and not names:
        raise ValueError("`start` must name the parameters of a callable model (a dict name -> value)")
    objective, extra, noise_sigma = _objective(
        spec, acq[:, None], loss, f_scale, noise, sigma, background, selected, flat, spatial, grid, y, dtype
    )
    options = {"max_steps": max_steps, "ftol": ftol, "xtol": xtol, "gtol": gtol}
    finite = torch.isfinite(y).all(dim=0)
    if p0 is not None:
        finite &= torch.isfinite(p0).all(dim=0)
    fit = _solve(spec, objective, acq[:, None], y, p0, len(names), extra, lower, upper, finite, options, progress)
    stderr, status, rms = _finish(spec, objective, acq[:, None], y, fit, extra, lower, upper, noise == "rician")
    return MapResult.assemble(
        model=spec.name,
        parameters=names,
        values=fit.params.T,
        stderr=stderr.T,
        status=status,
        rms=rms,
        index=index,
        spatial=spatial,
        grid=grid,
        sigma=noise_sigma,
        steps=fit.steps,
        seconds=time.perf_counter() - started,
        bounds=(lower, upper),
    )


# -- inputs -----------------------------------------------------------------------------------------------------------


def _check_options(dtype: Any, max_steps: Any, ftol: Any, xtol: Any, gtol: Any) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"`dtype` must be a floating torch dtype; got {dtype!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a whole number >= 1; got {max_steps!r}")
    for name, value in (("ftol", ftol), ("xtol", xtol), ("gtol", gtol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
            raise ValueError(f"`{name}` must be a finite number >= 0; got {value!r}")


def _signals(series: Any) -> tuple[torch.Tensor, tuple[int, ...], Image | None]:
    """The signals ``(m, N)`` (one column per voxel of the flattened grid), the spatial shape and the grid (None
    for a tensor)."""
    if isinstance(series, Series):
        data = series.data
        return data.reshape(data.shape[0], -1), tuple(data.shape[1:]), series.grid
    if isinstance(series, torch.Tensor):
        if series.is_complex() or series.dtype == torch.bool:
            raise TypeError(f"`series` must hold real numbers; got {series.dtype}")
        if series.ndim < 1 or series.shape[-1] < 1 or series.numel() == 0:
            raise ValueError(f"`series` must be (..., m) with m >= 1 acquisitions; got shape {tuple(series.shape)}")
        spatial = tuple(series.shape[:-1]) or (1,)
        return series.reshape(-1, series.shape[-1]).T, spatial, None
    raise TypeError(
        f"`series` must be a Series (lossfit.load_series) or a tensor (..., m); got {type(series).__name__}"
    )


def _acquisition(x: Any, m: int, dtype: torch.dtype) -> torch.Tensor:
    try:
        acq = torch.as_tensor(x, dtype=dtype).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"`x` must be a sequence of numbers; got {type(x).__name__}") from None
    if acq.numel() != m:
        raise ValueError(f"`x` must hold one value per acquisition: the series has {m}; got {acq.numel()}")
    if not bool(torch.isfinite(acq).all()):
        raise ValueError(f"`x` must be finite; got {acq.tolist()}")
    return acq


def voxel_mask(value: Any, spatial: tuple[int, ...], grid: Image | None, argument: str) -> torch.Tensor | None:
    """A bool tensor of the spatial shape, from a tensor or an Image (resampled onto ``grid`` when on another)."""
    if value is None:
        return None
    if isinstance(value, Image):
        if grid is not None and not _same_grid(value, grid):
            from lossfit.registration.resample import resample

            onto = resample(value.to(torch.float32), grid.to(torch.float32), interpolation="nearest")
            assert isinstance(onto, Image)
            value = onto
        data = value.data
    elif isinstance(value, torch.Tensor):
        data = value
    else:
        raise TypeError(f"`{argument}` must be a bool tensor or an Image; got {type(value).__name__}")
    if tuple(data.shape) != tuple(spatial):
        raise ValueError(f"`{argument}` must have the series' spatial shape {tuple(spatial)}; got {tuple(data.shape)}")
    selected = data != 0 if data.dtype != torch.bool else data
    if not bool(selected.any()):
        raise ValueError(f"`{argument}` selects no voxel (on the series' grid)")
    return selected


def _same_grid(a: Image, b: Image) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.affine.double(), b.affine.double(), atol=1e-4, rtol=0))


def _start(
    spec: MapModel,
    start: Any,
    v: int,
    index: torch.Tensor | None,
    spatial: tuple[int, ...],
    dtype: torch.dtype,
) -> tuple[tuple[str, ...], torch.Tensor | None]:
    """Parameter names and the start ``(k, V)``; None for a built-in's closed-form start (computed block by block
    in :func:`_solve`, per sign pattern for a magnitude model)."""
    names = spec.parameters
    if start is None:
        if spec.start is None:
            raise ValueError(f"`start` is needed for the model {spec.name!r} (a dict name -> value, or a tensor)")
        return names, None
    if isinstance(start, dict):
        if not names:
            names = tuple(start)
        unknown = [n for n in start if n not in names]
        missing = [n for n in names if n not in start]
        if unknown or missing:
            raise ValueError(
                f"`start` must give a value for each parameter {', '.join(names)}; "
                + (f"unknown: {', '.join(unknown)}" if unknown else f"missing: {', '.join(missing)}")
            )
        columns = [_per_voxel(start[n], v, index, spatial, dtype, f"start[{n!r}]") for n in names]
        return names, torch.stack(columns)
    t = torch.as_tensor(start.data if isinstance(start, Image) else start, dtype=dtype)
    if not names:
        names = tuple(f"p{j}" for j in range(t.shape[-1]))
    k = len(names)
    if t.shape == (k,):
        return names, t[:, None].expand(k, v).clone()
    if tuple(t.shape) == (*spatial, k):
        flat = t.reshape(-1, k)
        return names, (flat if index is None else flat[index]).T.contiguous()
    raise ValueError(f"`start` must have shape ({k},) or {(*spatial, k)}; got {tuple(t.shape)}")


def _per_voxel(
    value: Any, v: int, index: torch.Tensor | None, spatial: tuple[int, ...], dtype: torch.dtype, argument: str
) -> torch.Tensor:
    t = torch.as_tensor(value.data if isinstance(value, Image) else value, dtype=dtype)
    if t.ndim == 0:
        return t.expand(v).clone()
    if tuple(t.shape) == tuple(spatial):
        flat = t.reshape(-1)
        return flat if index is None else flat[index]
    raise ValueError(f"`{argument}` must be a number or have the spatial shape {tuple(spatial)}; got {tuple(t.shape)}")


def _bounds(spec: MapModel, bounds: Any, k: int, dtype: torch.dtype) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if bounds is None:
        if spec.lower is None:
            return None, None
        return torch.tensor(spec.lower, dtype=dtype), torch.tensor(spec.upper, dtype=dtype)
    try:
        lower, upper = (torch.as_tensor(b, dtype=dtype).reshape(-1) for b in bounds)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError("`bounds` must be (lower, upper), each a sequence of numbers") from None
    if lower.numel() != k or upper.numel() != k:
        raise ValueError(f"`bounds` must give {k} lower and {k} upper values; got {lower.numel()} and {upper.numel()}")
    if not bool((lower < upper).all()):
        raise ValueError(
            f"`bounds` must have lower < upper for every parameter; got {lower.tolist()}, {upper.tolist()}"
        )
    return lower, upper


def _objective(
    spec: MapModel,
    x: torch.Tensor,
    loss: str,
    f_scale: float,
    noise: str | None,
    sigma: float | None,
    background: Any,
    selected: torch.Tensor | None,
    flat: torch.Tensor,
    spatial: tuple[int, ...],
    grid: Image | None,
    y: torch.Tensor,
    dtype: torch.dtype,
) -> tuple[Objective, tuple[torch.Tensor, ...], float | None]:
    """The objective, the extra per-voxel data it takes after ``y``, and the noise level used (Rician only)."""
    if noise is None or noise == "gaussian":
        if loss not in ROBUST:
            raise ValueError(f"`loss` must be one of {', '.join(repr(n) for n in ROBUST)}; got {loss!r}")
        if not (isinstance(f_scale, (int, float)) and math.isfinite(f_scale) and f_scale > 0):
            raise ValueError(f"`f_scale` must be a finite positive number; got {f_scale!r}")
        return LeastSquares(spec, x, loss, float(f_scale)), (), None
    if noise != "rician":
        raise ValueError(f"`noise` must be None, 'gaussian' or 'rician'; got {noise!r}")
    if sigma is None:
        sigma = estimate_sigma(flat, _background(background, selected, spatial, grid))
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"`sigma` must be a finite positive number; got {sigma!r}")
    return Rician(spec, x), (torch.full((y.shape[1],), float(sigma), dtype=dtype),), float(sigma)


def _background(
    background: Any, selected: torch.Tensor | None, spatial: tuple[int, ...], grid: Image | None
) -> torch.Tensor:
    if background is not None:
        chosen = voxel_mask(background, spatial, grid, "background")
        assert chosen is not None
        return chosen
    if selected is None or bool(selected.all()):
        raise ValueError(
            "`noise='rician'` needs `sigma`, or `background` (or a `mask` with voxels outside it) to estimate it from"
        )
    return ~selected


def estimate_sigma(flat: torch.Tensor, background: torch.Tensor) -> float:
    """The noise per channel from magnitude background voxels (``flat (m, N)``, ``background`` N voxels):
    ``sqrt(median(y^2) / (2 ln 2))``, the median of a Rayleigh variable's square being ``2 sigma^2 ln 2`` (robust
    to a few voxels with signal)."""
    values = flat[:, background.reshape(-1)].reshape(-1).double()
    values = values[torch.isfinite(values)]
    if values.numel() == 0:
        raise ValueError("`background` holds no finite signal to estimate `sigma` from")
    estimate = math.sqrt(float((values * values).median()) / (2 * math.log(2.0)))
    if not estimate > 0:
        raise ValueError("the background signal is zero: `sigma` cannot be estimated; give `sigma`")
    return estimate


# -- solving and checking -----------------------------------------------------------------------------------------


FIRST_PASS = 20
"""Steps per block before the voxels still running are gathered from every block and continued together (a few slow
voxels must not keep every block's loop going)."""


def _solve(
    spec: MapModel,
    objective: Objective,
    x: torch.Tensor,
    y: torch.Tensor,
    p0: torch.Tensor | None,
    k: int,
    extra: tuple[torch.Tensor, ...],
    lower: torch.Tensor | None,
    upper: torch.Tensor | None,
    finite: torch.Tensor,
    options: dict[str, Any],
    progress: Callable[[int, int], None] | None = None,
) -> VoxelFit:
    """Solve in blocks of :data:`BLOCK` voxels, :data:`FIRST_PASS` steps each, then the voxels still running all
    together for the rest of ``max_steps``; a magnitude inversion-recovery model twice per voxel (the data's sign
    restored up to the minimum, and up to the point after it), keeping the lower cost."""
    v = y.shape[1]
    params = torch.full((k, v), math.nan, dtype=y.dtype)
    cost = torch.full((v,), math.nan, dtype=y.dtype)
    status = torch.full((v,), int(Status.NONFINITE), dtype=torch.int8)
    steps = torch.zeros(v, dtype=torch.int32)
    rows = torch.nonzero(finite).reshape(-1)
    budget = int(options["max_steps"])
    first = {**options, "max_steps": min(budget, FIRST_PASS)}
    for block in rows.split(BLOCK):
        data = (y[:, block], *(t[..., block] for t in extra))
        zero = zero_floor(objective, data[0])
        if spec.polarity and p0 is None:
            fit = _fit_polarity(spec, objective, x, data, lower, upper, {**first, "floor": zero})
        else:
            start = p0[:, block] if p0 is not None else spec.start(x, data[0])  # type: ignore[misc]
            fit = _fit_block(spec, objective, x, start, data, lower, upper, {**first, "floor": zero}, p0 is None)
        params[:, block], cost[block], status[block], steps[block] = fit.params, fit.cost, fit.status, fit.steps
        if progress is not None:
            progress(int(block[-1]) + 1, v)
    late = rows[status[rows] == int(Status.MAX_STEPS)] if budget > FIRST_PASS else rows[:0]
    for block in late.split(BLOCK):
        data = (_signed(spec, x, params[:, block], y[:, block]), *(t[..., block] for t in extra))
        rest = {**options, "max_steps": budget - FIRST_PASS, "floor": zero_floor(objective, data[0])}
        fit = levenberg_marquardt(objective.terms, params[:, block], data, lower=lower, upper=upper, **rest)
        params[:, block], cost[block], status[block] = fit.params, fit.cost, fit.status
        steps[block] += fit.steps
    return VoxelFit(params, cost, status, steps)


def _fit_block(
    spec: MapModel,
    objective: Objective,
    x: torch.Tensor,
    start: torch.Tensor,
    data: tuple[torch.Tensor, ...],
    lower: torch.Tensor | None,
    upper: torch.Tensor | None,
    options: dict[str, Any],
    closed_form: bool,
) -> VoxelFit:
    """One block: by variable projection where the model is separable, the loss plain least squares and the start
    the model's own (the linear parameters solved in closed form at every step, the iterations on the others
    alone); every voxel that this does not bring to a converged answer inside the bounds is solved again in full
    from its start. Otherwise Levenberg-Marquardt on all parameters."""
    separable = spec.separable
    if separable is None or not closed_form or not isinstance(objective, LeastSquares) or objective.loss != "linear":
        return levenberg_marquardt(objective.terms, start, data, lower=lower, upper=upper, **options)
    projected = Projected(spec, x)
    nonlinear = list(separable.nonlinear)
    bound = (None if lower is None else lower[nonlinear], None if upper is None else upper[nonlinear])
    reduced = levenberg_marquardt(projected.terms, start[nonlinear], data, lower=bound[0], upper=bound[1], **options)
    params = projected.full(reduced.params, data[0])
    # Still running at the step budget: continued later with the other slow voxels (from where they are).
    running = reduced.status == int(Status.MAX_STEPS)
    good = (converged(reduced.status) | running) & torch.isfinite(params).all(dim=0)
    if lower is not None:
        good &= (params >= lower[:, None]).all(dim=0)
    if upper is not None:
        good &= (params <= upper[:, None]).all(dim=0)
    cost = projected.cost(reduced.params, data[0])
    fit = VoxelFit(params, cost, reduced.status, reduced.steps)
    redo = torch.nonzero(~good).reshape(-1)
    if redo.numel() == 0:
        return fit
    again = levenberg_marquardt(
        objective.terms, start[:, redo], tuple(t[..., redo] for t in data), lower=lower, upper=upper,
        **{**options, "floor": None if options.get("floor") is None else options["floor"][redo]},
    )  # fmt: skip
    fit.params[:, redo], fit.cost[redo], fit.status[redo] = again.params, again.cost, again.status
    fit.steps[redo] += again.steps
    return fit


def zero_floor(objective: Objective, y: torch.Tensor) -> torch.Tensor | None:
    """Per voxel, the least-squares cost at which the data are fitted to rounding (:data:`ZERO_FLOOR`); None for a
    likelihood, whose minimum is not zero."""
    if not isinstance(objective, LeastSquares) or objective.loss != "linear":
        return None
    size = ZERO_FLOOR * torch.finfo(y.dtype).eps * (y * y).sum(0).sqrt()
    return 0.5 * size * size


def polarity_patterns(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two sign restorations of magnitude inversion-recovery data ``(m, V)``: negative before the minimum, and
    negative up to and including it (the null lies on one side of the smallest sample)."""
    order = torch.arange(y.shape[0], device=y.device)[:, None]
    low = y.abs().argmin(dim=0, keepdim=True)
    before = torch.where(order < low, -y.abs(), y.abs())
    through = torch.where(order <= low, -y.abs(), y.abs())
    return before, through


def _fit_polarity(
    spec: MapModel,
    objective: Objective,
    x: torch.Tensor,
    data: tuple[torch.Tensor, ...],
    lower: torch.Tensor | None,
    upper: torch.Tensor | None,
    options: dict[str, Any],
) -> VoxelFit:
    assert spec.start is not None
    best: VoxelFit | None = None
    for signed in polarity_patterns(data[0]):
        start = spec.start(x, signed)
        fit = _fit_block(spec, objective, x, start, (signed, *data[1:]), lower, upper, options, True)
        if best is None:
            best = fit
            continue
        better = (fit.cost < best.cost) | ~torch.isfinite(best.cost)
        best = VoxelFit(
            torch.where(better, fit.params, best.params),
            torch.where(better, fit.cost, best.cost),
            torch.where(better, fit.status, best.status),
            best.steps + fit.steps,
        )
    assert best is not None
    return best


def _finish(
    spec: MapModel,
    objective: Objective,
    x: torch.Tensor,
    y: torch.Tensor,
    fit: VoxelFit,
    extra: tuple[torch.Tensor, ...],
    lower: torch.Tensor | None,
    upper: torch.Tensor | None,
    likelihood: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standard errors ``(k, V)``, verified statuses and the residual RMS per voxel.

    The check, independent of how the solver stopped: at the answer, recompute the objective's terms and apply
    MINPACK's gradient test at :data:`VERIFY_GTOL` (a converged voxel that fails it is ``SUSPECT_GRADIENT``), and
    factor the curvature (singular: ``SINGULAR``, standard errors infinite).
    """
    k, v = fit.params.shape
    m = y.shape[0]
    stderr = torch.full((k, v), math.nan, dtype=y.dtype)
    rms = torch.full((v,), math.nan, dtype=y.dtype)
    status = fit.status.clone()
    rows = torch.nonzero(torch.isfinite(fit.params).all(dim=0)).reshape(-1)
    for block in rows.split(BLOCK):
        p, yb = fit.params[:, block], y[:, block]
        data = (_signed(spec, x, p, yb), *(t[..., block] for t in extra))
        cost, g, h, r2 = objective.terms(p, *data)
        cosine = gradient_cosine(p, g, h, r2, lower, upper)
        done = converged(status[block])
        floor = zero_floor(objective, data[0])
        exact = torch.zeros_like(done) if floor is None else cost <= floor
        newton, solvable = cholesky_solve(h, g)
        decrease = 0.5 * (g * newton).sum(0)  # what a full Gauss-Newton step would gain, by the quadratic model
        signal = (data[0] * data[0]).sum(0) / ((extra[0][block] ** 2) if extra else 1.0)
        negligible = solvable & (decrease <= 0.5 * VERIFY_FIT**2 * signal)
        suspect = done & ~exact & (cosine > VERIFY_GTOL) & ~negligible
        variances = _inverse_diagonal(h)
        singular = ~torch.isfinite(variances).all(dim=0) | (variances <= 0).any(dim=0)
        if likelihood:
            scale = torch.ones_like(cost)
        else:
            scale = 2 * cost / (m - k) if m > k else torch.full_like(cost, math.inf)
        stderr[:, block] = torch.where(singular, math.inf, (variances * scale).clamp_min(0).sqrt())
        new = torch.where(suspect, int(Status.SUSPECT_GRADIENT), status[block])
        new = torch.where(done & ~suspect & singular, int(Status.SINGULAR), new)
        status[block] = new.to(torch.int8)
        value = spec.signal(x, p)
        residual = (value.abs() if spec.polarity else value) - yb
        rms[block] = residual.pow(2).mean(0).sqrt()
    return stderr, status, rms


def _signed(spec: MapModel, x: torch.Tensor, p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The data as the model sees them: for a magnitude model, signed as the fitted signal is at each sample."""
    if not spec.polarity:
        return y
    return torch.where(spec.signal(x, p) < 0, -y.abs(), y.abs())


def _inverse_diagonal(h: torch.Tensor) -> torch.Tensor:
    """``diag(h^-1)`` per voxel ``(k, V)`` from its Cholesky factor; infinite where ``h`` is not positive definite
    or its pivots fall to rounding (relative to its diagonal)."""
    k, v = h.shape[0], h.shape[-1]
    columns = []
    ok = torch.ones(v, dtype=torch.bool)
    for j in range(k):
        unit = torch.zeros(k, v, dtype=h.dtype)
        unit[j] = 1
        solved, fine = cholesky_solve(h, unit)
        ok = ok & fine
        columns.append(solved[j])
    diagonal = torch.stack(columns)
    ill = (diagonal * torch.diagonal(h).T).amax(dim=0) > 1 / (1e3 * torch.finfo(h.dtype).eps)
    return torch.where(ok & ~ill, diagonal, math.inf)


__all__ = ["NOT_FITTED", "estimate_sigma", "fit_map", "polarity_patterns"]
