"""The engine's two entry functions, :func:`minimize` and :func:`least_squares`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from lossfit.engine.constraints import Bounds
from lossfit.engine.loop import Outcome, Stopping, run
from lossfit.engine.problem import Objective, ParamSpec, check_finite_start
from lossfit.engine.result import FitResult, SolverInfo, Status, build_result
from lossfit.engine.solvers import DENSE_LIMIT, Solver, choose, resolve
from lossfit.engine.verify import check_least_squares, jacobian_mismatch
from lossfit.losses import robust_loss

MAX_STEPS = {
    "gd": 10_000,
    "adam": 10_000,
    "rmsprop": 10_000,
    "lbfgs": 1000,
    "lm": 500,
    "gauss-newton": 500,
    "krylov": 200,
}


def minimize(
    loss_fn: Callable[..., torch.Tensor],
    params: Any,
    *,
    args: tuple = (),
    solver: str | Solver = "auto",
    constraints: Any = None,
    batch: bool = False,
    ftol: float | None = None,
    xtol: float | None = None,
    gtol: float | None = None,
    max_steps: int | None = None,
    max_time: float | None = None,
    history: bool = True,
    dtype: torch.dtype | None = None,
    **options: Any,
) -> FitResult:
    """Minimise a scalar loss over parameters.

    Args:
        loss_fn: ``loss_fn(params, *args) -> scalar tensor``, written for one problem.
        params: the start: a tensor or a dict of tensors (not modified). With ``batch=True`` every tensor has a
            leading dimension ``B`` indexing independent problems.
        args: extra arguments passed to ``loss_fn``; with ``batch=True`` their tensors lead with ``B`` too.
        solver: ``"auto"`` (L-BFGS), ``"gd"``, ``"adam"``, ``"rmsprop"``, ``"lbfgs"``, or a Solver object.
        constraints: a constraint for a tensor (``"positive"``, ``(lower, upper)``, ``"orthogonal"``, ``"spd"``,
            ``"symmetric"`` or a :class:`~lossfit.Constraint`), or a dict of them for a dict of parameters.
        batch: solve ``B`` independent problems at once; each stops on its own and has its own status.
        ftol, xtol, gtol: stopping tolerances (defaults depend on the solver); see
            :class:`lossfit.engine.loop.Stopping`.
        max_steps, max_time: limits on steps and seconds.
        history: record the loss, gradient and step per step.
        dtype: compute in this dtype (default: the parameters'; integer input becomes float64).
        **options: the solver's options, e.g. ``lr=0.9, momentum=0.9`` for ``gd``.

    Returns:
        A :class:`FitResult`; ``success`` is True only for a converged answer whose gradient was checked.

    Example:
        >>> import torch, lossfit
        >>> rosen = lambda p: (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2
        >>> result = lossfit.minimize(rosen, torch.tensor([-1.2, 1.0], dtype=torch.float64))
        >>> result.success, [round(v, 6) for v in result.params.tolist()]
        (True, [1.0, 1.0])
    """
    _check_callable(loss_fn, "loss_fn")
    spec, obj = _setup(loss_fn, params, constraints, batch, dtype, tuple(args), kind="scalar")
    x0, _aux = spec.initial()
    name, reason = choose("scalar", spec.numel) if solver == "auto" else ("", "")
    chosen = resolve(name or solver, options)
    _check_general(chosen)
    if chosen.needs != "gradient":
        raise ValueError(f"`solver` {chosen.name!r} needs residuals: use lossfit.least_squares for it")
    check_finite_start(obj.value(x0, torch.arange(x0.shape[0])), "the loss values")
    stop = _stopping(chosen, ftol, xtol, gtol, max_steps, max_time)
    outcome = run(obj, chosen, x0, stop, record=history)
    return finish(obj, chosen, outcome, reason, x0)


def least_squares(
    residual_fn: Callable[..., torch.Tensor],
    params: Any,
    *,
    args: tuple = (),
    solver: str | Solver = "auto",
    loss: str | Callable[[torch.Tensor], torch.Tensor] = "linear",
    f_scale: float = 1.0,
    bounds: tuple[Any, Any] | None = None,
    constraints: Any = None,
    batch: bool = False,
    ftol: float | None = None,
    xtol: float | None = None,
    gtol: float | None = None,
    max_steps: int | None = None,
    max_time: float | None = None,
    history: bool = True,
    dtype: torch.dtype | None = None,
    rank_check: bool = True,
    group: int = 1,
    jac: Callable[..., torch.Tensor] | torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    **options: Any,
) -> FitResult:
    """Minimise ``0.5 * sum(rho(r**2))`` over parameters, for residuals ``r = residual_fn(params, *args)``.

    Args:
        residual_fn: ``residual_fn(params, *args) -> tensor`` of residuals (any shape), written for one problem.
        params, args, batch, constraints, ftol, xtol, gtol, max_steps, max_time, history, dtype: as for
            :func:`minimize`. For least squares ``gtol`` tests MINPACK's measure, the largest cosine between the
            residuals and a column of the Jacobian (with the dense solvers).
        solver: ``"auto"`` (Levenberg-Marquardt up to 400 parameters, matrix-free Gauss-Newton above), ``"lm"``,
            ``"gauss-newton"``, ``"krylov"``, or any scalar solver (``"lbfgs"``, ``"adam"``, ``"gd"``, ...).
        loss: the robust loss ``rho``: ``"linear"``, ``"huber"``, ``"soft_l1"``, ``"cauchy"``, ``"arctan"`` or a
            callable; residuals are divided by ``f_scale`` first (the cost is ``0.5 * f_scale**2 * rho(z)``).
        bounds: ``(lower, upper)`` for a tensor of parameters (a shorthand for ``constraints=Bounds(lower, upper)``).
        group: apply the robust loss to consecutive blocks of ``group`` residuals, by their Euclidean length (the
            coordinates of one point, say, so that the loss does not depend on the axes); ``r.numel()`` must be a
            multiple of it.
        rank_check: report a numerically singular Jacobian at the answer as ``SINGULAR``; turn it off where a
            rank-deficient problem is intended and the start picks the answer (a minimum-norm solution from zero).
        jac: the Jacobian of the (flattened) residuals with respect to the parameters, instead of autodiff, for the
            dense solvers: a function ``jac(params, *args) -> (m, n)`` written for one problem, or a constant tensor
            ``(m, n)`` (``(B, m, n)`` with ``batch=True``) when the residuals are linear in the parameters. Only for
            ``params`` given as one tensor without constraints or bounds. It is checked against a forward-mode
            derivative along a random direction at the start (a mismatch raises ``ValueError``) and at the answer
            (a mismatch there makes the status ``SUSPECT_GRADIENT``).
        mask: which residuals count, a boolean tensor of the residuals' shape (with the batch dimension first when
            ``batch``): for a batch of problems of different sizes padded to one shape. The others are set to 0
            (they must still be finite numbers: pad with real values, a copy of the last point, say); each problem's
            covariance and degrees of freedom count its own residuals (``extras["num_residuals"]``).

    Returns:
        A :class:`FitResult` with ``residuals``, and for the dense solvers ``jacobian`` and ``covariance``
        (``s**2 (J^T J)^-1`` with ``s**2 = 2 * loss / (m - n)``); a numerically singular Jacobian at the answer
        gives the status ``SINGULAR``, never a silent success.

    Example:
        >>> import torch, lossfit
        >>> x = torch.linspace(0, 1, 20, dtype=torch.float64)
        >>> y = 2.0 * torch.exp(-1.5 * x)
        >>> result = lossfit.least_squares(lambda p: p[0] * torch.exp(-p[1] * x) - y, torch.tensor([1.0, 1.0]))
        >>> result.success, [round(v, 8) for v in result.params.tolist()]
        (True, [2.0, 1.5])
    """
    _check_callable(residual_fn, "residual_fn")
    if not (isinstance(f_scale, (int, float)) and f_scale > 0 and math.isfinite(f_scale)):
        raise ValueError(f"`f_scale` must be a positive finite number; got {f_scale!r}")
    if bounds is not None:
        if constraints is not None:
            raise TypeError("give `bounds` or `constraints`, not both")
        if not (isinstance(bounds, tuple) and len(bounds) == 2):
            raise TypeError(f"`bounds` must be a (lower, upper) pair; got {bounds!r}")
        constraints = Bounds(*bounds)
    rho = None if loss == "linear" else robust_loss(loss)
    counts = None
    if mask is not None:
        if jac is not None:
            raise ValueError("give `jac` or `mask`, not both (a given Jacobian would need the mask applied too)")
        residual_fn, args, counts = _masked(residual_fn, tuple(args), mask, batch)
    spec, obj = _setup(residual_fn, params, constraints, batch, dtype, tuple(args), kind="residual")
    obj.counts = counts
    obj.rho, obj.f_scale = rho, float(f_scale)
    if not isinstance(group, int) or isinstance(group, bool) or group < 1:
        raise ValueError(f"`group` must be a positive integer; got {group!r}")
    obj.group = group
    x0, _aux = spec.initial()
    r0 = obj.residual(x0, torch.arange(x0.shape[0]))
    check_finite_start(r0, "the residuals")
    if r0.shape[1] == 0:
        raise ValueError("`residual_fn` must return at least one residual; got an empty tensor")
    if r0.shape[1] % group:
        raise ValueError(f"`group` ({group}) must divide the number of residuals ({r0.shape[1]})")
    obj.set_jacobian(jac)
    if jac is not None:
        # A first check on a few problems, before any work (every answer is checked again at the end).
        rows0 = torch.arange(min(x0.shape[0], 16), device=x0.device)
        if bool(jacobian_mismatch(obj, x0[rows0], rows0, obj.given_jacobian(x0[rows0], rows0, r0.shape[1])).any()):
            raise ValueError(
                "`jac` disagrees with the derivative of `residual_fn` at the start (checked along a random direction)"
            )
    name, reason = choose("residual", spec.numel) if solver == "auto" else ("", "")
    chosen = resolve(name or solver, options)
    _check_general(chosen)
    stop = _stopping(chosen, ftol, xtol, gtol, max_steps, max_time)
    # Scalar solvers see the (robust) cost of the residuals through `Objective.value`.
    outcome = run(obj, chosen, x0, stop, record=history)
    return finish(obj, chosen, outcome, reason, x0, rank_check)


def _masked(
    residual_fn: Callable[..., torch.Tensor], args: tuple, mask: Any, batch: bool
) -> tuple[Callable[..., torch.Tensor], tuple, torch.Tensor]:
    """The residual function with the masked residuals set to 0, its arguments (the mask's rows appended, so that
    a batch's problems each see their own), and the number of residuals each problem keeps ``(B,)``."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"`mask` must be a boolean tensor; got {type(mask).__name__} {getattr(mask, 'dtype', '')}")
    if batch and mask.ndim == 0:
        raise ValueError("with `batch=True`, `mask` must lead with the batch dimension")
    rows = mask.reshape(mask.shape[0], -1) if batch else mask.reshape(1, -1)
    counts = rows.sum(dim=1)

    def masked(params: Any, *rest: Any) -> torch.Tensor:
        *user_args, keep = rest
        r = residual_fn(params, *user_args)
        if not isinstance(r, torch.Tensor):
            raise TypeError(f"the residual function must return a tensor; got {type(r).__name__}")
        if r.numel() != keep.numel():
            raise ValueError(f"`mask` must have the residuals' shape, {r.numel()} values a problem; got {keep.numel()}")
        return torch.where(keep, r.reshape(-1), torch.zeros((), dtype=r.dtype, device=r.device))

    return masked, (*args, rows if batch else rows[0]), counts


def _setup(
    fn: Callable[..., torch.Tensor],
    params: Any,
    constraints: Any,
    batch: bool,
    dtype: torch.dtype | None,
    args: tuple,
    kind: str,
) -> tuple[ParamSpec, Objective]:
    """The parameter spec and the objective, computing in the wider of the parameters' and the output's dtype.

    Convention: a float32 start for a function of float64 data is solved in float64 (the data set the precision);
    ``dtype`` given explicitly wins.
    """
    spec = ParamSpec(params, constraints, batch, dtype)
    x0, aux = spec.initial()
    obj = Objective(fn, spec, args, aux, kind=kind)
    if dtype is None:
        rows = torch.arange(x0.shape[0])
        out = obj.residual(x0, rows) if kind == "residual" else obj.value(x0, rows)
        wider = torch.promote_types(out.dtype, spec.dtype)
        if wider != spec.dtype and out.is_floating_point():
            spec = ParamSpec(params, constraints, batch, wider)
            x0, aux = spec.initial()
            obj = Objective(fn, spec, args, aux, kind=kind)
    return spec, obj


def _check_general(solver: Solver) -> None:
    if solver.needs == "iteration":
        raise ValueError(
            f"`solver` {solver.name!r} runs a problem's own iteration (lossfit.matrices uses it); it cannot minimise "
            "a function given here"
        )


def _check_callable(fn: Any, argument: str) -> None:
    if not callable(fn):
        raise TypeError(f"`{argument}` must be callable; got {type(fn).__name__}")


def _stopping(
    solver: Solver,
    ftol: float | None,
    xtol: float | None,
    gtol: float | None,
    max_steps: int | None,
    max_time: float | None,
) -> Stopping:
    values = {}
    for name, given in (("ftol", ftol), ("xtol", xtol), ("gtol", gtol)):
        value = solver.tolerances[name] if given is None else given
        if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
            raise ValueError(f"`{name}` must be a finite number >= 0; got {value!r}")
        values[name] = float(value)
    steps = MAX_STEPS.get(solver.name, 1000) if max_steps is None else max_steps
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"`max_steps` must be an integer >= 0; got {max_steps!r}")
    if max_time is not None and not (isinstance(max_time, (int, float)) and max_time > 0):
        raise ValueError(f"`max_time` must be a positive number of seconds; got {max_time!r}")
    return Stopping(values["ftol"], values["xtol"], values["gtol"], steps, max_time)


def finish(
    obj: Any,
    solver: Solver,
    outcome: Outcome,
    reason: str,
    x0: torch.Tensor,
    rank_check: bool = True,
    gradient_ratio: float = 1e-4,
) -> FitResult:
    """Check the answers the solver calls converged, and assemble the result: the one finishing path of the
    driver's runs (:func:`minimize`, :func:`least_squares`, the minibatch mode).

    ``obj`` is the :class:`~lossfit.engine.problem.Objective` or the minibatch mode's whole-data problem, with its
    ``spec`` and ``aux``, or an iteration's problem, which gives its answer's parameters (``answer(x)``) and says
    whether it is a ``batch``. A scalar loss's answer must have a gradient at most ``gradient_ratio`` times the
    start's (or rounding level of the loss) and a loss no higher than the start; otherwise ``SUSPECT_GRADIENT``.
    """
    if obj.kind == "iteration":
        params, batch = obj.answer(outcome.x), obj.batch
    else:
        params, batch = obj.spec.unflatten_batch(outcome.x, obj.aux), obj.spec.batch
    rows = torch.arange(outcome.x.shape[0], device=outcome.x.device)
    status = outcome.status.clone()
    residuals = jac = cov = None
    x = outcome.x
    if obj.kind == "iteration":
        # A problem's own iteration (Newton-Schulz, Jacobi): its loss at the answer; the family checks the answer
        # against its closed form (lossfit.matrices' references), which no gradient test here could replace.
        f = obj.value(x, rows)
        suspect = None
    elif obj.kind == "scalar":
        f, g = obj.value_and_grad(x, rows)
        f0, g0 = obj.value_and_grad(x0, rows)
        gm, gm0 = g.abs().amax(dim=1), g0.abs().amax(dim=1)
        # A minimum found by descent has a small gradient (against the start's) and a loss no higher than the start.
        suspect = (gm > torch.maximum(gradient_ratio * gm0, 1e-6 * f0.abs().clamp_min(1.0))) | (f > f0)
    else:
        if obj.spec.numel <= DENSE_LIMIT:
            g0 = outcome.g0 if outcome.g0 is not None else obj.value_and_grad(x0, rows)[1].abs().amax(dim=1)
            check = check_least_squares(obj, x, rows, g0, outcome.final)
            residuals, jac, cov, suspect = check.residuals, check.jacobian, check.covariance, check.suspect
            if rank_check:
                status = torch.where(_converged(status) & check.singular, Status.SINGULAR, status)
            # The caller's Jacobian must still be the residuals' derivative at the answer.
            status = torch.where(_converged(status) & check.jacobian_mismatch, Status.SUSPECT_GRADIENT, status)
        else:
            residuals = obj.residual(x, rows)
            _, g = obj.value_and_grad(x, rows)
            _, g0 = obj.value_and_grad(x0, rows)
            suspect = g.abs().amax(dim=1) > 1e-4 * g0.abs().amax(dim=1)
        f = obj.cost(residuals)
        zero_residual = f <= (torch.finfo(f.dtype).eps ** 2) * outcome.f0.abs()
        suspect = suspect & ~zero_residual
    if suspect is not None:
        status = torch.where(_converged(status) & suspect, Status.SUSPECT_GRADIENT, status)
    by_code = {int(s): s for s in Status}
    extras: dict[str, Any] = {}
    if obj.counts is not None:
        extras["num_residuals"] = obj.counts if batch else int(obj.counts[0])
    return build_result(
        params=params,
        loss=f,
        statuses=tuple(map(by_code.__getitem__, status.tolist())),
        steps=outcome.steps,
        batch=batch,
        num_evals=obj.evals,
        solver=SolverInfo(solver.name, dict(solver.options), reason),
        time=outcome.time,
        history=outcome.history,
        residuals=residuals,
        jacobian=jac,
        covariance=cov,
        extras=extras,
    )


def _converged(status: torch.Tensor) -> torch.Tensor:
    codes = [s for s in Status if s.success]
    return torch.isin(status, torch.tensor([int(s) for s in codes], device=status.device))
