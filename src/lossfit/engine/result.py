"""The result of a fit: :class:`FitResult`, its :class:`Status` and its :class:`History`."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

import torch


class Status(enum.IntEnum):
    """Why a solver stopped. Each member carries its own message and whether it counts as success."""

    RUNNING = 0
    CONVERGED_FTOL = 1
    CONVERGED_XTOL = 2
    CONVERGED_GTOL = 3
    MAX_STEPS = 4
    MAX_TIME = 5
    NONFINITE = 6
    STALLED = 7
    SUSPECT_GRADIENT = 8
    SINGULAR = 9
    RANK_DEFICIENT = 10
    CONVERGED_ZERO = 11
    CONVERGED_PRECISION = 12
    NO_OVERLAP = 13
    DEGENERATE = 14
    WORSE_THAN_START = 15
    CHECK_MISMATCH = 16
    POOR_MATCH = 17
    INACCURATE = 18
    FOLDED = 19

    @property
    def success(self) -> bool:
        """True for the members that mean the answer is a verified minimum."""
        return self in (
            Status.CONVERGED_FTOL,
            Status.CONVERGED_XTOL,
            Status.CONVERGED_GTOL,
            Status.CONVERGED_ZERO,
            Status.CONVERGED_PRECISION,
        )

    @property
    def message(self) -> str:
        """A sentence that says why the solver stopped and, where it failed, what to change."""
        return _MESSAGES[self]


_MESSAGES = {
    Status.RUNNING: "the solver has not finished",
    Status.CONVERGED_FTOL: "converged: the relative change of the loss fell below `ftol`",
    Status.CONVERGED_XTOL: "converged: the relative step fell below `xtol`",
    Status.CONVERGED_GTOL: "converged: the gradient fell below `gtol`",
    Status.CONVERGED_ZERO: "converged: the loss fell to zero, within rounding of its starting value",
    Status.MAX_STEPS: "maximum number of steps reached; increase `max_steps`",
    Status.MAX_TIME: "time limit reached; increase `max_time`",
    Status.NONFINITE: "the loss or its gradient became NaN or infinite; check the model and the starting point",
    Status.STALLED: "no step could decrease the loss any further, but the gradient is not small; try another solver",
    Status.SUSPECT_GRADIENT: (
        "the solver stopped, but the gradient at the answer is still large: it is not a verified minimum; "
        "tighten the tolerances or try another solver"
    ),
    Status.SINGULAR: (
        "converged, but the Jacobian at the answer is numerically singular: some parameters are not determined "
        "by the data (their standard errors are infinite)"
    ),
    Status.CONVERGED_PRECISION: (
        "converged: no step lowers the sampled metric any more, and the last steps moved the image by under 2% of "
        "a voxel (the metric's own precision)"
    ),
    Status.NO_OVERLAP: (
        "the images overlap too little at the answer (see checks['overlap']): the solver ran off the image; check "
        "the images' geometry and the start (`init`, `initial`), or use a metric that fits the contrasts "
        "(mean squares needs the same intensities: try 'ncc' or 'mi')"
    ),
    Status.DEGENERATE: (
        "the transform at the answer collapses, stretches or mirrors the image (see checks['singular_values'] and "
        "checks['determinant']): not a plausible alignment; try a simpler transform, a better start or masks"
    ),
    Status.WORSE_THAN_START: (
        "the answer matches the images worse than the start, measured over the whole fixed grid (see "
        "checks['metric_start'] and checks['metric_answer']); try more `samples`, another metric or masks"
    ),
    Status.POOR_MATCH: (
        "the images do not match at the answer: mean squares there explains less than half of the fixed image's "
        "variance (see checks['metric_answer'] and checks['metric_constant']); "
        "if the contrasts differ, use 'ncc' (a linear change) or 'mi' (any change)"
    ),
    Status.CHECK_MISMATCH: (
        "the solver's objective disagrees with an independent evaluation at the answer (see checks); the answer "
        "cannot be trusted: please report this with the images' geometry"
    ),
    Status.INACCURATE: (
        "the answer's residual is more than ten times what torch.linalg's direct factorisation reaches on the same "
        "problem (see reference): it is not as accurate as the matrix allows; try solver='auto'"
    ),
    Status.FOLDED: (
        "the deformation folds: its Jacobian determinant is zero or negative at some voxels (see "
        "checks['folded_fraction']), so it is not a one-to-one map; raise the regularisation or use "
        "transform='svf' (diffeomorphic)"
    ),
    Status.RANK_DEFICIENT: (
        "the matrix is numerically rank deficient, so no exact answer exists; the result is the minimum-norm "
        "least-squares answer (see extras['smallest_singular_value'])"
    ),
}


def overall(statuses: tuple[Status, ...]) -> tuple[bool, Status]:
    """A call's ``success`` and ``status`` from its problems' statuses: success when every problem succeeded; the
    status of the first failing problem, else the first one's. The one rule every result follows."""
    failing = next((s for s in statuses if not s.success), None)
    return failing is None, statuses[0] if failing is None else failing


@dataclass(frozen=True)
class History:
    """What happened at each step. Row 0 is the start and row ``k`` the state after step ``k``; a batch has one
    column per problem.

    Attributes:
        loss: the loss, shape ``(steps + 1,)`` or ``(steps + 1, B)``; NaN once a problem has stopped.
        grad_norm: the infinity norm of the gradient after each step, same shape.
        step_norm: the norm of each step taken, same shape (0 for a rejected step).
        time: seconds since the solver started, shape ``(steps + 1,)``.
    """

    loss: torch.Tensor
    grad_norm: torch.Tensor
    step_norm: torch.Tensor
    time: torch.Tensor

    def __len__(self) -> int:
        return int(self.loss.shape[0])


@dataclass(frozen=True)
class SolverInfo:
    """The solver that ran, with the options it used, and why it was chosen when ``solver="auto"``."""

    name: str
    options: dict[str, Any]
    reason: str = ""


@dataclass(frozen=True)
class FitResult:
    """The outcome of :func:`lossfit.minimize`, :func:`lossfit.least_squares` or a family function.

    For a single problem the tensors are 0-d (``float(result.loss)`` works); for a batch of ``B`` problems they have
    shape ``(B,)`` and ``params`` carries the leading batch dimension. ``success`` and ``status`` always summarise
    the whole call (every problem must succeed; the status is the first failing problem's), and
    ``statuses`` lists each problem's own status.

    Attributes:
        params: the fitted parameters, in the structure given (a tensor or a dict of tensors).
        loss: the final loss (for least squares ``0.5 * sum(rho(r**2))``).
        success: True when every problem converged to a verified minimum.
        status: a :class:`Status`; ``status.message`` says why the solver stopped.
        statuses: the status of each problem.
        num_steps: the steps taken (the most over a batch); ``steps`` has them per problem.
        num_evals: evaluations of the loss or residual function (each one over the active batch counts once).
        history: a :class:`History`, or None when ``history=False``.
        solver: the solver used, with its options.
        reference: where the answer has a closed form, the comparison with it (a dict of floats).
        residuals: the residuals at the answer, for least squares.
        jacobian: the Jacobian at the answer, for dense least squares.
        covariance: the covariance of the parameters, for least squares with a non-singular Jacobian.
        extras: anything a family adds (for example the singular values of an SVD).
    """

    params: Any
    loss: torch.Tensor
    success: bool
    status: Status
    statuses: tuple[Status, ...]
    steps: torch.Tensor
    num_steps: int
    num_evals: int
    history: History | None
    solver: SolverInfo
    time: float
    reference: dict[str, float] | None = None
    residuals: torch.Tensor | None = None
    jacobian: torch.Tensor | None = None
    covariance: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def message(self) -> str:
        """The status message, with the count of failing problems in a batch."""
        failing = [s for s in self.statuses if not s.success]
        if len(self.statuses) > 1 and failing:
            return f"{len(failing)} of {len(self.statuses)} problems failed; first: {self.status.message}"
        return self.status.message

    @property
    def stderr(self) -> torch.Tensor | None:
        """Standard errors of the flattened parameters (square roots of the covariance's diagonal)."""
        if self.covariance is None:
            return None
        return torch.diagonal(self.covariance, dim1=-2, dim2=-1).clamp_min(0).sqrt()

    def summary(self) -> str:
        """A few lines for a person: status, loss, steps, time, solver and the reference check."""
        loss = self.loss.max().item() if self.loss.numel() else float("nan")
        lines = [
            f"status:  {self.status.name.lower()} ({'success' if self.success else 'FAILED'}): {self.message}",
            f"loss:    {loss:.6g}" + (" (largest in batch)" if self.loss.ndim else ""),
            f"steps:   {self.num_steps}   evaluations: {self.num_evals}   time: {self.time:.4g} s",
            f"solver:  {self.solver.name}" + (f" ({self.solver.reason})" if self.solver.reason else ""),
        ]
        rows = self._matrix_rows()
        table = "" if rows else self._params_table()
        if rows:
            lines.append(f"params:  a {' x '.join(map(str, self.params.shape))} matrix, by rows:")
            lines += ["  " + row for row in rows]
        if table:
            lines.append("params:  " + table)
        if self.reference:
            lines.append("reference: " + ", ".join(f"{k}={_fmt(v)}" for k, v in self.reference.items()))
        return "\n".join(lines)

    def _matrix_rows(self, limit: int = 12) -> list[str]:
        """A single problem's matrix parameter (one 2-D tensor of at most ``limit`` rows and columns) as aligned
        rows of numbers, else []."""
        p = self.params
        if len(self.statuses) != 1 or not isinstance(p, torch.Tensor) or p.dim() != 2 or max(p.shape) > limit:
            return []
        cells = [[f"{v:.8g}" for v in row] for row in p.detach().cpu().tolist()]
        width = max(len(c) for row in cells for c in row)
        return ["[ " + "  ".join(c.rjust(width) for c in row) + " ]" for row in cells]

    def _params_table(self, limit: int = 20) -> str:
        """``name=value +- stderr`` for up to ``limit`` parameter values of a single problem, else ''."""
        if len(self.statuses) != 1:
            return ""
        items = self.params.items() if isinstance(self.params, dict) else [("p", self.params)]
        names: list[str] = []
        values: list[float] = []
        for name, value in items:
            flat = value.detach().reshape(-1)
            names += [name] if flat.numel() == 1 else [f"{name}[{i}]" for i in range(flat.numel())]
            values += flat.tolist()
        if not values or len(values) > limit:
            return ""
        errors = self.stderr.reshape(-1).tolist() if self.stderr is not None else [None] * len(values)
        if len(errors) != len(values):
            errors = [None] * len(values)
        return ", ".join(
            f"{n}={v:.8g}" + (f" +- {e:.3g}" if e is not None and math.isfinite(e) else "")
            for n, v, e in zip(names, values, errors, strict=True)
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe summary (parameters as nested lists; NaN and infinity as None)."""
        return {
            "success": self.success,
            "status": self.status.name.lower(),
            "message": self.message,
            "statuses": [s.name.lower() for s in self.statuses],
            "loss": _json(self.loss),
            "params": _json(self.params),
            "num_steps": self.num_steps,
            "num_evals": self.num_evals,
            "time": self.time,
            "solver": {"name": self.solver.name, "reason": self.solver.reason, "options": _json(self.solver.options)},
            "reference": _json(self.reference),
            "stderr": _json(self.stderr),
        }


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _json(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, torch.Tensor):
        return _json(value.detach().cpu().tolist())
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.name.lower()
    return str(value)


def build_result(
    *,
    params: Any,
    loss: torch.Tensor,
    statuses: tuple[Status, ...],
    steps: torch.Tensor,
    batch: bool,
    num_evals: int,
    solver: SolverInfo,
    time: float,
    history: History | None = None,
    num_steps: int | None = None,
    residuals: torch.Tensor | None = None,
    jacobian: torch.Tensor | None = None,
    covariance: torch.Tensor | None = None,
    result_type: type[FitResult] = FitResult,
    **fields: Any,
) -> Any:
    """The one place a result is put together, for every solver and family.

    The per-problem values come with a leading batch axis (``loss``, ``steps``, ``residuals``, ``jacobian``,
    ``covariance``: ``(B, ...)``; ``history``: one column per problem); for a single problem (``batch=False``) that
    axis is dropped. ``success`` and ``status`` follow :func:`overall`; ``num_steps`` defaults to the most steps of
    any problem. ``params`` come as the caller's structure already; ``result_type`` (a :class:`FitResult` subclass)
    and ``fields`` add what a family keeps besides (a registration's matrix and images).
    """

    def one(value: torch.Tensor | None) -> torch.Tensor | None:
        return value if value is None or batch else value[0]

    if history is not None and not batch:
        history = History(history.loss[:, 0], history.grad_norm[:, 0], history.step_norm[:, 0], history.time)
    success, status = overall(statuses)
    return result_type(
        params=params,
        loss=loss.detach() if batch else loss.detach()[0],
        success=success,
        status=status,
        statuses=statuses,
        steps=steps if batch else steps[0],
        num_steps=int(steps.max()) if num_steps is None else num_steps,
        num_evals=num_evals,
        history=history,
        solver=solver,
        time=time,
        residuals=one(residuals),
        jacobian=one(jacobian),
        covariance=one(covariance),
        **fields,
    )
