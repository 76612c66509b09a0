"""Report sections for the command line and the demo: a fit (with its data figure), a registration (matrix,
pyramid levels, before/after images) and the solver comparison on the gradient-descent matrix inverse.

Each function adds one section to a :class:`~lossfit.report.Report` and returns it; every string that reaches the
page (titles, notes, file names, the command line) is escaped by the report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lossfit.report import results
from lossfit.report.html import Report, Section

CONFIDENCE = 0.95


def fit_section(
    report: Report,
    title: str,
    result: Any,
    *,
    note: str | None = None,
    figure: Any = None,
    caption: str | None = None,
    matrix_caption: str | None = None,
    command: str | None = None,
) -> Section:
    """A fit's section: status and why it stopped, summary, parameters with standard errors, the comparison with the
    reference, the loss per step (log scale), confidence intervals where least squares gives them, the fitted matrix
    (for point alignment), ``figure`` (a matplotlib figure or PNG bytes, e.g. the data with the fit) and the command
    that produced it.
    """
    section = report.section(title, note=note)
    section.result(result)
    intervals = confidence_rows(result)
    if intervals:
        dof = int(getattr(result, "dof", 0))
        section.table(
            intervals, caption=f"{CONFIDENCE:.0%} confidence intervals (Student's t, {dof} degrees of freedom)"
        )
    matrix = getattr(result, "matrix", None)
    if isinstance(matrix, torch.Tensor) and matrix.dim() == 2:
        section.table(matrix_rows({"fitted": matrix}), caption=matrix_caption or "Fitted matrix")
    inliers = getattr(result, "inliers", None)
    if isinstance(inliers, torch.Tensor) and inliers.dim() == 1:
        section.text(f"{int(inliers.sum())} of {inliers.numel()} points were treated as inliers.")
    if figure is not None:
        section.figure(figure, caption=caption)
    if command:
        section.code(command)
    return section


def confidence_rows(result: Any, level: float = CONFIDENCE) -> list[dict[str, Any]]:
    """``parameter, value, stderr, lower, upper`` rows from a least-squares fit's confidence intervals; empty when
    the result has none (no covariance, no degrees of freedom, or a batch)."""
    interval = getattr(result, "confidence_interval", None)
    if interval is None or getattr(result, "stderr", None) is None or results.is_batch(result):
        return []
    try:
        bounds = interval(level)
    except ValueError:
        return []
    rows, _ = results.parameter_rows(result)
    if len(rows) != bounds.shape[0]:
        return []
    return [
        {**row, f"{level:.0%} lower": float(low), f"{level:.0%} upper": float(high)}
        for row, (low, high) in zip(rows, bounds.tolist(), strict=True)
    ]


def matrix_rows(matrices: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
    """One table row per matrix row: ``matrix, row, col 0, col 1, ...`` for each labelled matrix in turn."""
    rows: list[dict[str, Any]] = []
    for label, matrix in matrices.items():
        for i, values in enumerate(matrix.detach().cpu().double().tolist()):
            rows.append({"matrix": label, "row": i, **{f"col {j}": v for j, v in enumerate(values)}})
    return rows


def registration_section(
    report: Report,
    title: str,
    result: Any,
    before: Any,
    *,
    note: str | None = None,
    truth: torch.Tensor | None = None,
    error: Mapping[str, float] | None = None,
    figure: Any = None,
    command: str | None = None,
) -> Section:
    """A registration's section: status, summary, the matrix and its convention (beside the true one when known),
    the error against the truth, the transform parameters, the pyramid levels, the loss per step of each level
    (log scale) and the before/after checkerboards and differences (three orthogonal slices for 3-D); for a
    deformable mapping, the field's Jacobian determinant map and deformed grid too.

    ``before`` is the moving image resampled onto the fixed grid without a transform; ``figure`` (a matplotlib
    figure or PNG bytes) replaces the before/after figure drawn here.
    """
    from lossfit.plotting import plot_registration

    section = report.section(title, note=note)
    section.status(success=bool(result.success), status=result.status, message=results.message(result))
    section.table(results.summary_rows(result), caption="Summary")
    matrices = {"recovered": result.matrix}
    if truth is not None:
        matrices["true"] = truth
        matrices["difference"] = result.matrix - truth.to(result.matrix)
    section.table(matrix_rows(matrices), caption="Matrix: fixed world -> moving world (homogeneous, LPS, mm)")
    section.text(
        "The matrix maps points of the fixed image's world space (LPS, millimetres) to the moving image's world "
        "space, which is what resampling the moving image onto the fixed grid needs; its inverse maps back."
    )
    if error:
        section.table(
            [{"quantity": f"{key} (mm)", "value": float(value)} for key, value in error.items()],
            caption="Distance between the recovered and the true transform over the image (mm)",
        )
    rows, _ = results.parameter_rows(result)
    if rows:
        section.table(rows, caption=f"Transform parameters ({result.transform}; lossfit's parametrisation)")
    checks = result.checks if isinstance(result.checks, list) else [result.checks]
    if checks and checks[0]:
        section.table(check_rows(checks[0]), caption="Independent check of the answer (first pair)")
    if result.levels:
        section.table(level_rows(result.levels), caption="Pyramid levels, coarse to fine")
        section.figure(levels_figure(result.levels), caption="Loss per step at each pyramid level (log scale)")
    if figure is None:
        figure = plot_registration(result.fixed, before, result.warped, f"{result.transform} / {result.metric}")
    section.figure(
        figure,
        caption="Before and after: checkerboards of the fixed and moving images, and their absolute differences",
    )
    if getattr(result, "displacement", None) is not None:
        section.figure(
            deformation_figure(result),
            caption="The field beyond the affine stage: its Jacobian determinant (1: no change of volume; blue "
            "compresses, red expands, black folds) and the fixed grid's lines where the field moves them",
        )
    if command:
        section.code(command)
    return section


def deformation_figure(result: Any, pair: int = 0) -> Any:
    """The Jacobian determinant map and the deformed grid of a deformable registration's field part (its affine
    stage left out), on pair ``pair``'s fixed grid (:func:`lossfit.plotting.plot_deformation`)."""
    from lossfit.plotting import plot_deformation

    fixed = result.fixed[pair] if isinstance(result.fixed, list) else result.fixed
    return plot_deformation(fixed, result.local_displacement(pair), f"{result.transform} / {result.metric}")


_CHECKS = {
    "overlap_start": "overlap at the start (fraction of fixed voxels inside the moving image)",
    "overlap": "overlap at the answer",
    "metric_start": "metric over the whole fixed grid at the start (lower is better)",
    "metric_answer": "metric over the whole fixed grid at the answer",
    "metric_constant": "mean squares against a constant image (the variance a match must explain; NaN: n/a)",
    "objective": "the solver's objective at the answer (its samples)",
    "objective_independent": "the same, recomputed through the moving image's own geometry",
    "determinant": "determinant of the linear part",
    "folded_fraction": "folded fraction of the field (Jacobian determinant <= 0)",
}


def check_rows(checks: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``check, value`` for a registration's independent check (affine or deformable: the entries it has), in
    words, with the verdict last."""
    rows: list[dict[str, Any]] = [
        {"check": text, "value": float(checks[key])} for key, text in _CHECKS.items() if key in checks
    ]
    if "objective_independent_range" in checks:
        low, high = checks["objective_independent_range"]
        rows.append({"check": "the range the objective must lie in (border voxels counted or not)",
                     "value": f"{low:.6g}, {high:.6g}"})  # fmt: skip
    if "singular_values" in checks:
        low, high = checks["singular_values"]
        rows.append({"check": "smallest and largest singular value of the linear part",
                     "value": f"{low:.4g}, {high:.4g}"})  # fmt: skip
    rows.append({"check": "verdict", "value": "passed" if checks["passed"] else f"failed: {checks['failed']}"})
    return rows


def level_rows(levels: Sequence[Any]) -> list[dict[str, Any]]:
    """``level, shrink, smoothing, samples, steps, status, time (s)`` for each pyramid level."""
    return [
        {
            "level": i + 1,
            "shrink": int(level.shrink),
            "smoothing (voxels)": float(level.sigma),
            "samples": int(level.samples),
            "steps": int(level.steps),
            "status": ", ".join(results.status_name(s) for s in level.status),
            "time (s)": float(level.time),
        }
        for i, level in enumerate(levels)
    ]


def levels_figure(levels: Sequence[Any]) -> Any:
    """The loss per step of each pyramid level (first pair), one line each, steps counted across levels."""
    from lossfit.plotting import pyplot

    fig, ax = pyplot().subplots(figsize=(6, 3.6))
    offset = 0
    for i, level in enumerate(levels):
        loss = torch.as_tensor(level.loss).detach().cpu().double().reshape(len(level.loss), -1)[:, 0]
        steps = torch.arange(offset, offset + len(loss))
        keep = torch.isfinite(loss) & (loss > 0)
        label = f"level {i + 1}: 1/{level.shrink}, {level.samples} samples"
        ax.plot(steps[keep].numpy(), loss[keep].numpy(), marker="o", ms=3, label=label)
        offset += max(len(loss) - 1, 1)
    ax.set_yscale("log")
    ax.set_xlabel("step (across levels)")
    ax.set_ylabel("loss")
    ax.set_title("loss per step, each pyramid level")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def inverse_solver_rows(runs: Sequence[Any], targets: Sequence[float] = (1e-6,)) -> list[dict[str, Any]]:
    """One row per run of :func:`lossfit.experiments.compare_inverse_solvers`: what ran, how it ended and why, the
    steps and milliseconds to each target relative residual, the final residual and the error against
    ``torch.linalg``."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {
            "matrix": run.matrix,
            "solver": run.result.solver.name,
            "steps": int(run.result.num_steps),
            "status": results.status_name(run.result.status),
        }
        for target in targets:
            seconds = run.seconds_to.get(target)
            row[f"steps to {_power(target)}"] = run.steps_to.get(target)
            row[f"ms to {_power(target)}"] = None if seconds is None else seconds * 1e3
        row["final residual"] = float(run.relative_residual[-1])
        reference = run.result.reference or {}
        row["error vs torch.linalg"] = reference.get("error_vs_torch")
        rows.append(row)
    return rows


def inverse_solvers_section(
    report: Report,
    title: str,
    runs: Sequence[Any],
    *,
    note: str | None = None,
    figure: Any = None,
    caption: str | None = None,
    targets: Sequence[float] = (1e-6,),
    badges: Sequence[str] = ("auto", "newton-schulz"),
    command: str | None = None,
) -> Section:
    """The matrix inverse's solver comparison: a status badge for each run of a solver named in ``badges``
    (lossfit's default), the comparison table (status, steps and time to each target residual, final residual,
    error against ``torch.linalg``), why each run stopped, and ``figure`` (the residual per step and per
    millisecond)."""
    section = report.section(title, note=note)
    for run in runs:
        if run.solver in badges:
            section.status(
                success=bool(run.result.success),
                status=run.result.status,
                message=f"{run.matrix}, {run.result.solver.name}: {results.message(run.result)}",
            )
    rows = [
        {key: ("not reached" if value is None and key.startswith("steps to") else value) for key, value in row.items()}
        for row in inverse_solver_rows(runs, targets)
    ]
    section.table(rows, caption="Relative residual ||X M - I|| / ||I|| by solver")
    reasons = [f"{run.matrix}, {run.result.solver.name}: {results.message(run.result)}" for run in runs]
    section.text("Why each run stopped:\n" + "\n".join(reasons))
    if figure is not None:
        section.figure(figure, caption=caption)
    if command:
        section.code(command)
    return section


def _power(value: float) -> str:
    """``1e-6`` rather than Python's ``1e-06``."""
    return f"{value:g}".replace("e-0", "e-").replace("e+0", "e+")
