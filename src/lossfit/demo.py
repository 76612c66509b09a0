"""``lossfit demo``: the demonstrations, on data made here (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from lossfit import transforms
from lossfit.experiments import plot_seed003, seed003
from lossfit.models import curve_fit
from lossfit.plotting import _pyplot, save_figure
from lossfit.points import align


def run_demo(out: Path, console: Console | None = None) -> dict[str, Path]:
    """Run seed 003's experiment and a comparison of solvers on it, a point alignment with outliers and a curve fit
    with uncertainties; write their plots into ``out``.

    Returns the paths written.
    """
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=120)  # a pipe or a log: do not cut the table to 80 columns
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    with console.status("seed 003 as published: SGD, lr 0.9, momentum 0.9, 10,000 steps, float32"):
        faithful = seed003(("gd",), 10_000, torch.float32)
    written["seed003"] = out / "seed003.png"
    save_figure(
        plot_seed003(faithful, "Seed 003 reproduced: SGD (lr 0.9, momentum 0.9), float32"), str(written["seed003"])
    )
    with console.status("the same inverses with five solvers, float64"):
        compared = seed003(("gd", "adam", "lbfgs", "lm", "auto"), 10_000, torch.float64, targets=(1e-6, 1e-12))
    written["solvers"] = out / "seed003-solvers.png"
    save_figure(
        plot_seed003(compared, "Seed 003 surpassed: the same loss, five solvers (float64)"), str(written["solvers"])
    )
    table = Table(title="X M = I by optimisation (seed 003's matrices, float64)")
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
    with console.status("a similarity transform from 60 point pairs, 40% of them outliers"):
        written["align"] = _alignment_demo(out, console)
    with console.status("a curve fit with standard errors"):
        written["curve"] = _curve_demo(out, console)
    with console.status("a real CT slice warped by a known affine transform and registered back"):
        written["registration"] = _registration_demo(out, console)
    for name, path in written.items():
        console.print(f"wrote {name}: {path}")
    return written


def _alignment_demo(out: Path, console: Console) -> Path:
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
    console.print(
        f"alignment, 40% outliers: robust fit {robust.status.name.lower()}, largest matrix error {error:.1e} "
        f"(least squares: {float((plain.matrix - truth).abs().max()):.1e}); "
        f"{int((robust.inliers == ~bad).sum())} of 60 points classified right"
    )
    plt = _pyplot()
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
    return path


def _curve_demo(out: Path, console: Console) -> Path:
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
    ci = fit.confidence_interval(0.95)
    console.print(
        f"curve fit y = a (1 - exp(-b x)): {fit.status.name.lower()}; "
        + ", ".join(
            f"{n} = {float(v):.4f} (95% CI {float(lo):.4f} .. {float(hi):.4f})"
            for n, v, (lo, hi) in zip(("a", "b"), (fit.params["a"], fit.params["b"]), ci.tolist(), strict=True)
        )
    )
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, y, "o", ms=4, label="data")
    fine = torch.linspace(0, 5, 200, dtype=torch.float64)
    ax.plot(fine, fit.params["a"] * (1 - torch.exp(-fit.params["b"] * fine)), label="fit")
    a, b = float(fit.params["a"]), float(fit.params["b"])
    ax.set_title(f"a = {a:.3f} +- {float(fit.stderr[0]):.3f}, b = {b:.3f} +- {float(fit.stderr[1]):.3f}")
    ax.legend()
    path = out / "curve.png"
    save_figure(fig, str(path))
    return path


def _registration_demo(out: Path, console: Console) -> Path:
    """pydicom's CT_small slice, warped by a known affine transform (7 degrees, 5% stretch, 4 mm) and registered
    back with mean squares; the recovered matrix is compared with the true one."""
    import pydicom

    from lossfit.plotting import plot_registration
    from lossfit.registration import displacement, load_image, register, resample

    fixed = load_image(str(pydicom.data.get_testdata_file("CT_small.dcm")))
    centre = torch.tensor(fixed.center, dtype=torch.float64)
    angle = torch.tensor(7.0, dtype=torch.float64).deg2rad()
    linear = torch.stack(
        [torch.stack([1.05 * angle.cos(), -angle.sin()]), torch.stack([angle.sin(), 0.97 * angle.cos()])]
    )
    warp = torch.eye(3, dtype=torch.float64)
    warp[:2, :2] = linear
    warp[:2, 2] = centre - linear @ centre + torch.tensor([4.0, -3.0], dtype=torch.float64)
    moving = resample(fixed, fixed, warp)  # moving(x) = fixed(warp x): the answer is warp^-1
    assert not isinstance(moving, tuple)
    truth = torch.linalg.inv(warp)
    result = register(fixed, moving, "affine", "mse")
    assert result.matrix is not None
    body = fixed.data > fixed.data.min() + 0.1 * (fixed.data.max() - fixed.data.min())
    error = displacement(result.matrix, truth, fixed, body)
    console.print(
        f"registration of CT_small.dcm (affine, mean squares): {result.status.name.lower()} in "
        f"{sum(level.steps for level in result.levels)} steps over {len(result.levels)} levels, {result.time:.2f} s; "
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
        fixed, moving, result.warped, f"CT_small.dcm registered back: mean error {error['mean']:.3f} mm"
    )
    path = out / "registration.png"
    save_figure(figure, str(path))
    return path
