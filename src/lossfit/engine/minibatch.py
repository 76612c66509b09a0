"""Minibatch minimisation: the driver's mode in which a first-order solver steps on one minibatch's loss at a time.

With minibatches the gradient of each step is a stochastic estimate of the full gradient: the method is no longer
the full-batch one, and the loss it sees fluctuates from step to step. Convergence is therefore judged once per epoch
on the loss over the whole data set (a separate pass without gradients), never on a single minibatch.

The pieces are the engine's own: :class:`WholeData` is the problem the driver (:func:`lossfit.engine.loop.run`)
sees, the loss over all the data; :class:`Epochs` is the solver, one driver step per epoch, that walks the
minibatches with a first-order method's rule; the answer is checked and the result built by the same finishing
path as :func:`lossfit.minimize`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch.func import grad_and_value

from lossfit.engine.loop import Stopping, run
from lossfit.engine.problem import Objective, ParamSpec, WithoutResiduals, check_finite_start
from lossfit.engine.result import FitResult
from lossfit.engine.solvers import resolve
from lossfit.engine.solvers.base import Solver, State, StepInfo, all_accepted
from lossfit.engine.solvers.first_order import FirstOrder


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
        A :class:`FitResult` whose ``history`` has one row per epoch (row 0: the start), with the whole-data loss
        (the gradient norm at the start only: the epochs compute none); ``num_steps`` counts minibatch steps.
        ``CONVERGED_FTOL``, or honestly ``MAX_STEPS`` or ``SUSPECT_GRADIENT``.
    """
    from lossfit.engine.api import finish

    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable; got {type(loss_fn).__name__}")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"`epochs` must be a positive integer; got {epochs!r}")
    if not (ftol >= 0 and isinstance(patience, int) and patience >= 1):
        raise ValueError(f"`ftol` must be >= 0 and `patience` a positive integer; got {ftol!r} and {patience!r}")
    if not gtol >= 0:
        raise ValueError(f"`gtol` must be >= 0; got {gtol!r}")
    method = resolve(solver, options)
    if not isinstance(method, FirstOrder):
        raise ValueError(f"`solver` must be 'adam', 'gd' or 'rmsprop' for minibatches; got {method.name!r}")
    method = dataclasses.replace(method, options=dict(method.options))  # the halvings change a copy, not the caller's
    spec = ParamSpec(params, constraints, False, dtype)
    x0, aux = spec.initial()
    whole = WholeData(loss_fn, spec, aux, data)
    check_finite_start(whole.value(x0, torch.arange(1)), "the loss over the data at the start")
    epoch = Epochs(method=method, ftol=ftol, patience=patience)
    # The driver's own tests are off: an epoch's loss is judged by the solver's patience.
    outcome = run(whole, epoch, x0, Stopping(ftol=None, xtol=None, gtol=None, max_steps=epochs, max_time=max_time))
    epochs_run = int(outcome.steps[0])
    reason = f"minibatches: {whole.minibatch_steps} steps over {epochs_run} epochs"
    result = finish(whole, method, outcome, reason, x0, gradient_ratio=gtol)
    g = whole.value_and_grad(outcome.x, torch.arange(1))[1]
    return dataclasses.replace(
        result,
        steps=torch.tensor([whole.minibatch_steps]),
        num_steps=whole.minibatch_steps,
        extras={
            **result.extras,
            "epochs": epochs_run,
            "lr_halvings": epoch.halvings,
            "final_lr": method.options["lr"],
            "gradient_inf_norm": float(g.abs().max()),
        },
    )


class WholeData(WithoutResiduals):
    """The problem the driver sees in minibatch mode: the loss over all the data, the size-weighted mean of the
    minibatches' losses; :meth:`minibatches` gives the solver each minibatch's loss and gradient in turn."""

    kind = "scalar"
    what = "a loss over minibatches (a scalar loss)"

    def __init__(self, loss_fn: Callable[..., torch.Tensor], spec: ParamSpec, aux: Any, data: Iterable[Any]) -> None:
        self.loss_fn, self.spec, self.aux, self.data = loss_fn, spec, aux, data
        self.evals = 0
        self.minibatch_steps = 0
        self._recent: list[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = []

    def value(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self._over_data(x, rows, grad=False)[0]

    def value_and_grad(self, x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss and gradient over all the data; the last two points' are kept (the answer's check and the
        report of its gradient ask for the same pass)."""
        for point, out in self._recent:
            if point.shape == x.shape and torch.equal(point, x):
                return out
        out = self._over_data(x, rows, grad=True)
        self._recent = [(x.clone(), out), *self._recent[:1]]
        return out

    def minibatches(self) -> Iterator[Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]:
        """For each minibatch in turn, a function of the row ``x (n,)`` giving its loss and gradient."""
        for batch in self.data:
            args = _as_tuple(batch)
            self.minibatch_steps += 1
            self.evals += 1

            def loss(row: torch.Tensor, args: tuple[Any, ...] = args) -> torch.Tensor:
                return self.loss_fn(self.spec.unflatten(row, self.aux[0]), *args)

            yield grad_and_value(loss)

    def _over_data(self, x: torch.Tensor, rows: torch.Tensor, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        total = torch.zeros(1, dtype=x.dtype, device=x.device)
        g_total = torch.zeros_like(x)
        count = 0
        for batch in self.data:
            args = _as_tuple(batch)
            obj = Objective(self.loss_fn, self.spec, args, self.aux, kind="scalar")
            size = int(args[0].shape[0])
            if grad:
                f, g = obj.value_and_grad(x, rows)
                g_total += size * g
            else:
                f = obj.value(x, rows)
            total += size * f.detach()
            count += size
            self.evals += 1
        if count == 0:
            raise ValueError("`data` yielded no minibatches")
        return total / count, g_total / count


@dataclass(kw_only=True)
class Epochs(Solver):
    """One driver step is one epoch: the first-order ``method`` steps once per minibatch (on that minibatch's
    gradient), then the whole-data loss is measured. An epoch whose loss rose halves the method's learning rate;
    ``patience`` epochs in a row that changed the loss by at most ``ftol`` times itself are convergence."""

    name: ClassVar[str] = "epochs"
    method: FirstOrder
    ftol: float = 1e-6
    patience: int = 3
    halvings: int = 0

    def init(self, obj: Any, x: torch.Tensor, rows: torch.Tensor) -> EpochState:
        f, g = obj.value_and_grad(x, rows)
        calm = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return EpochState(f=f, g=g, gm=g.abs().amax(dim=1), calm=calm, moments=self.method.buffers(x))

    def step(  # type: ignore[override]
        self, obj: Any, x: torch.Tensor, state: EpochState, rows: torch.Tensor
    ) -> tuple[torch.Tensor, EpochState, StepInfo]:
        start, previous, moments = x, state.f, state.moments
        for loss_and_grad in obj.minibatches():
            g, _ = loss_and_grad(x[0])
            delta, moments = self.method.direction(g.detach()[None], moments)
            x = x + delta
        f = obj.value(x, rows)
        if bool((f >= previous).all()):  # the loss rose over an epoch: the step is too long for the minibatch noise
            self.method.options["lr"] *= 0.5
            self.halvings += 1
        settled = (previous - f).abs() <= self.ftol * torch.maximum(f.abs(), previous.abs())
        calm = torch.where(settled, state.calm + 1, torch.zeros_like(state.calm))
        nan = torch.full_like(f, float("nan"))  # no whole-data gradient per epoch (it would cost a pass)
        info = StepInfo(all_accepted(x), (x - start).norm(dim=1), None, converged=calm >= self.patience)
        return x, EpochState(f=f, g=state.g, gm=nan, calm=calm, moments=moments), info


@dataclass(kw_only=True)
class EpochState(State):
    """The minibatch mode's state: the whole-data gradient at the start, the epochs in a row whose loss settled
    (``calm``) and the first-order method's moments."""

    g: torch.Tensor
    calm: torch.Tensor
    moments: tuple[torch.Tensor, ...]


def _as_tuple(batch: Any) -> tuple[Any, ...]:
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)) and batch and all(isinstance(t, torch.Tensor) for t in batch):
        return tuple(batch)
    raise TypeError(f"each minibatch must be a tensor or a tuple of tensors; got {type(batch).__name__}")
