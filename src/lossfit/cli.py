"""The ``lossfit`` command.

Exit codes: 0 the fit converged to a verified answer; 1 it ran but did not converge (the output is still written,
and the status says why); 2 bad input (one line on stderr, nothing written).
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from lossfit.errors import LossfitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Derive the parameters of a transformation from a loss function, and prove the answer.",
)

EXIT_OK, EXIT_NOT_CONVERGED, EXIT_BAD_INPUT = 0, 1, 2


class MatrixOp(str, Enum):
    inverse = "inverse"
    pinv = "pinv"
    solve = "solve"
    lstsq = "lstsq"
    svd = "svd"
    eigh = "eigh"
    polar = "polar"
    sqrtm = "sqrtm"
    low_rank = "low-rank"


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    """Print one line on stderr and exit (no traceback)."""
    typer.echo(f"lossfit: error: {message}", err=True)
    raise typer.Exit(code)


def guarded(function: Any) -> Any:
    """Turn user errors into one line on stderr and exit code 2."""
    import functools

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (LossfitError, ValueError, TypeError, OSError) as exc:
            fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    return wrapper


@app.command()
@guarded
def matrix(
    op: Annotated[MatrixOp, typer.Argument(help="what to derive")],
    file: Annotated[Path, typer.Argument(help="the matrix: .npy, .csv or whitespace-separated text")],
    rhs: Annotated[Path | None, typer.Argument(help="right-hand side B, for solve and lstsq")] = None,
    solver: Annotated[str, typer.Option(help="auto, or an engine solver: gd, adam, rmsprop, lbfgs, lm, ...")] = "auto",
    k: Annotated[int | None, typer.Option(help="rank, for low-rank and top-k svd")] = None,
    out: Annotated[
        Path | None, typer.Option(help="write the answer (.npy/.csv/.txt; .npz for svd, eigh, polar)")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print a JSON summary")] = False,
    plot: Annotated[Path | None, typer.Option(help="save the convergence plot (.png/.svg/.pdf)")] = None,
    max_steps: Annotated[int | None, typer.Option(help="most steps")] = None,
) -> None:
    """Derive a matrix function by optimisation and check it against torch.linalg."""
    from lossfit import matrices
    from lossfit.io import check_output_suffix, read_matrix

    several = op in (MatrixOp.svd, MatrixOp.eigh, MatrixOp.polar, MatrixOp.low_rank)
    if out is not None:
        check_output_suffix(out, several)
    if plot is not None and plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        fail(f"{plot}: the plot must end in .png, .svg or .pdf")
    needs_rhs = op in (MatrixOp.solve, MatrixOp.lstsq)
    if needs_rhs and rhs is None:
        fail(f"`{op.value}` needs a right-hand side file B after the matrix file")
    if not needs_rhs and rhs is not None:
        fail(f"`{op.value}` takes one matrix file; got a second one ({rhs})")
    if op is MatrixOp.low_rank and k is None:
        fail("`low-rank` needs --k, the rank")
    m = read_matrix(file)
    options: dict[str, Any] = {"solver": solver}
    if max_steps is not None:
        sweeps = op in (MatrixOp.svd, MatrixOp.eigh, MatrixOp.polar) and solver in ("auto", "jacobi")
        options["max_sweeps" if sweeps else "max_steps"] = max_steps
    if op is MatrixOp.solve or op is MatrixOp.lstsq:
        result = getattr(matrices, op.value)(m, read_matrix(rhs), **options)  # type: ignore[arg-type]
    elif op is MatrixOp.svd:
        result = matrices.svd(m, k, **options)
    elif op is MatrixOp.low_rank:
        result = matrices.low_rank(m, k, **options)  # type: ignore[arg-type]
    else:
        result = getattr(matrices, op.value)(m, **options)
    _emit(result, out, json_out, plot)


def _emit(
    result: Any,
    out: Path | None,
    json_out: bool,
    plot: Path | None,
    params_out: Path | None = None,
    matrix_out: Path | None = None,
    draw: Any = None,
) -> None:
    from lossfit.io import write_arrays

    if out is not None:
        write_arrays(out, result.params)
    if params_out is not None:
        params = result.params if isinstance(result.params, dict) else {"params": result.params}
        write_arrays(params_out, params)
    if matrix_out is not None:
        write_arrays(matrix_out, result.matrix)
    if plot is not None:
        from lossfit.plotting import _pyplot, save_figure

        if draw is None:
            fig, ax = _pyplot().subplots(figsize=(6, 4))
        else:
            fig, (data_ax, ax) = _pyplot().subplots(1, 2, figsize=(11, 4.2))
            draw(data_ax)
        result.plot(ax=ax)
        ax.set_title(f"{result.solver.name}: {result.status.name.lower()}")
        fig.tight_layout()
        save_figure(fig, str(plot))
    if json_out:
        summary = result.to_dict()
        if getattr(result, "matrix", None) is not None:
            summary["matrix"] = result.matrix.tolist()
        if _size(result.params) > 10_000:
            summary["params"] = "omitted (large); use --out"
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(result.summary())
    if not result.success:
        raise typer.Exit(EXIT_NOT_CONVERGED)


def _draw_model_fit(model: str, x: Any, y: Any, result: Any, features: list[str]) -> Any:
    """The data panel of ``fit --plot`` for the named models: predictions (probabilities for logistic, the
    predicted class for softmax) against the data."""
    import torch

    params = result.params
    scores = x @ params["weight"] + params["bias"]
    if model == "logistic":
        fitted = torch.sigmoid(scores)
    elif model == "softmax":
        fitted = scores.argmax(dim=1).to(y.dtype)
    else:
        fitted = scores

    def draw(ax: Any) -> None:
        from lossfit.plotting import plot_data_fit

        plot_data_fit(x[:, 0] if len(features) == 1 else None, y, fitted, ax)
        ax.set_title(f"{model} model")
        if len(features) == 1:
            ax.set_xlabel(features[0])

    return draw


def _size(params: Any) -> int:
    if isinstance(params, dict):
        return sum(v.numel() for v in params.values())
    return int(params.numel())


def _parse_start(text: str) -> dict[str, float]:
    start: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            fail(f"--start must look like a=1,b=0.1; got {text!r}")
        try:
            start[name.strip()] = float(value)
        except ValueError:
            fail(f"--start: {value.strip()!r} is not a number (for {name.strip()!r})")
    return start


@app.command()
@guarded
def fit(
    data: Annotated[Path, typer.Argument(help="a CSV table whose first line names the columns")],
    model: Annotated[str, typer.Option(help="linear, logistic, softmax, or a formula such as 'a*exp(-b*x)+c'")],
    start: Annotated[str | None, typer.Option(help="starting values of a formula's parameters: a=1,b=0.1")] = None,
    target: Annotated[str, typer.Option(help="the column to predict")] = "y",
    loss: Annotated[str | None, typer.Option(help="mse, mae, huber (and bce, cross_entropy for classifiers)")] = None,
    out: Annotated[Path | None, typer.Option(help="write the fitted parameters (.npz)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print a JSON summary")] = False,
    plot: Annotated[Path | None, typer.Option(help="save data, fit and convergence (.png/.svg/.pdf)")] = None,
) -> None:
    """Fit a model or a formula to a table of data."""
    import torch

    from lossfit.io import check_output_suffix, read_table
    from lossfit.models import curve_fit
    from lossfit.models import fit as fit_model

    if out is not None:
        check_output_suffix(out, several=True)
    if plot is not None and plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        fail(f"{plot}: the plot must end in .png, .svg or .pdf")
    table = read_table(data)
    if target not in table:
        fail(f"{data}: no column {target!r} to predict (columns: {', '.join(table)}); name it with --target")
    y = table[target]
    if model in ("linear", "logistic", "softmax"):
        features = [name for name in table if name != target]
        if not features:
            fail(f"{data}: no feature columns besides {target!r}")
        x = torch.stack([table[name] for name in features], dim=1)
        result = fit_model(model, x, y, loss=loss)
        draw = _draw_model_fit(model, x, y, result, features)
    else:
        from lossfit.formula import parse

        formula = parse(model)
        if start is None:
            fail("a formula model needs --start with a value for each parameter, e.g. --start a=1,b=0.1")
        starts = _parse_start(start)  # type: ignore[arg-type]
        unknown = [name for name in starts if name not in formula.names]
        if unknown:
            fail(f"--start names {', '.join(unknown)}, which the formula {model!r} does not use")
        params = [name for name in formula.names if name not in table]
        missing = [name for name in params if name not in starts]
        if missing:
            fail(f"the formula uses {', '.join(missing)}: not a column of {data} and not given in --start")
        if target in formula.names:
            fail(f"the formula must not use the target column {target!r}")
        columns = {name: table[name] for name in formula.names if name in table}
        robust = {"mse": "linear", None: "linear", "mae": "soft_l1", "huber": "huber"}
        if loss not in robust:
            fail(f"--loss for a formula must be mse, mae or huber; got {loss!r}")

        def predict(_: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
            return torch.broadcast_to(formula({**columns, **p}), y.shape)

        p0 = {name: torch.tensor(starts[name], dtype=torch.float64) for name in params}
        result = curve_fit(predict, y, y, p0, loss=robust[loss])
        fitted = predict(y, result.params).detach()
        only = [name for name in columns] if len(columns) == 1 else []

        def draw(ax: Any) -> None:
            from lossfit.plotting import plot_data_fit

            plot_data_fit(columns[only[0]] if only else None, y, fitted, ax)
            ax.set_title(model)

    _emit(result, None, json_out, plot, params_out=out, draw=draw)


@app.command()
@guarded
def align(
    src: Annotated[Path, typer.Argument(help="source points (N, d): .npy, .csv or text")],
    dst: Annotated[Path, typer.Argument(help="destination points (N, d), in the same order")],
    model: Annotated[str, typer.Option(help="translation, linear, affine, rigid, similarity or projective")] = "affine",
    loss: Annotated[str, typer.Option(help="mse, mae, huber, cauchy or soft_l1")] = "mse",
    out: Annotated[Path | None, typer.Option(help="write the (d+1)x(d+1) matrix (.npy/.csv/.txt)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print a JSON summary")] = False,
    plot: Annotated[Path | None, typer.Option(help="save points, fit and convergence (.png/.svg/.pdf)")] = None,
) -> None:
    """Fit the transform that maps SRC points onto DST points."""
    from lossfit.io import check_output_suffix, read_matrix
    from lossfit.points import align as align_points

    if out is not None:
        check_output_suffix(out, several=False)
    if plot is not None and plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        fail(f"{plot}: the plot must end in .png, .svg or .pdf")
    src_points, dst_points = read_matrix(src), read_matrix(dst)
    result = align_points(src_points, dst_points, model=model, loss=loss)

    def draw(ax: Any) -> None:
        from lossfit import transforms
        from lossfit.plotting import plot_alignment

        assert result.matrix is not None
        mapped = transforms.apply(result.matrix.to(src_points.dtype), src_points)
        plot_alignment(src_points, dst_points, mapped, result.inliers, ax)
        ax.set_title(f"{model}, loss {loss}")

    _emit(result, None, json_out, plot, matrix_out=out, draw=draw)


@app.command()
@guarded
def seed003(
    compare: Annotated[str, typer.Option(help="comma-separated solvers, e.g. gd,adam,lbfgs,lm,auto")] = "gd",
    steps: Annotated[int, typer.Option(help="steps for the iterative solvers (the seed used 10,000)")] = 10_000,
    float64: Annotated[bool, typer.Option("--float64", help="compute in float64 (the seed used float32)")] = False,
    plot: Annotated[Path | None, typer.Option(help="save the convergence plot (.png/.svg/.pdf)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print a JSON summary")] = False,
) -> None:
    """Seed 003's experiment: a 4x4 inverse by SGD (lr 0.9, momentum 0.9), beside other solvers."""
    import torch

    from lossfit.engine.solvers import SOLVERS
    from lossfit.experiments import plot_seed003
    from lossfit.experiments import seed003 as run_seed003

    solvers = tuple(s.strip() for s in compare.split(",") if s.strip())
    known = {"auto", "newton-schulz", *SOLVERS}
    unknown = [s for s in solvers if s not in known]
    if not solvers or unknown:
        fail(f"--compare must name solvers from {', '.join(sorted(known))}; got {compare!r}")
    if steps < 1:
        fail(f"--steps must be at least 1; got {steps}")
    if plot is not None and plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        fail(f"{plot}: the plot must end in .png, .svg or .pdf")
    runs = run_seed003(solvers, steps, torch.float64 if float64 else torch.float32, targets=(1e-6,))
    if plot is not None:
        from lossfit.plotting import save_figure

        save_figure(plot_seed003(runs), str(plot))
    rows = [
        {
            "matrix": r.matrix,
            "solver": r.result.solver.name,
            "steps": r.result.num_steps,
            "final_relative_residual": float(r.relative_residual[-1]),
            "steps_to_1e-6": r.steps_to[1e-6],
            "ms_to_1e-6": None if r.seconds_to[1e-6] is None else r.seconds_to[1e-6] * 1e3,
            "status": r.result.status.name.lower(),
        }
        for r in runs
    ]
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
    else:
        _table(rows, "Seed 003: X M = I by optimisation")


def _table(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for key in rows[0]:
        table.add_column(key)
    for row in rows:
        table.add_row(*(_cell(v) for v in row.values()))
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # a pipe or a log: do not cut the table to 80 columns
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


IMAGE_OUTPUTS = {".nii": ".nii", ".gz": ".nii.gz", ".dcm": ".dcm", ".png": ".png", ".tif": ".tif", ".tiff": ".tif"}


@app.command()
@guarded
def register(
    fixed: Annotated[Path, typer.Argument(help="the fixed image: NIfTI, DICOM file or series folder, PNG/TIFF/JPEG")],
    moving: Annotated[Path, typer.Argument(help="the moving image, brought onto the fixed one")],
    transform: Annotated[
        str, typer.Option(help="translation, rigid, similarity, affine or projective (2-D)")
    ] = "affine",
    metric: Annotated[str, typer.Option(help="mse, ncc, lncc or mi (mutual information, multi-modal)")] = "mse",
    init: Annotated[str, typer.Option(help="geometry, mass, moments or none")] = "geometry",
    samples: Annotated[int, typer.Option(help="fixed voxels compared per pyramid level")] = 50_000,
    out: Annotated[
        Path | None, typer.Option(help="folder for the warped image, transform (.tfm, .json), picture")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print a JSON summary")] = False,
) -> None:
    """Register MOVING to FIXED in world coordinates; the transform maps fixed world points to moving ones."""
    from rich.progress import Progress

    from lossfit.registration import load_image
    from lossfit.registration import register as register_images

    if out is not None and out.exists() and not out.is_dir():
        fail(f"{out}: --out must be a folder; a file of that name exists")
    if out is not None and not out.parent.exists():
        fail(f"{out}: the folder {out.parent} does not exist")
    fixed_image, moving_image = load_image(fixed), load_image(moving)
    with Progress(transient=True, disable=json_out or not sys.stderr.isatty()) as bar:
        task = bar.add_task("registering", total=None)

        def progress(level: int, count: int) -> None:
            bar.update(task, total=count, completed=level, description=f"pyramid level {level + 1} of {count}")

        result = register_images(
            fixed_image, moving_image, transform, metric, init=init, samples=samples, progress=progress
        )
    if out is not None:
        _write_registration(result, fixed, result.moving, out)
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        typer.echo(result.summary())
        assert result.matrix is not None
        typer.echo("matrix (fixed world -> moving world, LPS mm):")
        for row in result.matrix.tolist():
            typer.echo("  " + "  ".join(f"{v: .6f}" for v in row))
    if not result.success:
        raise typer.Exit(EXIT_NOT_CONVERGED)


def _write_registration(result: Any, fixed_path: Path, moving_image: Any, out: Path) -> None:
    """The warped moving image (in the fixed image's format), transform.tfm (affine family), transform.json and
    registration.png (checkerboards and differences before and after)."""
    from lossfit.io import atomic_write_text
    from lossfit.plotting import plot_registration, save_figure
    from lossfit.registration import resample

    name = fixed_path.name.lower()
    suffix = next(
        (v for k, v in IMAGE_OUTPUTS.items() if name.endswith(k)), ".dcm" if fixed_path.is_dir() else ".nii.gz"
    )
    try:
        out.mkdir(exist_ok=True)
    except OSError as exc:
        fail(f"{out}: cannot create the folder ({exc.strerror})")
    result.warped.save(out / f"warped{suffix}")
    if result.transform != "projective":
        result.save_transform(out / "transform.tfm")
    atomic_write_text(out / "transform.json", json.dumps(result.to_dict(), indent=2) + "\n")
    before = resample(moving_image, result.fixed)
    figure = plot_registration(result.fixed, before, result.warped, f"{result.transform} / {result.metric}")
    save_figure(figure, str(out / "registration.png"))


@app.command()
@guarded
def demo(
    out: Annotated[Path, typer.Option(help="folder for the demo's pictures")] = Path("lossfit-demo"),
) -> None:
    """Run the demonstrations on built-in data and write their plots to a folder."""
    from lossfit.demo import run_demo

    run_demo(out)


def main() -> None:  # pragma: no cover - the console script calls `app`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
