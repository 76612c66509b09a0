"""Minibatch minimisation: a first-order solver stepping on one minibatch's loss at a time (seed 002).

With minibatches the gradient of each step is a stochastic estimate of the full gradient: the method is no longer
the full-batch one, and the loss it sees fluctuates from step to step. Convergence is therefore judged once per epoch
on the loss over the whole data set (a separate pass without gradients), never on a single minibatch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.func import grad_and_value

from lossfit.engine.problem import Objective, ParamSpec
from lossfit.engine.result import FitResult, History, SolverInfo, Status, build_result
from lossfit.engine.solvers import resolve
from lossfit.engine.solvers.first_order import _FirstOrder


def minimize_minibatches(
    loss_fn: Callable[..., torch.Tensor],
    params: Any,
    data: Iterable[Any],
    *,
    solver: str = "adam",
    epochs: int = 100,
    ftol: float = 1e-6,
    patience: int = 3,
    gtol: float = 1e-3,
    constraints: Any = None,
    dtype: torch.dtype | None = None,
    max_time: float | None = None,
    **options: Any,
) -> FitResult:
    """Minimise the mean of ``loss_fn`` over the minibatches of ``data``, one solver step per minibatch.

    Args:
        loss_fn: ``loss_fn(params, *batch) -> scalar``, the mean loss over one minibatch.
        params: the start, a tensor or a dict of tensors (not modified).
        data: re-iterable minibatches, each a tuple of tensors whose first dimension counts samples (a
            ``torch.utils.data.DataLoader`` over a ``TensorDataset``, or a list of tuples).
        solver: a first-order solver, ``"adam"``, ``"gd"`` or ``"rmsprop"`` (a curvature method's line search
            would chase the noise of single minibatches).
        epochs: the most passes over the data.
        ftol, patience: converged when the whole-data loss changed by less than ``ftol`` times itself over each of
            ``patience`` consecutive epochs. An epoch whose whole-data loss rose halves the learning rate (the steps
            have reached the minibatch noise; a shrinking step is what lets a stochastic method converge).
        gtol: convergence also needs the whole-data gradient below ``gtol`` times the start's (largest entries);
            otherwise the status is ``SUSPECT_GRADIENT``: the steps died out before the minimum.
        constraints, dtype, max_time, **options: as for :func:`lossfit.minimize` (``lr=...`` and so on).

    Returns:
        A :class:`FitResult` whose ``history`` has one row per epoch (row 0: the start), with the whole-data loss and
        gradient norm; ``num_steps`` counts minibatch steps. ``CONVERGED_FTOL``, or honestly ``MAX_STEPS`` or
        ``SUSPECT_GRADIENT``.
    """
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable; got {type(loss_fn).__name__}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"`epochs` must be a positive integer; got {epochs!r}")
    if not (ftol >= 0 and patience >= 1):
        raise ValueError(f"`ftol` must be >= 0 and `patience` >= 1; got {ftol!r} and {patience!r}")
    chosen = resolve(solver, options)
    if not isinstance(chosen, _FirstOrder):
        raise ValueError(f"`solver` must be 'adam', 'gd' or 'rmsprop' for minibatches; got {chosen.name!r}")
    spec = ParamSpec(params, constraints, False, dtype)
    x, aux = spec.initial()
    rows = torch.arange(1)
    start = time.perf_counter()

    def whole(x: torch.Tensor, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss (and gradient) over all the data, weighting each minibatch by its size."""
        total = torch.zeros((), dtype=x.dtype)
        g_total = torch.zeros_like(x)
        count = 0
        for batch in data:
            args = _as_tuple(batch)
            obj = Objective(loss_fn, spec, args, aux, kind="scalar")
            size = int(args[0].shape[0])
            if grad:
                f, g = obj.value_and_grad(x, rows)
                g_total += size * g
            else:
                f = obj.value(x, rows)
            total += size * f.detach()[0]
            count += size
        if count == 0:
            raise ValueError("`data` yielded no minibatches")
        return total / count, g_total / count

    f0, g0 = whole(x, grad=True)
    if not bool(torch.isfinite(f0)):
        raise ValueError(f"the loss over the data at the start is {float(f0)}; check the start and the data")
    losses, grads, steps_norm, times = [f0], [g0.abs().max()], [torch.zeros(())], [0.0]
    state: dict[str, torch.Tensor] = chosen._buffers(x)
    steps = 0
    calm = 0
    halvings = 0
    status = Status.MAX_STEPS
    for _ in range(epochs):
        epoch_start = x.clone()
        for batch in data:
            args = _as_tuple(batch)
            g, f = grad_and_value(lambda row, args=args: loss_fn(spec.unflatten(row, aux[0]), *args))(x[0])
            state["f"], state["g"] = f.detach().reshape(1), g.detach().unsqueeze(0)
            delta, buffers = chosen._direction(state)
            state.update(buffers)
            x = x + delta
            steps += 1
        f, _ = whole(x, grad=False)
        previous = losses[-1]
        losses.append(f)
        grads.append(torch.tensor(math.nan))
        steps_norm.append((x - epoch_start).norm())
        times.append(time.perf_counter() - start)
        if not bool(torch.isfinite(f)):
            status = Status.NONFINITE
            break
        if bool(f >= previous):  # the loss rose over an epoch: the step is too long for the minibatch noise; halve it
            chosen.options["lr"] *= 0.5
            halvings += 1
        calm = calm + 1 if abs(float(previous - f)) <= ftol * max(abs(float(f)), abs(float(previous))) else 0
        if calm >= patience:
            status = Status.CONVERGED_FTOL
            break
        if max_time is not None and times[-1] >= max_time:
            status = Status.MAX_TIME
            break
    g = whole(x, grad=True)[1] if status != Status.NONFINITE else torch.full_like(x, math.nan)
    grads[-1] = g.abs().max()
    if status == Status.CONVERGED_FTOL and bool(grads[-1] > gtol * grads[0]):
        # The loss settled but the whole-data gradient has not shrunk: the steps died out before the minimum.
        status = Status.SUSPECT_GRADIENT
    epochs_run = len(losses) - 1

    def column(values: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([v.reshape(()) for v in values]).to(x.dtype).unsqueeze(1)  # one problem: one column

    history = History(column(losses), column(grads), column(steps_norm), torch.tensor(times, dtype=torch.float64))
    return build_result(
        params=spec.unflatten_batch(x, aux),
        loss=losses[-1].reshape(1),
        statuses=(status,),
        steps=torch.tensor([steps]),
        batch=False,
        num_evals=steps,
        solver=SolverInfo(chosen.name, dict(chosen.options), f"minibatches: {steps} steps over {epochs_run} epochs"),
        time=time.perf_counter() - start,
        history=history,
        extras={
            "epochs": epochs_run,
            "lr_halvings": halvings,
            "final_lr": chosen.options["lr"],
            "gradient_inf_norm": float(g.abs().max()),
        },
    )


def _as_tuple(batch: Any) -> tuple[Any, ...]:
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)) and batch and all(isinstance(t, torch.Tensor) for t in batch):
        return tuple(batch)
    raise TypeError(f"each minibatch must be a tensor or a tuple of tensors; got {type(batch).__name__}")
