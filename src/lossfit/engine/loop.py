"""The driver: runs a solver step by step over a batch, tests each problem's stopping rules, drops finished rows."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from lossfit.engine.problem import Problem
from lossfit.engine.result import History, Status
from lossfit.engine.scalars import finite, negate, on_host, select
from lossfit.engine.solvers import Solver
from lossfit.engine.solvers.base import Evaluation, State, StepInfo


@dataclass(frozen=True)
class Stopping:
    """Stopping rules; each problem stops on the first that holds.

    ``ftol``: the loss fell by less than ``ftol`` times itself over the solver's window of steps; ``xtol``: the step
    was shorter than ``xtol * (xtol + |x|)``; ``gtol``: the solver's gradient measure fell below ``gtol``;
    ``max_steps`` and ``max_time`` (seconds) end the run unconverged. ``None`` turns a test off (a solver with a
    convergence test of its own, whose runs then skip the work of the others).
    """

    ftol: float | None
    xtol: float | None
    gtol: float | None
    max_steps: int
    max_time: float | None


@dataclass
class Outcome:
    x: torch.Tensor
    f0: torch.Tensor
    g0: torch.Tensor | None  # the start's largest gradient entry, where the solver computed it
    f: torch.Tensor
    status: torch.Tensor
    steps: torch.Tensor
    history: History | None
    time: float
    final: Final | None = None

    def as_ordinary(self) -> Outcome:
        """This outcome with copies of its tensors made outside ``torch.inference_mode`` (a caller may use them
        with autograd and change them in place); call it outside that mode."""
        history = self.history
        if history is not None:
            history = History(*(_own(t) for t in (history.loss, history.grad_norm, history.step_norm, history.time)))
        final = self.final
        if final is not None:
            final.residuals, final.jacobians, final.have = map(_own, (final.residuals, final.jacobians, final.have))
        x, f0, g0, f, status, steps = map(_own, (self.x, self.f0, self.g0, self.f, self.status, self.steps))
        return Outcome(x, f0, g0, f, status, steps, history, self.time, final)


def _own(t: Any) -> Any:
    return t.clone() if isinstance(t, torch.Tensor) else t


class Final:
    """The residuals ``(B, m)`` and Jacobians ``(B, m, n)`` a dense solver evaluated where problems stopped, and
    which problems have them (``have``): those that stopped at an accepted trial point."""

    def __init__(self) -> None:
        self.residuals: torch.Tensor | None = None
        self.jacobians: torch.Tensor | None = None
        self.have: torch.Tensor | None = None

    def keep(self, b: int, evaluated: Evaluation, stopped: torch.Tensor, rows: torch.Tensor) -> None:
        """Keep the evaluations of the rows ``stopped`` (a mask over the running ``rows``) for problems ``rows``."""
        for part, r, jac in zip(evaluated.parts, evaluated.residuals, evaluated.jacobians, strict=True):
            local = stopped[part].nonzero().squeeze(1)
            if not local.numel():
                continue
            if self.residuals is None or self.jacobians is None or self.have is None:
                self.residuals = r.new_empty((b, *r.shape[1:]))
                self.jacobians = jac.new_empty((b, *jac.shape[1:]))
                self.have = torch.zeros(b, dtype=torch.bool, device=r.device)
            problems = rows[part][local]
            self.residuals[problems] = r[local]
            self.jacobians[problems] = jac[local]
            self.have[problems] = True


def run(obj: Problem, solver: Solver, x0: torch.Tensor, stop: Stopping, record: bool = True) -> Outcome:
    """Minimise from ``x0`` (``(B, n)``) until every problem has stopped.

    Finished problems leave the batch lazily: they stay in the computed rows, frozen, until a tenth of the rows
    have finished, so the batch (and the user's extra arguments) are re-indexed only now and then. A solver that
    needs no autograd (``solver.differentiates`` false: the iteration solvers) runs in ``torch.inference_mode``,
    which halves the cost of each small tensor operation; the outcome it returns holds ordinary tensors.
    """
    if solver.differentiates:
        return _run(obj, solver, x0, stop, record)
    with torch.inference_mode():
        outcome = _run(obj, solver, x0, stop, record)
    return outcome.as_ordinary()


def _run(obj: Problem, solver: Solver, x0: torch.Tensor, stop: Stopping, record: bool) -> Outcome:
    start = time.perf_counter()
    b = x0.shape[0]
    device = x0.device
    host = on_host(x0)  # one problem on the CPU: the stopping rules on Python scalars (see lossfit.engine.scalars)
    x = x0.clone()
    rows = torch.arange(b, device=device)
    state = solver.init(obj, x, rows)
    f_all = state.f.clone()
    f0 = state.f.clone()
    g0 = state.g.abs().amax(dim=1) if state.g is not None else None
    eps = torch.finfo(x0.dtype).eps
    # A loss at rounding level of its start is zero: nothing is left to minimise (for losses bounded below by 0).
    zero_level = eps**2 * f_all.abs() if obj.kind == "residual" else None
    host_floor = None if zero_level is None or not host else (zero_level.item(), f0.item())
    status = _initial_status(state, stop)
    steps: torch.Tensor | None = None  # each problem's steps, once one has stopped; until then all took `taken`
    taken = 0
    shared = False
    window = solver.window
    past: torch.Tensor | list[float] | None = None  # the accepted losses of the last `window` steps, where ftol is on
    if stop.ftol is not None:
        past = [state.f.item()] * window if host else state.f.unsqueeze(1).expand(b, window).clone()
    running = status == Status.RUNNING  # over `rows`
    trace: list[tuple[torch.Tensor, ...]] = []
    times: list[float] = []
    final = Final()
    if record:
        trace.append((rows, state.f, state.gm, torch.zeros_like(state.f)))
        times.append(time.perf_counter() - start)
    all_running = bool(running.all())
    while True:
        if not all_running:
            if not bool(running.any()):
                break
            if int(running.sum()) < 0.9 * running.numel() or running.numel() < 64:
                rows = rows[running]
                if isinstance(past, torch.Tensor):  # (a list is one problem's, which never drops rows)
                    past = past[running]
                state = state.take(running)
                running = running[running]
            all_running = bool(running.all())
        everyone = all_running and rows.numel() == b  # no problem has stopped yet: rows are all of them, in order
        x_rows = x if everyone else x[rows]
        x_new, state, info = solver.step(obj, x_rows, state, rows)
        f = state.f
        if everyone:
            live = rows
            taken += 1
            x, f_all, shared = x_new, f, True  # f_all is the solver's own tensor until problems stop
        else:
            if steps is None:
                steps = torch.full((b,), taken, dtype=torch.long, device=device)
            if shared:  # written into from here on: a copy of its own
                f_all, shared = f_all.clone(), False
            live = rows[running]
            steps[live] += 1
            x[live] = x_new[running]
            f_all[live] = f[running]
        elapsed = time.perf_counter() - start
        if record:
            if everyone:
                trace.append((live, f, state.gm, info.step_norm))
            else:
                trace.append((live, f[running], state.gm[running], info.step_norm[running]))
            times.append(elapsed)
        measures = _Measures.after(stop, info, f, state.gm, x_rows, x_new, host)
        if past is not None:  # the loss change over the window (a step count below it compares with the start)
            measures.oldest, past = _slide(past, measures.f, measures.accepted)
        floor = host_floor if host else None if zero_level is None else (zero_level[rows], f0[rows])
        count: torch.Tensor | int = taken if steps is None else steps[rows]  # one count while every problem runs
        code = _stopping_codes(stop, measures, count, window, elapsed, floor, eps)
        if host:
            if not code:
                continue
            code = torch.full((1,), code, dtype=torch.long, device=device)
        elif not everyone:
            code = code * running  # the frozen rows of stopped problems keep their status
        if bool(code.any()):  # RUNNING is 0
            done = code != Status.RUNNING
            status[rows[done]] = code[done]
            running = running & ~done
            all_running = False
            if info.evaluated is not None and obj.keep_final:
                final.keep(b, info.evaluated, done & info.accepted, rows)
    if steps is None:
        steps = torch.full((b,), taken, dtype=torch.long, device=device)
    history = _history(trace, times, b, x0) if record else None
    return Outcome(x, f0, g0, f_all, status, steps, history, time.perf_counter() - start, final)


@dataclass
class _Measures:
    """What the stopping rules read after a step, per running problem: ``(B,)`` tensors or, for one problem on the
    CPU, Python numbers. ``x_norm`` is ``||x||`` (for ``xtol``), ``moved`` the step's largest move relative to each
    parameter (for ``ftol``) and ``oldest`` the loss ``window`` steps ago."""

    f: Any
    gm: Any
    accepted: Any
    step_norm: Any
    stalled: Any
    predicted: Any
    actual: Any
    converged: Any
    converged_as: int
    x_norm: Any
    moved: Any
    oldest: Any = None

    @classmethod
    def after(
        cls,
        stop: Stopping,
        info: StepInfo,
        f: torch.Tensor,
        gm: torch.Tensor,
        x_old: torch.Tensor,
        x_new: torch.Tensor,
        host: bool,
    ) -> _Measures:
        x_norm = x_new.norm(dim=1) if stop.xtol is not None else None
        moved = None
        if stop.ftol is not None:
            root = stop.ftol**0.5
            moved = ((x_new - x_old).abs() / (root + x_new.abs())).amax(dim=1)
        if host:  # each number once, as a Python scalar
            return cls(
                f.item(), gm.item(), info.accepted.item(), info.step_norm.item(), _item(info.stalled),
                _item(info.predicted), _item(info.actual), _item(info.converged), info.converged_as, _item(x_norm),
                _item(moved),
            )  # fmt: skip
        return cls(
            f, gm, info.accepted, info.step_norm, info.stalled, info.predicted, info.actual, info.converged,
            info.converged_as, x_norm, moved,
        )  # fmt: skip


def _item(t: torch.Tensor | None) -> Any:
    return None if t is None else t.item()


def _slide(past: Any, f: Any, accepted: Any) -> tuple[Any, Any]:
    """The oldest loss of the window, and the window after a step (a rejected step repeats the last loss)."""
    if isinstance(past, list):
        return past[0], past[1:] + [f if accepted else past[-1]]
    return past[:, 0], torch.cat([past[:, 1:], torch.where(accepted, f, past[:, -1]).unsqueeze(1)], dim=1)


def _stopping_codes(
    stop: Stopping,
    m: _Measures,
    step_count: torch.Tensor | int,
    window: int,
    elapsed: float,
    floor: tuple[Any, Any] | None,
    eps: float,
) -> Any:
    """Each running problem's status after a step (``RUNNING`` where no rule holds); later rules win. On tensors a
    ``(B,)`` tensor; on one problem's Python scalars an int.

    ``floor`` is the rounding level of zero and the start's loss, for losses bounded below by 0 (None otherwise);
    ``eps`` the machine epsilon of the problem's dtype.
    """
    if isinstance(step_count, int):  # every problem at the same step: one code for all until a rule says otherwise
        code: Any = Status.MAX_STEPS if step_count >= stop.max_steps else Status.RUNNING
    else:
        code = (step_count >= stop.max_steps) * Status.MAX_STEPS
    if m.stalled is not None:
        code = select(m.stalled & (code == 0), Status.STALLED, code)
    if stop.max_time is not None and elapsed >= stop.max_time:
        code = select(code == 0, Status.MAX_TIME, code)
    if stop.xtol is not None:
        code = select(m.accepted & (m.step_norm <= stop.xtol * (stop.xtol + m.x_norm)), Status.CONVERGED_XTOL, code)
    if stop.ftol is not None and m.oldest is not None:
        code = select(_ftol_hit(stop.ftol, m, step_count, window), Status.CONVERGED_FTOL, code)
    if m.converged is not None:  # the solver's own test
        code = select(m.converged, m.converged_as, code)
    if stop.gtol is not None:
        code = select(m.gm <= stop.gtol, Status.CONVERGED_GTOL, code)
    if floor is not None:
        zero_level, f_start = floor
        # A step that cannot lower a loss already within rounding of zero (relative to the start) is done too.
        at_zero = (m.f <= zero_level) | (negate(m.accepted) & (m.f <= eps * abs(f_start)))
        code = select(at_zero, Status.CONVERGED_ZERO, code)
    return select(finite(m.f), code, Status.NONFINITE)


def _ftol_hit(ftol: float, m: _Measures, step_count: torch.Tensor | int, window: int) -> Any:
    """Where the loss changed by at most ``ftol`` times itself over the window (or, for a model-based step, both
    the predicted and the actual decrease are that small), with a step that is not still travelling."""
    change = abs(m.oldest - m.f)
    settled = (change <= ftol * abs(m.oldest)) | (change <= ftol * abs(m.f))  # at most ftol times the larger
    hit = m.accepted & settled & (step_count >= window)
    if m.predicted is not None and m.actual is not None:
        tiny = ftol * abs(m.f)
        hit = hit | ((m.predicted <= tiny) & (abs(m.actual) <= tiny))
    # A loss that has settled to ftol lies within about sqrt(ftol) of the minimiser, relative to each parameter; a
    # step still longer than that is slow (linear) convergence that has further to go, not convergence.
    return hit & (m.moved <= ftol**0.5)


def _history(trace: list[tuple[torch.Tensor, ...]], times: list[float], b: int, like: torch.Tensor) -> History:
    n = len(trace)
    columns = list(zip(*(values for _, *values in trace), strict=True))
    if all(live.numel() == b for live, *_ in trace):  # no problem stopped before the last step: one stack each
        arrays = [torch.stack(column).detach().to(like.dtype) for column in columns]  # stack promotes dtypes
    else:
        arrays = [torch.full((n, b), float("nan"), dtype=like.dtype, device=like.device) for _ in range(3)]
        for i, (live, *values) in enumerate(trace):
            for array, value in zip(arrays, values, strict=False):
                array[i, live] = value.detach()  # cast by the assignment
    return History(arrays[0], arrays[1], arrays[2], torch.tensor(times, dtype=torch.float64))


def _initial_status(state: State, stop: Stopping) -> torch.Tensor:
    f = state.f
    code = torch.zeros(f.shape[0], dtype=torch.long, device=f.device)
    if stop.gtol is not None:
        code = torch.where(state.gm <= stop.gtol, Status.CONVERGED_GTOL, code)
    code = torch.where(~torch.isfinite(f), Status.NONFINITE, code)
    if stop.max_steps <= 0:
        code = torch.where(code == 0, Status.MAX_STEPS, code)
    return code
