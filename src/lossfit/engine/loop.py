"""The driver: runs a solver step by step over a batch, tests each problem's stopping rules, drops finished rows."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from lossfit.engine.problem import Problem
from lossfit.engine.result import History, Status
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
    have finished, so the batch (and the user's extra arguments) are re-indexed only now and then.
    """
    start = time.perf_counter()
    b = x0.shape[0]
    device = x0.device
    x = x0.clone()
    rows = torch.arange(b, device=device)
    state = solver.init(obj, x, rows)
    f_all = state.f.clone()
    f0 = state.f.clone()
    g0 = state.g.abs().amax(dim=1) if state.g is not None else None
    # A loss at rounding level of its start is zero: nothing is left to minimise (for losses bounded below by 0).
    zero_level = (torch.finfo(x0.dtype).eps ** 2) * f_all.abs() if obj.kind == "residual" else None
    status = _initial_status(state, stop)
    steps = torch.zeros(b, dtype=torch.long, device=device)
    taken = 0  # the steps every problem has taken while none has stopped
    shared = False
    window = solver.window
    past = state.f.unsqueeze(1).expand(b, window).clone()  # the loss over the last `window` steps, per row
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
                rows, past = rows[running], past[running]
                state = state.take(running)
                running = running[running]
            all_running = bool(running.all())
        everyone = all_running and rows.numel() == b  # no problem has stopped yet: rows are all of them, in order
        x_rows = x if everyone else x[rows]
        x_new, state, info = solver.step(obj, x_rows, state, rows)
        f = state.f
        if everyone:
            live = rows
            steps += 1
            taken += 1
            x, f_all, shared = x_new, f, True  # f_all is the solver's own tensor until problems stop
        else:
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
        # Loss change over the window (a step count below the window compares with the start).
        oldest = past[:, 0]
        if stop.ftol is not None:
            past = torch.cat([past[:, 1:], torch.where(info.accepted, f, past[:, -1]).unsqueeze(1)], dim=1)
        floor = None if zero_level is None else (zero_level[rows], f0[rows])
        count: torch.Tensor | int = taken if everyone else steps[rows]  # one count for all while every problem runs
        code = _stopping_codes(stop, info, f, oldest, x_rows, x_new, count, window, elapsed, floor, state.gm)
        done = code != Status.RUNNING if everyone else running & (code != Status.RUNNING)
        if bool(done.any()):
            status[rows[done]] = code[done]
            running = running & ~done
            all_running = False
            if info.evaluated is not None and obj.keep_final:
                final.keep(b, info.evaluated, done & info.accepted, rows)
    history = _history(trace, times, b, x0) if record else None
    return Outcome(x, f0, g0, f_all, status, steps, history, time.perf_counter() - start, final)


def _stopping_codes(
    stop: Stopping,
    info: StepInfo,
    f: torch.Tensor,
    oldest: torch.Tensor,
    x_old: torch.Tensor,
    x_new: torch.Tensor,
    step_count: torch.Tensor | int,
    window: int,
    elapsed: float,
    floor: tuple[torch.Tensor, torch.Tensor] | None,
    gm: torch.Tensor,
) -> torch.Tensor:
    """Each running problem's status after a step (``RUNNING`` where no rule holds); later rules win.

    ``oldest`` is the loss ``window`` steps ago; ``floor`` the rounding level of zero and the start's loss, for losses
    bounded below by 0 (None otherwise); ``gm`` the solver's gradient measure.
    """
    if isinstance(step_count, int):  # every problem at the same step
        code = torch.full_like(f, Status.MAX_STEPS if step_count >= stop.max_steps else 0, dtype=torch.long)
    else:
        code = (step_count >= stop.max_steps) * Status.MAX_STEPS
    if info.stalled is not None:
        code = torch.where(info.stalled & (code == 0), Status.STALLED, code)
    if stop.max_time is not None and elapsed >= stop.max_time:
        code = torch.where(code == 0, Status.MAX_TIME, code)
    if stop.xtol is not None:
        xtol_hit = info.accepted & (info.step_norm <= stop.xtol * (stop.xtol + x_new.norm(dim=1)))
        code = torch.where(xtol_hit, Status.CONVERGED_XTOL, code)
    if stop.ftol is not None:
        code = torch.where(
            _ftol_hit(stop.ftol, info, f, oldest, x_old, x_new, step_count, window), Status.CONVERGED_FTOL, code
        )
    if info.converged is not None:  # the solver's own test
        code = torch.where(info.converged, info.converged_as, code)
    if stop.gtol is not None:
        code = torch.where(gm <= stop.gtol, Status.CONVERGED_GTOL, code)
    if floor is not None:
        zero_level, f_start = floor
        at_zero = f <= zero_level
        # A step that cannot lower a loss already within rounding of zero (relative to the start) is done too.
        at_zero = at_zero | (~info.accepted & (f <= torch.finfo(f.dtype).eps * f_start.abs()))
        code = torch.where(at_zero, Status.CONVERGED_ZERO, code)
    return torch.where(torch.isfinite(f), code, Status.NONFINITE)


def _ftol_hit(
    ftol: float,
    info: StepInfo,
    f: torch.Tensor,
    oldest: torch.Tensor,
    x_old: torch.Tensor,
    x_new: torch.Tensor,
    step_count: torch.Tensor | int,
    window: int,
) -> torch.Tensor:
    """Where the loss changed by at most ``ftol`` times itself over the window (or, for a model-based step, both
    the predicted and the actual decrease are that small), with a step that is not still travelling."""
    scale = torch.maximum(oldest.abs(), f.abs())
    hit = info.accepted & ((oldest - f).abs() <= ftol * scale) & (step_count >= window)
    if info.predicted is not None and info.actual is not None:
        tiny = ftol * f.abs()
        hit = hit | ((info.predicted <= tiny) & (info.actual.abs() <= tiny))
    # A loss that has settled to ftol lies within about sqrt(ftol) of the minimiser, relative to each parameter; a
    # step still longer than that is slow (linear) convergence that has further to go, not convergence.
    root = ftol**0.5
    moved = ((x_new - x_old).abs() / (root + x_new.abs())).amax(dim=1)
    return hit & (moved <= root)


def _history(trace: list[tuple[torch.Tensor, ...]], times: list[float], b: int, like: torch.Tensor) -> History:
    n = len(trace)
    columns = list(zip(*(values for _, *values in trace), strict=True))
    if all(live.numel() == b for live, *_ in trace):  # no problem stopped before the last step: one stack each
        arrays = [torch.stack([v.detach().to(like.dtype) for v in column]) for column in columns]
    else:
        arrays = [torch.full((n, b), float("nan"), dtype=like.dtype, device=like.device) for _ in range(3)]
        for i, (live, *values) in enumerate(trace):
            for array, value in zip(arrays, values, strict=False):
                array[i, live] = value.detach().to(like.dtype)
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
