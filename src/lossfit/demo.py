"""``lossfit demo``: the demonstrations, on data made here or shipped with the installed packages (nothing is
downloaded).

Five parts, each written as pictures beside ``report.html``: a matrix inverse by gradient descent (as a blog post
derives it) with a comparison of solvers, a point alignment with 40% outliers, a curve fit with uncertainties,
pydicom's CT slice registered back from a known affine warp, and the same slice registered back from a known smooth
(deformable) warp.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from lossfit import transforms
from lossfit.experiments import compare_inverse_solvers, plot_inverse_solvers
from lossfit.models import curve_fit
from lossfit.plotting import pyplot, save_figure
from lossfit.points import align
from lossfit.report import Report
from lossfit.report.sections import (
    fit_section,
    inverse_solver_rows,
    inverse_solvers_section,
    matrix_rows,
    registration_section,
)

PARTS = 5
REPORT_NAME = "report.html"


@dataclass(frozen=True)
class Demo:
    """What ``lossfit demo`` did.

    Attributes:
        parts: each part's key figures (JSON-safe), by part name: ``inverse``, ``align``, ``curve``,
            ``registration``, ``deformable``.
        files: the files written, by name (the pictures and ``report``).
        success: True when every one of lossfit's own fits converged (the post's method and the first-order
            solvers in the comparison are expected to stop at their step limit).
        time: seconds for the whole demo.
    """

    parts: dict[str, dict[str, Any]]
    files: dict[str, Path]
    success: bool
    time: float = 0.0
    summary: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe summary: success, time, each part's key figures and the files written."""
        return {
            "success": self.success,
            "time_s": self.time,
            "parts": self.parts,
            "files": {name: str(path) for name, path in self.files.items()},
        }


def run_demo(
    out: Path,
    console: Console | None = None,
    *,
    report_dir: Path | None = None,
    command: str = "lossfit demo",
) -> Demo:
    """Run the five demonstrations, write their pictures into ``out`` and the HTML report into
    ``report_dir/report.html`` (``out/report.html`` by default); print progress, the details and a summary table
    on ``console``.

    Returns:
        A :class:`Demo` with each part's key figures and the paths written.
    """
    start = time.perf_counter()
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=120)  # a pipe or a log: do not cut the table to 80 columns
    out.mkdir(parents=True, exist_ok=True)
    report = Report(title="lossfit demo")
    overview = report.section("Summary", note="Each part of the demo in one line; the sections below give details.")
    files: dict[str, Path] = {}
    parts: dict[str, dict[str, Any]] = {}
    summary: list[dict[str, str]] = []
    for name, part in (
        ("inverse", _inverse_part),
        ("align", _alignment_part),
        ("curve", _curve_part),
        ("registration", _registration_part),
        ("deformable", _deformable_part),
    ):
        seconds = time.perf_counter()
        figures, written, row = part(out, console, report)
        figures["time_s"] = time.perf_counter() - seconds
        parts[name] = figures
        files.update(written)
        summary.append({**row, "time (s)": f"{figures['time_s']:.1f}"})
    overview.table(summary)
    overview.code(command)
    folder = report_dir if report_dir is not None else out
    folder.mkdir(parents=True, exist_ok=True)
    files["report"] = report.save(folder / REPORT_NAME)
    success = all(bool(figures["success"]) for figures in parts.values())
    demo = Demo(parts, files, success, time.perf_counter() - start, summary)
    table = Table(title=f"lossfit demo: {demo.time:.1f} s")
    for column in summary[0]:
        table.add_column(column)
    for row in summary:
        table.add_row(*row.values())
    console.print(table)
    for name, path in files.items():
        console.print(f"wrote {name}: {path}")
    return demo


@contextmanager
def _working(console: Console, number: int, text: str) -> Iterator[None]:
    with console.status(f"[{number}/{PARTS}] {text}"):
        yield


Part = tuple[dict[str, Any], dict[str, Path], dict[str, str]]


def _inverse_part(out: Path, console: Console, report: Report) -> Part:
    with _working(console, 1, "the inverse as published: SGD, lr 0.9, momentum 0.9, 10,000 steps, float32"):
        faithful = compare_inverse_solvers(("gd",), 10_000, torch.float32)
    files = {"inverse": out / "inverse-sgd.png", "solvers": out / "inverse-solvers.png"}
    save_figure(
        plot_inverse_solvers(faithful, "The inverse by SGD as published (lr 0.9, momentum 0.9), float32"),
        str(files["inverse"]),
    )
    with _working(console, 1, "the same inverses with five solvers, float64"):
        compared = compare_inverse_solvers(
            ("gd", "adam", "lbfgs", "lm", "auto"), 10_000, torch.float64, targets=(1e-6, 1e-12)
        )
    save_figure(plot_inverse_solvers(compared, "The same loss, five solvers (float64)"), str(files["solvers"]))
    table = Table(title="X M = I by optimisation (the post's matrices, float64)")
    for column in ("matrix", "solver", "steps", "status", "steps to 1e-6", "ms to 1e-6", "final residual"):
        table.add_column(column)
    for run in compared:
        ms = run.seconds_to[1e-6]
        table.add_row(
            run.matrix,
            run.result.solver.name,
            str(run.result.num_steps),
            run.result.status.name.lower(),
            str(run.steps_to[1e-6]) if run.steps_to[1e-6] is not None else "not reached",
            f"{ms * 1e3:.2f}" if ms is not None else "-",
            f"{float(run.relative_residual[-1]):.2e}",
        )
    console.print(table)
    inverse_solvers_section(
        report,
        "Matrix inverse by gradient descent, as published",
        faithful,
        note=(
            "X M = I by minimising mean((X M - I)**2) with the post's own method: SGD (lr 0.9, momentum 0.9) in "
            "float32 from its random start, at most 10,000 steps with every tolerance 0 (a run stops early only "
            "when its loss no longer changes at all)."
        ),
        figure=files["inverse"].read_bytes(),
        caption="Relative residual per step and per millisecond (log scales)",
    )
    inverse_solvers_section(
        report,
        "Matrix inverse: five solvers on the same loss",
        compared,
        note="The same two matrices in float64; gd is the post's method, auto is lossfit's default (Newton-Schulz).",
        figure=files["solvers"].read_bytes(),
        caption="Relative residual per step and per millisecond (log scales)",
        targets=(1e-6, 1e-12),
    )
    default = [run for run in compared if run.solver == "auto"]
    seed = [run for run in faithful if run.solver == "gd"]
    figures = {
        "success": all(run.result.success for run in default),
        "published": inverse_solver_rows(seed),
        "solvers": inverse_solver_rows(compared, (1e-6, 1e-12)),
    }
    steps = ", ".join(
        f"{run.matrix}: {_steps(run)} (the post's SGD: {_steps(old)})" for run, old in zip(default, seed, strict=True)
    )
    row = {
        "part": "4x4 inverse by optimisation",
        "status": ", ".join(run.result.status.name.lower() for run in default),
        "key figures": f"steps to residual 1e-6 with lossfit's default, {steps}",
    }
    return figures, files, row


def _steps(run: Any) -> str:
    steps = run.steps_to.get(1e-6)
    return str(steps) if steps is not None else "not reached"


def _alignment_part(out: Path, console: Console, report: Report) -> Part:
    with _working(console, 2, "a similarity transform from 60 point pairs, 40% of them outliers"):
        g = torch.Generator().manual_seed(0)
        truth = transforms.matrix("similarity", torch.tensor([0.35, 2.0, -1.0, 0.15], dtype=torch.float64), 2)
        src = 10 * torch.rand(60, 2, generator=g, dtype=torch.float64)
        dst = transforms.apply(truth, src) + 0.02 * torch.randn(60, 2, generator=g, dtype=torch.float64)
        bad = torch.zeros(60, dtype=torch.bool)
        bad[torch.randperm(60, generator=g)[:24]] = True
        dst[bad] += 6 * torch.randn(24, 2, generator=g, dtype=torch.float64)
        robust = align(src, dst, model="similarity", loss="cauchy")
        plain = align(src, dst, model="similarity")
    assert robust.matrix is not None and plain.matrix is not None and robust.inliers is not None
    error = float((robust.matrix - truth).abs().max())
    plain_error = float((plain.matrix - truth).abs().max())
    right = int((robust.inliers == ~bad).sum())
    console.print(
        f"alignment, 40% outliers: robust fit {robust.status.name.lower()}, largest matrix error {error:.1e} "
        f"(least squares: {plain_error:.1e}); {right} of 60 points classified right"
    )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    mapped = transforms.apply(robust.matrix, src)
    ax.scatter(dst[~bad, 0], dst[~bad, 1], s=18, label="destination (inliers)")
    ax.scatter(dst[bad, 0], dst[bad, 1], s=18, marker="x", label="destination (outliers)")
    ax.scatter(mapped[:, 0], mapped[:, 1], s=40, facecolors="none", edgecolors="k", label="source mapped (Cauchy fit)")
    least = transforms.apply(plain.matrix, src)
    ax.scatter(least[:, 0], least[:, 1], s=8, alpha=0.5, label="source mapped (least squares)")
    ax.set_title(f"Similarity from points with 40% outliers: max matrix error {error:.1e}")
    ax.legend(fontsize=7)
    path = out / "align.png"
    save_figure(fig, str(path))
    section = fit_section(
        report,
        "Point alignment with 40% outliers",
        robust,
        note=(
            "A similarity transform (angle 0.35 rad, scale e^0.15, shift (2, -1)) from 60 point pairs with noise "
            "0.02, 24 of them moved by about 6 units: a least-median-of-squares start, then a Cauchy fit on each "
            "point's distance."
        ),
        figure=path.read_bytes(),
        caption="Destination points and the source points mapped by the robust and the least-squares fits",
        matrix_caption="Fitted matrix: maps source points onto destination points (homogeneous)",
    )
    section.table(
        [
            {"fit": "Cauchy (lossfit.align, loss='cauchy')", "largest matrix error": error, "points right": right},
            {"fit": "least squares (loss='mse')", "largest matrix error": plain_error, "points right": None},
        ],
        caption="Against the true matrix",
    )
    section.table(matrix_rows({"true": truth}), caption="True matrix")
    figures = {
        "success": robust.success,
        "status": robust.status.name.lower(),
        "max_matrix_error": error,
        "least_squares_max_matrix_error": plain_error,
        "points_classified_right": right,
        "points": 60,
    }
    row = {
        "part": "point alignment, 40% outliers",
        "status": robust.status.name.lower(),
        "key figures": f"matrix error {error:.1e} (least squares {plain_error:.1e}); {right}/60 points classified",
    }
    return figures, {"align": path}, row


def _curve_part(out: Path, console: Console, report: Report) -> Part:
    with _working(console, 3, "a curve fit with standard errors"):
        g = torch.Generator().manual_seed(1)
        x = torch.linspace(0, 5, 40, dtype=torch.float64)
        y = 2.5 * (1 - torch.exp(-0.8 * x)) + 0.03 * torch.randn(40, generator=g, dtype=torch.float64)
        fit = curve_fit(
            lambda x, p: p["a"] * (1 - torch.exp(-p["b"] * x)),
            x,
            y,
            {"a": torch.tensor(1.0, dtype=torch.float64), "b": torch.tensor(1.0, dtype=torch.float64)},
        )
    assert fit.stderr is not None
    ci = fit.confidence_interval(0.95).tolist()
    a, b = float(fit.params["a"]), float(fit.params["b"])
    da, db = float(fit.stderr[0]), float(fit.stderr[1])
    console.print(
        f"curve fit y = a (1 - exp(-b x)): {fit.status.name.lower()}; "
        + ", ".join(
            f"{n} = {v:.4f} (95% CI {lo:.4f} .. {hi:.4f})" for n, v, (lo, hi) in zip("ab", (a, b), ci, strict=True)
        )
    )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, y, "o", ms=4, label="data")
    fine = torch.linspace(0, 5, 200, dtype=torch.float64)
    ax.plot(fine, fit.params["a"] * (1 - torch.exp(-fit.params["b"] * fine)), label="fit")
    ax.set_title(f"a = {a:.3f} +- {da:.3f}, b = {b:.3f} +- {db:.3f}")
    ax.legend()
    path = out / "curve.png"
    save_figure(fig, str(path))
    fit_section(
        report,
        "Curve fit with uncertainties",
        fit,
        note="y = a (1 - exp(-b x)) through 40 points made with a = 2.5, b = 0.8 and noise 0.03, from a = b = 1.",
        figure=path.read_bytes(),
        caption="The data and the fitted curve",
    )
    figures = {
        "success": fit.success,
        "status": fit.status.name.lower(),
        "params": {"a": a, "b": b},
        "stderr": {"a": da, "b": db},
        "ci95": {"a": ci[0], "b": ci[1]},
        "truth": {"a": 2.5, "b": 0.8},
    }
    row = {
        "part": "curve fit y = a (1 - exp(-b x))",
        "status": fit.status.name.lower(),
        "key figures": f"a = {a:.3f} +- {da:.3f}, b = {b:.3f} +- {db:.3f} (true 2.5, 0.8)",
    }
    return figures, {"curve": path}, row


def _registration_part(out: Path, console: Console, report: Report) -> Part:
    """pydicom's CT_small slice, warped by a known affine transform (7 degrees, 5% stretch, 4 mm) and registered
    back with mean squares; the recovered matrix is compared with the true one."""
    import pydicom
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lossfit.plotting import plot_registration
    from lossfit.registration import Image, displacement, load_image, register, resample

    fixed = load_image(str(pydicom.data.get_testdata_file("CT_small.dcm")))
    centre = torch.tensor(fixed.center, dtype=torch.float64)
    angle = torch.tensor(7.0, dtype=torch.float64).deg2rad()
    linear = torch.stack(
        [torch.stack([1.05 * angle.cos(), -angle.sin()]), torch.stack([angle.sin(), 0.97 * angle.cos()])]
    )
    warp = torch.eye(3, dtype=torch.float64)
    warp[:2, :2] = linear
    warp[:2, 2] = centre - linear @ centre + torch.tensor([4.0, -3.0], dtype=torch.float64)
    # The moving slice on a grid of its own, as a second scan would be: 0.8 x 0.75 mm pixels, turned 20 degrees,
    # a field of view that cuts off part of the body. moving(y) = fixed(warp y): the answer is warp^-1.
    turn = torch.tensor(20.0, dtype=torch.float64).deg2rad()
    direction = torch.stack([torch.stack([turn.cos(), -turn.sin()]), torch.stack([turn.sin(), turn.cos()])])
    spacing = torch.tensor([0.8, 0.75], dtype=torch.float64)
    size = torch.tensor([100.0, 96.0], dtype=torch.float64)
    origin = centre - direction @ (spacing * (size - 1) / 2)
    grid = Image(
        torch.zeros(96, 100), spacing=tuple(spacing.tolist()), origin=tuple(origin.tolist()), direction=direction
    )
    moving = resample(fixed, grid, warp)
    assert not isinstance(moving, tuple)
    before = resample(moving, fixed)  # the moving slice on the fixed grid, untransformed: the "before" pictures
    assert not isinstance(before, tuple)
    truth = torch.linalg.inv(warp)
    columns = (TextColumn(f"[4/{PARTS}] {{task.description}}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("a CT slice warped by a known affine transform, registered back", total=None)

        def progress(level: int, count: int) -> None:
            bar.update(task, total=count, completed=level, description=f"registering: pyramid level {level + 1}")

        result = register(fixed, moving, "affine", "mse", progress=progress)
    assert result.matrix is not None
    body = fixed.data > fixed.data.min() + 0.1 * (fixed.data.max() - fixed.data.min())
    error = displacement(result.matrix, truth, fixed, body)
    steps = sum(level.steps for level in result.levels)
    console.print(
        f"registration of CT_small.dcm (affine, mean squares): {result.status.name.lower()} in "
        f"{steps} steps over {len(result.levels)} levels, {result.time:.2f} s; "
        f"error against the true transform over the body: mean {error['mean']:.3f} mm, "
        f"95th percentile {error['p95']:.3f} mm (pixel {fixed.spacing[0]:.2f} mm)"
    )
    table = Table(title="CT_small: recovered and true matrix (fixed world -> moving world, LPS mm)")
    for column in ("row", "recovered", "true"):
        table.add_column(column)
    for i in range(3):
        table.add_row(
            str(i),
            "  ".join(f"{v: .4f}" for v in result.matrix[i].tolist()),
            "  ".join(f"{v: .4f}" for v in truth[i].tolist()),
        )
    console.print(table)
    figure = plot_registration(
        fixed, before, result.warped, f"CT_small.dcm registered back: mean error {error['mean']:.3f} mm"
    )
    path = out / "registration.png"
    save_figure(figure, str(path))
    registration_section(
        report,
        "CT registration from a known warp",
        result,
        before,
        note=(
            "pydicom's CT_small.dcm (128 x 128, 0.66 mm pixels) warped by a known affine transform (7 degrees, "
            "5% stretch in x, 3% shrink in y, a 5 mm shift) onto a grid of its own (100 x 96 pixels of 0.8 x 0.75 "
            "mm, turned 20 degrees, part of the body cut off) and registered back: affine, mean squares, three "
            "pyramid levels, then checked independently (overlap, whole-grid metric, the objective recomputed). "
            "The error is the distance between where the recovered and the true transforms put each pixel of the "
            "body."
        ),
        truth=truth,
        error={"mean": error["mean"], "95th percentile": error["p95"], "largest": error["max"]},
        figure=path.read_bytes(),
    )
    figures = {
        "success": result.success,
        "status": result.status.name.lower(),
        "steps": steps,
        "levels": len(result.levels),
        "registration_time_s": result.time,
        "mean_error_mm": error["mean"],
        "p95_error_mm": error["p95"],
        "max_error_mm": error["max"],
        "pixel_mm": float(fixed.spacing[0]),
        "matrix": result.matrix.tolist(),
        "true_matrix": truth.tolist(),
    }
    row = {
        "part": "CT registration (affine)",
        "status": result.status.name.lower(),
        "key figures": f"mean error {error['mean']:.3f} mm, 95th percentile {error['p95']:.3f} mm "
        f"(pixel {fixed.spacing[0]:.2f} mm)",
    }
    return figures, {"registration": path}, row


def _smooth_warp(grid: Any, seed: int, lattice: float, longest: float) -> torch.Tensor:
    """A smooth random world displacement ``(*grid.shape, d)`` (mm) on ``grid``: normal vectors on a lattice of
    ``lattice`` mm, interpolated bicubically, scaled so that the longest is ``longest`` mm."""
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    d = grid.ndim
    extent = torch.tensor(grid.spacing, dtype=torch.float64) * (torch.tensor(grid.size) - 1)
    knots = [int(k) for k in (extent / lattice).ceil().long() + 2]
    coarse = torch.randn(1, d, *reversed(knots), generator=generator, dtype=torch.float64)
    field = F.interpolate(coarse, size=tuple(grid.shape), mode="bicubic", align_corners=True)[0]
    field = field.movedim(0, -1)
    return field * (longest / field.norm(dim=-1).max())


def _deformable_part(out: Path, console: Console, report: Report) -> Part:
    """CT_small as the moving image (the file as it is); the fixed image is the slice pulled through a known smooth
    warp (up to 3 mm) and a small turn onto a grid of its own, with noise; ``register(..., "deformable")`` finds the
    whole mapping, which is compared with the true one point by point (end-point error over the body)."""
    import pydicom
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lossfit.plotting import plot_registration
    from lossfit.registration import Image, load_image, register, resample
    from lossfit.registration.deformable import DeformableRegistration
    from lossfit.report.sections import deformation_figure

    moving = load_image(str(pydicom.data.get_testdata_file("CT_small.dcm")))
    centre = torch.tensor(moving.center, dtype=torch.float64)
    # The fixed grid: 0.6 x 0.7 mm pixels turned 10 degrees, a field of view that leaves out some of the edges.
    turn = torch.tensor(10.0, dtype=torch.float64).deg2rad()
    direction = torch.stack([torch.stack([turn.cos(), -turn.sin()]), torch.stack([turn.sin(), turn.cos()])])
    spacing = torch.tensor([0.6, 0.7], dtype=torch.float64)
    size = torch.tensor([128.0, 110.0], dtype=torch.float64)
    origin = centre - direction @ (spacing * (size - 1) / 2)
    grid = Image(torch.zeros(110, 128), spacing=tuple(spacing.tolist()), origin=tuple(origin.tolist()),
                 direction=direction)  # fmt: skip
    # The true mapping: x -> R (x + u(x)) about the centre, R a 4-degree turn with a 2 mm shift.
    u = _smooth_warp(grid, seed=12, lattice=15.0, longest=3.0)
    angle = torch.tensor(4.0, dtype=torch.float64).deg2rad()
    rotation = torch.stack([torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])])
    x = grid.world_grid(torch.float64)
    mapped = (x + u - centre) @ rotation.T + centre + torch.tensor([2.0, -1.0], dtype=torch.float64)
    truth = mapped - x
    pulled = resample(moving, grid, displacement=truth)
    assert isinstance(pulled, Image)
    # A second acquisition has noise of its own: 1% of the slice's range, Gaussian.
    generator = torch.Generator().manual_seed(13)
    scale = 0.01 * float(moving.data.max() - moving.data.min())
    noise = scale * torch.randn(pulled.shape, generator=generator, dtype=torch.float64)
    fixed = pulled.with_data((pulled.data.double() + noise).to(pulled.dtype))
    before = resample(moving, fixed)
    assert isinstance(before, Image)
    columns = (TextColumn(f"[5/{PARTS}] {{task.description}}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("a CT slice under a known smooth warp, registered back", total=None)

        def progress(level: int, count: int) -> None:
            bar.update(task, total=count, completed=level, description=f"registering: level {level + 1}")

        result = register(fixed, moving, "deformable", "mse", progress=progress)
    assert isinstance(result, DeformableRegistration) and result.matrix is not None
    body = fixed.data > fixed.data.min() + 0.1 * (fixed.data.max() - fixed.data.min())
    initial = truth.norm(dim=-1)[body]
    epe = (result.displacement.to(torch.float64) - truth).norm(dim=-1)[body]
    affine_only = (x @ result.matrix[:2, :2].T + result.matrix[:2, 2] - x - truth).norm(dim=-1)[body]
    folded = float(result.evaluation["folded_fraction"])
    console.print(
        f"deformable registration of CT_small.dcm (affine, then a velocity field; mean squares): "
        f"{result.status.name.lower()} in {result.time:.2f} s; end-point error over the body: mean "
        f"{float(epe.mean()):.3f} mm (from {float(initial.mean()):.3f} mm; the affine stage alone "
        f"{float(affine_only.mean()):.3f} mm), 95th percentile {float(epe.quantile(0.95)):.3f} mm; "
        f"folded {100 * folded:.2f}% of the pixels"
    )
    files = {"deformable": out / "deformable.png", "deformation": out / "deformation.png"}
    title = f"CT_small.dcm, deformable: mean error {float(epe.mean()):.3f} mm"
    save_figure(plot_registration(fixed, before, result.warped, title), str(files["deformable"]))
    save_figure(deformation_figure(result), str(files["deformation"]))
    registration_section(
        report,
        "CT deformable registration from a known smooth warp",
        result,
        before,
        note=(
            "pydicom's CT_small.dcm is the moving image, as read. The fixed image is the slice pulled through a known "
            "mapping onto a grid of its own (128 x 110 pixels of 0.6 x 0.7 mm, turned 10 degrees): a smooth random "
            "displacement of up to 3 mm (normal vectors on a 15 mm lattice, interpolated), then a 4-degree turn and "
            "a 2 mm shift, and Gaussian noise of 1% of the range. register(fixed, moving, 'deformable') finds an "
            "affine stage, then a stationary velocity field (its exponential, by scaling and squaring, is a "
            "diffeomorphism), and checks the answer on the whole fixed grid. The error is the end-point error: the "
            "distance between where the recovered and the true mappings put each pixel of the body."
        ),
        error={
            "mean at the start": float(initial.mean()),
            "mean, the affine stage alone": float(affine_only.mean()),
            "mean": float(epe.mean()),
            "95th percentile": float(epe.quantile(0.95)),
            "largest": float(epe.max()),
        },
        figure=files["deformable"].read_bytes(),
    )
    figures = {
        "success": result.success,
        "status": result.status.name.lower(),
        "registration_time_s": result.time,
        "initial_error_mm": float(initial.mean()),
        "affine_error_mm": float(affine_only.mean()),
        "mean_error_mm": float(epe.mean()),
        "p95_error_mm": float(epe.quantile(0.95)),
        "max_error_mm": float(epe.max()),
        "folded_fraction": folded,
        "jacobian_min": float(result.evaluation["jacobian_min"]),
        "jacobian_max": float(result.evaluation["jacobian_max"]),
    }
    row = {
        "part": "CT registration (deformable)",
        "status": result.status.name.lower(),
        "key figures": f"mean end-point error {float(epe.mean()):.3f} mm from {float(initial.mean()):.3f} mm, "
        f"{100 * folded:.2f}% folded",
    }
    return figures, files, row
