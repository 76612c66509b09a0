"""The ``lossfit`` command.

Every command takes ``--json`` (a machine-readable summary on stdout) and ``--report DIR`` (``DIR/report.html``: one
self-contained HTML page with the loss curves on a log scale, the status and why the solver stopped, the parameters
with their uncertainties, the comparison with the closed form or reference, and the command line).

Exit codes: 0 the fit converged to a verified answer; 1 it ran but did not converge (the outputs and the report are
still written, and the status says why); 2 bad input (one line on stderr, nothing written).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from lossfit.errors import LossfitError

EXIT_OK, EXIT_NOT_CONVERGED, EXIT_BAD_INPUT = 0, 1, 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader closed the pipe
EPILOG = (
    "Exit codes: 0 converged to a verified answer; 1 ran but did not converge (outputs and report are still "
    "written); 2 bad input (one line on stderr, nothing written)."
)
REPORT_NAME = "report.html"

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Derive the parameters of a transformation from a loss function, and prove the answer.",
    epilog=EPILOG,
)


def _version(value: bool) -> None:
    if value:
        from lossfit import __version__

        typer.echo(f"lossfit {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Derive the parameters of a transformation from a loss function, and prove the answer."""


ReportOption = Annotated[
    Path | None,
    typer.Option(
        "--report",
        metavar="DIR",
        help="write DIR/report.html, one self-contained HTML page (DIR is created if its parent exists)",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print a JSON summary on stdout")]


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
        except BrokenPipeError:
            # The reader went away (`| head`): end quietly, as other command-line tools do, and keep Python from
            # complaining when it flushes stdout at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except MemoryError:
            fail("not enough memory for this input (a header may claim more data than the file holds)")
        except (LossfitError, ValueError, TypeError, OSError) as exc:
            fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    return wrapper


def check_plot(plot: Path | None) -> None:
    """Refuse, before any work, a --plot file of a format matplotlib is not asked to write here."""
    if plot is not None and plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        fail(f"{plot}: the plot must end in .png, .svg or .pdf")


def check_folder(path: Path | None, option: str) -> None:
    """Refuse, before any work, a folder option that cannot be written: a file of that name, a missing parent
    folder, or a folder without write permission. The folder itself is made only when there is something to
    write."""
    if path is None:
        return
    if path.exists() and not path.is_dir():
        fail(f"{path}: {option} must be a folder; a file of that name exists")
    if not path.exists() and not path.parent.is_dir():
        fail(f"{path}: the folder {path.parent} does not exist")
    where = path if path.exists() else path.parent
    if not os.access(where, os.W_OK | os.X_OK):
        fail(f"{path}: {option}: cannot write in {where}")
    if option == "--report" and (path / REPORT_NAME).is_dir():
        fail(f"{path / REPORT_NAME}: a folder of that name is in the way of the report")


def check_not_inputs(inputs: list[Path | None], outputs: list[tuple[Path | None, str]]) -> None:
    """Refuse, before any work, an output that is an input, lies inside one (a DICOM series folder) or contains
    one (an output folder holding an input): inputs are never overwritten. Symbolic links are resolved."""
    given = [p.resolve() for p in inputs if p is not None]
    for path, option in outputs:
        if path is None:
            continue
        out = path.resolve()
        for source in given:
            if out == source:
                fail(f"{path}: {option} is an input ({source}); choose another path, inputs are never overwritten")
            if source in out.parents:
                fail(f"{path}: {option} lies inside the input {source}; choose a path outside it")
            if out in source.parents:
                fail(f"{path}: {option} holds the input {source}; choose a folder that holds no input")


def make_folder(path: Path) -> None:
    try:
        path.mkdir(exist_ok=True)
    except OSError as exc:
        fail(f"{path}: cannot create the folder ({exc.strerror})")


def command_line(ctx: typer.Context) -> str:
    """The command as the user gave it (arguments, and the options not left at their defaults), shell-quoted."""
    words = ["lossfit", ctx.info_name or ""]
    for param in ctx.command.params:
        name = param.name or ""
        value = ctx.params.get(name)
        if isinstance(value, Enum):
            value = value.value
        source = ctx.get_parameter_source(name)
        if param.param_type_name == "argument":
            if value is not None:
                words.append(str(value))
        elif source is not None and source.name != "DEFAULT" and value is not None:
            flag = param.opts[0]
            if getattr(param, "is_flag", False):
                if value:
                    words.append(flag)
            else:
                words += [flag, str(value)]
    return shlex.join(words)


def write_report(folder: Path, title: str, build: Callable[[Any], None]) -> Path:
    """Make ``folder`` if needed, fill a :class:`~lossfit.report.Report` with ``build`` and save it as
    ``folder/report.html``."""
    from lossfit.report import Report

    report = Report(title=title)
    build(report)
    make_folder(folder)
    return report.save(folder / REPORT_NAME)


@app.command(epilog=EPILOG)
@guarded
def matrix(
    ctx: typer.Context,
    op: Annotated[MatrixOp, typer.Argument(help="what to derive")],
    file: Annotated[Path, typer.Argument(help="the matrix: .npy, .csv or whitespace-separated text")],
    rhs: Annotated[Path | None, typer.Argument(help="right-hand side B, for solve and lstsq")] = None,
    solver: Annotated[str, typer.Option(help="auto, or an engine solver: gd, adam, rmsprop, lbfgs, lm, ...")] = "auto",
    k: Annotated[int | None, typer.Option(help="rank, for low-rank and top-k svd")] = None,
    out: Annotated[
        Path | None, typer.Option(help="write the answer (.npy/.csv/.txt; .npz for svd, eigh, polar)")
    ] = None,
    json_out: JsonOption = False,
    plot: Annotated[Path | None, typer.Option(help="save the convergence plot (.png/.svg/.pdf)")] = None,
    max_steps: Annotated[int | None, typer.Option(help="most steps")] = None,
    report: ReportOption = None,
) -> None:
    """Derive a matrix function by optimisation and check it against torch.linalg."""
    from lossfit import matrices
    from lossfit.io import check_output_suffix, read_matrix

    several = op in (MatrixOp.svd, MatrixOp.eigh, MatrixOp.polar, MatrixOp.low_rank)
    if out is not None:
        check_output_suffix(out, several)
    check_plot(plot)
    needs_rhs = op in (MatrixOp.solve, MatrixOp.lstsq)
    if needs_rhs and rhs is None:
        fail(f"`{op.value}` needs a right-hand side file B after the matrix file")
    if not needs_rhs and rhs is not None:
        fail(f"`{op.value}` takes one matrix file; got a second one ({rhs})")
    if op is MatrixOp.low_rank and k is None:
        fail("`low-rank` needs --k, the rank")
    check_folder(report, "--report")
    check_not_inputs([file, rhs], [(out, "--out"), (plot, "--plot"), (report, "--report")])
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
    inputs = f"{file} and {rhs}" if rhs is not None else str(file)
    _emit(
        result,
        out,
        json_out,
        plot,
        report=report,
        title=f"lossfit matrix {op.value}",
        heading=f"{op.value} of {inputs}",
        command=command_line(ctx),
    )


def _emit(
    result: Any,
    out: Path | None,
    json_out: bool,
    plot: Path | None,
    params_out: Path | None = None,
    matrix_out: Path | None = None,
    draw: Callable[[Any], None] | None = None,
    *,
    report: Path | None = None,
    title: str = "lossfit",
    heading: str = "",
    note: str | None = None,
    command: str = "",
    caption: str | None = None,
) -> None:
    """Write the outputs, the plot and the report, print the summary (text or JSON) and exit 1 when the fit did
    not converge."""
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
    written = None
    if report is not None:

        def build(page: Any) -> None:
            from lossfit.report.sections import fit_section

            figure = None
            if draw is not None:
                from lossfit.plotting import _pyplot

                figure, ax = _pyplot().subplots(figsize=(6.4, 4.4))
                draw(ax)
                figure.tight_layout()
            fit_section(page, heading, result, note=note, figure=figure, caption=caption, command=command)

        written = write_report(report, title, build)
    if json_out:
        summary = result.to_dict()
        if getattr(result, "matrix", None) is not None:
            summary["matrix"] = result.matrix.tolist()
        if _size(result.params) > 10_000:
            summary["params"] = "omitted (large); use --out"
        if written is not None:
            summary["report"] = str(written)
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


@app.command(epilog=EPILOG)
@guarded
def fit(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="a CSV table whose first line names the columns")],
    model: Annotated[str, typer.Option(help="linear, logistic, softmax, or a formula such as 'a*exp(-b*x)+c'")],
    start: Annotated[str | None, typer.Option(help="starting values of a formula's parameters: a=1,b=0.1")] = None,
    target: Annotated[str, typer.Option(help="the column to predict")] = "y",
    loss: Annotated[str | None, typer.Option(help="mse, mae, huber (and bce, cross_entropy for classifiers)")] = None,
    out: Annotated[Path | None, typer.Option(help="write the fitted parameters (.npz)")] = None,
    json_out: JsonOption = False,
    plot: Annotated[Path | None, typer.Option(help="save data, fit and convergence (.png/.svg/.pdf)")] = None,
    report: ReportOption = None,
) -> None:
    """Fit a model or a formula to a table of data."""
    import torch

    from lossfit.io import check_output_suffix, read_table
    from lossfit.models import curve_fit
    from lossfit.models import fit as fit_model

    if out is not None:
        check_output_suffix(out, several=True)
    check_plot(plot)
    check_folder(report, "--report")
    check_not_inputs([data], [(out, "--out"), (plot, "--plot"), (report, "--report")])
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

    _emit(
        result,
        None,
        json_out,
        plot,
        params_out=out,
        draw=draw,
        report=report,
        title="lossfit fit",
        heading=f"{model} fitted to {data}",
        note=f"model: {model}; target column: {target}; loss: {loss or 'default'}",
        command=command_line(ctx),
        caption="The data and the fit",
    )


@app.command(epilog=EPILOG)
@guarded
def align(
    ctx: typer.Context,
    src: Annotated[Path, typer.Argument(help="source points (N, d): .npy, .csv or text")],
    dst: Annotated[Path, typer.Argument(help="destination points (N, d), in the same order")],
    model: Annotated[str, typer.Option(help="translation, linear, affine, rigid, similarity or projective")] = "affine",
    loss: Annotated[str, typer.Option(help="mse, mae, huber, cauchy or soft_l1")] = "mse",
    out: Annotated[Path | None, typer.Option(help="write the (d+1)x(d+1) matrix (.npy/.csv/.txt)")] = None,
    json_out: JsonOption = False,
    plot: Annotated[Path | None, typer.Option(help="save points, fit and convergence (.png/.svg/.pdf)")] = None,
    report: ReportOption = None,
) -> None:
    """Fit the transform that maps SRC points onto DST points."""
    from lossfit.io import check_output_suffix, read_matrix
    from lossfit.points import align as align_points

    if out is not None:
        check_output_suffix(out, several=False)
    check_plot(plot)
    check_folder(report, "--report")
    check_not_inputs([src, dst], [(out, "--out"), (plot, "--plot"), (report, "--report")])
    src_points, dst_points = read_matrix(src), read_matrix(dst)
    result = align_points(src_points, dst_points, model=model, loss=loss)

    def draw(ax: Any) -> None:
        from lossfit import transforms
        from lossfit.plotting import plot_alignment

        assert result.matrix is not None
        mapped = transforms.apply(result.matrix.to(src_points.dtype), src_points)
        plot_alignment(src_points, dst_points, mapped, result.inliers, ax)
        ax.set_title(f"{model}, loss {loss}")

    _emit(
        result,
        None,
        json_out,
        plot,
        matrix_out=out,
        draw=draw,
        report=report,
        title="lossfit align",
        heading=f"{model} transform from {src} onto {dst}",
        note=f"model: {model}; loss: {loss}",
        command=command_line(ctx),
        caption="Destination points and the source points mapped by the fit",
    )


@app.command(epilog=EPILOG)
@guarded
def seed003(
    ctx: typer.Context,
    compare: Annotated[str, typer.Option(help="comma-separated solvers, e.g. gd,adam,lbfgs,lm,auto")] = "gd",
    steps: Annotated[int, typer.Option(help="steps for the iterative solvers (the seed used 10,000)")] = 10_000,
    float64: Annotated[bool, typer.Option("--float64", help="compute in float64 (the seed used float32)")] = False,
    plot: Annotated[Path | None, typer.Option(help="save the convergence plot (.png/.svg/.pdf)")] = None,
    json_out: JsonOption = False,
    report: ReportOption = None,
) -> None:
    """Seed 003's experiment: a 4x4 inverse by SGD (lr 0.9, momentum 0.9), beside other solvers.

    It exits 0 when every run finished (the comparison is the result, and the seed's own method is expected to
    stop at its step limit); 2 for bad options."""
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
    check_plot(plot)
    check_folder(report, "--report")
    dtype = torch.float64 if float64 else torch.float32
    runs = run_seed003(solvers, steps, dtype, targets=(1e-6,))
    if plot is not None:
        from lossfit.plotting import save_figure

        save_figure(plot_seed003(runs), str(plot))
    if report is not None:
        command = command_line(ctx)

        def build(page: Any) -> None:
            from lossfit.report.sections import fit_section, seed003_section

            note = (
                f"X M = I by minimising mean((X M - I)**2), {str(dtype).removeprefix('torch.')}, at most {steps} "
                "steps; gd is the seed's own method (SGD, lr 0.9, momentum 0.9, every tolerance 0)"
            )
            seed003_section(
                page,
                "Seed 003: the solvers compared",
                runs,
                note=note,
                figure=plot_seed003(runs),
                caption="Relative residual per step and per millisecond (log scales)",
                command=command,
            )
            for r in runs:
                fit_section(page, f"{r.matrix}, {r.result.solver.name}", r.result, note=f"solver asked: {r.solver}")

        write_report(report, "lossfit seed003", build)
    rows = [
        {
            "matrix": r.matrix,
            "solver": r.result.solver.name,
            "steps": r.result.num_steps,
            "final_relative_residual": float(r.relative_residual[-1]),
            "steps_to_1e-6": r.steps_to[1e-6],
            "ms_to_1e-6": None if r.seconds_to[1e-6] is None else r.seconds_to[1e-6] * 1e3,
            "status": r.result.status.name.lower(),
            "success": r.result.success,
            "message": r.result.message,
            "error_vs_torch": (r.result.reference or {}).get("error_vs_torch"),
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


class ImageFormat(str, Enum):
    nifti = "nifti"
    dicom = "dicom"
    png = "png"
    tiff = "tiff"
    npy = "npy"


class Interpolation(str, Enum):
    linear = "linear"
    nearest = "nearest"
    bspline = "bspline"


FORMAT_SUFFIXES = {"nifti": ".nii.gz", "dicom": ".dcm", "png": ".png", "tiff": ".tif", "npy": ".npy"}
# The format of an image written from an input of this suffix (a DICOM series folder gives a series folder).
IMAGE_OUTPUTS = {
    ".nii": ".nii",
    ".nii.gz": ".nii.gz",
    ".dcm": ".dcm",
    ".ima": ".dcm",
    ".png": ".png",
    ".jpg": ".png",
    ".jpeg": ".png",
    ".bmp": ".png",
    ".tif": ".tif",
    ".tiff": ".tif",
    ".npy": ".npy",
}
_BYTES_PER_VOXEL = {".nii": 4, ".nii.gz": 4, ".tif": 4, ".npy": 4, ".png": 2, ".dcm": 2}
_PICTURE_BYTES = 4 << 20  # registration.png and report.html: a few MB at most


def output_suffix(fmt: ImageFormat | None, like: Path) -> str:
    """The suffix of an image written for ``--format`` (``like``'s own format when None: a lossless one for
    JPEG/BMP, DICOM for a DICOM folder or a file without a suffix)."""
    if fmt is not None:
        return FORMAT_SUFFIXES[fmt.value]
    name = like.name.lower()
    if like.is_dir():
        return ".dcm"
    for suffix in sorted(IMAGE_OUTPUTS, key=len, reverse=True):
        if name.endswith(suffix):
            return IMAGE_OUTPUTS[suffix]
    return ".dcm"  # a DICOM file named by its UID, or without a suffix


def check_image_output(grid: Any, name: str, values: Any, fill: float) -> None:
    """Refuse, before any work, an image format that cannot hold an image on ``grid`` whose values lie in the
    range of ``values`` (a resampled image: interpolation stays within it, and points outside get ``fill``)."""
    from lossfit.registration.io import check_savable

    low = min(float(values.min()), fill) if values.numel() else fill
    high = max(float(values.max()), fill) if values.numel() else fill
    try:
        check_savable(grid, name, low, high)
    except ValueError as exc:
        fail(f"{name}: {str(exc).replace('`image`', 'the warped image')} (choose another --format)")


def load_input(path: Path, option: str, **options: Any) -> Any:
    """Load an image input; a keyword that does not apply to it (``series``, ``volume``) names the option."""
    from lossfit.registration import load_image

    try:
        return load_image(path, **{k: v for k, v in options.items() if v is not None})
    except ValueError as exc:
        message = str(exc)
        for keyword in options:
            message = message.replace(f"`{keyword}`", f"{option}-{keyword}")
        fail(message)


@app.command(epilog=EPILOG)
@guarded
def register(
    ctx: typer.Context,
    fixed: Annotated[Path, typer.Argument(help="the fixed image: NIfTI, DICOM file or series folder, PNG/TIFF/JPEG")],
    moving: Annotated[Path, typer.Argument(help="the moving image, brought onto the fixed one")],
    transform: Annotated[
        str, typer.Option(help="translation, rigid, similarity, affine or projective (2-D)")
    ] = "affine",
    metric: Annotated[str, typer.Option(help="mse, ncc, lncc or mi (mutual information, multi-modal)")] = "mse",
    init: Annotated[str, typer.Option(help="geometry, mass, moments or none")] = "geometry",
    initial: Annotated[
        Path | None, typer.Option(help="a transform to start from (.tfm/.txt/.mat/.json; fixed world to moving)")
    ] = None,
    loss: Annotated[str, typer.Option(help="for mse: linear, huber or cauchy (robust to missing content)")] = "linear",
    samples: Annotated[int, typer.Option(help="the most fixed voxels compared at the finest level")] = 100_000,
    levels: Annotated[
        str | None, typer.Option(help="pyramid shrink factors, coarse to fine, e.g. 4,2,1 (default: automatic)")
    ] = None,
    smoothing: Annotated[float, typer.Option(help="Gaussian smoothing (voxels) at the finest level")] = 0.0,
    fixed_mask: Annotated[Path | None, typer.Option(help="only voxels where this image is non-zero count")] = None,
    moving_mask: Annotated[Path | None, typer.Option(help="only moving voxels where it is non-zero count")] = None,
    fixed_series: Annotated[str | None, typer.Option(help="SeriesInstanceUID, for a folder of several")] = None,
    moving_series: Annotated[str | None, typer.Option(help="SeriesInstanceUID, for a folder of several")] = None,
    fixed_volume: Annotated[int | None, typer.Option(help="which volume (from 0) of a 4-D NIfTI file")] = None,
    moving_volume: Annotated[int | None, typer.Option(help="which volume (from 0) of a 4-D NIfTI file")] = None,
    seed: Annotated[int, typer.Option(help="seeds the choice of samples")] = 0,
    out: Annotated[
        Path | None, typer.Option(help="folder for the warped image, transform (.tfm, .json), picture")
    ] = None,
    image_format: Annotated[
        ImageFormat | None, typer.Option("--format", help="the warped image's format (default: the fixed image's)")
    ] = None,
    interpolation: Annotated[
        Interpolation, typer.Option(help="for the warped image: linear, nearest (label maps) or bspline")
    ] = Interpolation.linear,
    fill: Annotated[float, typer.Option(help="the warped image's value outside the moving image")] = 0.0,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace the outputs of an earlier run in --out (as a whole)")
    ] = False,
    json_out: JsonOption = False,
    report: ReportOption = None,
) -> None:
    """Register MOVING to FIXED in world coordinates; the transform maps fixed world points to moving ones.

    Everything is checked before the work starts: the inputs are never overwritten, --out must be new, empty or
    (with --overwrite) hold an earlier run's outputs, which are then replaced as a whole; the warped image's
    format must hold it. The transform files are written first."""
    from rich.progress import Progress

    from lossfit.registration import register as register_images
    from lossfit.run_folder import check_run_folder, check_space

    check_folder(out, "--out")
    check_folder(report, "--report")
    inputs = [fixed, moving, fixed_mask, moving_mask, initial]
    check_not_inputs(inputs, [(out, "--out"), (report, "--report")])
    if out is not None:
        check_run_folder(out, overwrite)
    factors = _parse_levels(levels)
    start = None if initial is None else _read_initial(initial)
    fixed_image = load_input(fixed, "--fixed", series=fixed_series, volume=fixed_volume)
    moving_image = load_input(moving, "--moving", series=moving_series, volume=moving_volume)
    fixed_mask_image = None if fixed_mask is None else load_input(fixed_mask, "--fixed-mask")
    moving_mask_image = None if moving_mask is None else load_input(moving_mask, "--moving-mask")
    suffix = output_suffix(image_format, fixed)
    if out is not None:
        check_image_output(fixed_image, f"warped{suffix}", moving_image.data, fill)
        voxels = fixed_image.data.numel()
        check_space(out, voxels * _BYTES_PER_VOXEL[suffix] + _PICTURE_BYTES)
    with Progress(transient=True, disable=json_out or not sys.stderr.isatty()) as bar:
        task = bar.add_task("registering", total=None)

        def progress(level: int, count: int) -> None:
            bar.update(task, total=count, completed=level, description=f"pyramid level {level + 1} of {count}")

        result = register_images(
            fixed_image,
            moving_image,
            transform,
            metric,
            init=init,
            initial=start,
            loss=loss,
            samples=samples,
            levels=factors,
            smoothing=smoothing,
            seed=seed,
            progress=progress,
            fixed_mask=fixed_mask_image,
            moving_mask=moving_mask_image,
        )
    warped = result.warped
    warped_name = "warped" if suffix == ".dcm" and warped.ndim == 3 else f"warped{suffix}"  # a series folder
    if interpolation is not Interpolation.linear or fill != 0.0:
        from lossfit.registration import resample

        warped = resample(result.moving, result.fixed, result.matrix, interpolation=interpolation.value, default=fill)
    summary = _registration_summary(result, {"fixed": fixed, "moving": moving, "fixed_mask": fixed_mask,
                                             "moving_mask": moving_mask, "initial": initial})  # fmt: skip
    page = _registration_page(
        result,
        command_line(ctx),
        f"{moving} registered to {fixed}",
        f"transform: {transform}; metric: {metric}; loss: {loss}; initialisation: {init}; up to {samples} samples "
        "at the finest level",
    )
    same_folder = out is not None and report is not None and report.resolve() == out.resolve()
    if out is not None:
        _write_registration(result, warped, warped_name, out, summary, page if same_folder else None)
        summary["outputs"] = str(out)
    if report is not None and not same_folder:
        summary["report"] = str(write_report(report, "lossfit register", page))
    elif same_folder:
        summary["report"] = str(out / REPORT_NAME)  # type: ignore[operator]
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(result.summary())
        assert result.matrix is not None
        typer.echo("matrix (fixed world -> moving world, LPS mm):")
        for row in result.matrix.tolist():
            typer.echo("  " + "  ".join(f"{v: .6f}" for v in row))
    if not result.success:
        raise typer.Exit(EXIT_NOT_CONVERGED)


def _read_initial(path: Path) -> Any:
    from lossfit.registration.transform_files import read_transform

    return read_transform(path)


def _geometry(image: Any) -> dict[str, Any]:
    from lossfit.registration.checks import world_extent

    return {
        "size": list(image.size),
        "spacing_mm": list(image.spacing),
        "origin_mm": list(image.origin),
        "direction": [list(row) for row in image.direction],
        "extent": world_extent(image),
    }


def _registration_summary(result: Any, inputs: dict[str, Path | None]) -> dict[str, Any]:
    summary = result.to_dict()
    summary["inputs"] = {name: None if path is None else str(path) for name, path in inputs.items()}
    summary["geometry"] = {"fixed": _geometry(result.fixed), "moving": _geometry(result.moving)}
    return summary


def _registration_page(result: Any, command: str, heading: str, note: str) -> Callable[[Any], None]:
    def build(page: Any) -> None:
        from lossfit.registration import resample
        from lossfit.report.sections import registration_section

        before = resample(result.moving, result.fixed)
        registration_section(page, heading, result, before, note=note, command=command)

    return build


def _parse_levels(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        fail(f"--levels must be whole shrink factors separated by commas, coarse to fine (e.g. 4,2,1); got {text!r}")
        raise  # unreachable: fail exits


def _write_registration(
    result: Any,
    warped: Any,
    warped_name: str,
    out: Path,
    summary: dict[str, Any],
    report_page: Callable[[Any], None] | None,
) -> None:
    """Write the run folder as a whole (see :mod:`lossfit.run_folder`): transform.tfm (affine family) and
    transform.json first, then the warped moving image (``warped/``, a DICOM series folder, for a 3-D DICOM
    output), registration.png (checkerboards and differences before and after), and report.html when
    ``report_page`` is given (--report names the same folder)."""
    from lossfit.io import atomic_write_text
    from lossfit.plotting import plot_registration, save_figure
    from lossfit.registration import resample
    from lossfit.registration.io import save_dicom_series, save_image
    from lossfit.run_folder import RunFolder

    def picture(path: Path) -> None:
        before = resample(result.moving, result.fixed)
        figure = plot_registration(result.fixed, before, warped, f"{result.transform} / {result.metric}")
        save_figure(figure, str(path))

    def write_page(path: Path) -> None:
        from lossfit.report import Report

        page = Report(title="lossfit register")
        assert report_page is not None
        report_page(page)
        page.save(path)

    with RunFolder(out) as run:
        if result.transform != "projective":
            run.write("transform.tfm", result.save_transform)
        run.write("transform.json", lambda p: atomic_write_text(p, json.dumps(summary, indent=2) + "\n"))
        run.write(warped_name, lambda p: (save_dicom_series if warped_name == "warped" else save_image)(warped, p))
        run.write("registration.png", picture)
        if report_page is not None:
            run.write(REPORT_NAME, write_page)


TRANSFORM_SUFFIXES = (".tfm", ".txt", ".mat", ".json")


def check_output_file(path: Path, option: str, overwrite: bool) -> None:
    """Refuse, before any work, an output file that cannot be written: a folder of that name, a missing parent
    folder, no write permission, or (without ``overwrite``) an existing file."""
    if path.is_dir() and not (overwrite and path.name.lower().endswith(".dcm")):  # a DICOM series folder
        fail(f"{path}: {option} must be a file; a folder of that name exists")
    if not path.parent.is_dir():
        fail(f"{path}: the folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        fail(f"{path}: {option}: cannot write in {path.parent}")
    if path.exists() and not overwrite:
        fail(f"{path}: {option} exists; pass --overwrite to replace it")


@app.command(epilog=EPILOG)
@guarded
def apply(
    items: Annotated[
        list[Path],
        typer.Argument(
            metavar="TRANSFORM... IMAGE",
            help="transform files (.tfm/.txt/.mat/.json; a chain applies as antsApplyTransforms -t applies it: "
            "the first takes the reference point first), then the image to move",
        ),
    ],
    reference: Annotated[Path, typer.Option(help="the grid of the result (the registration's fixed image)")],
    out: Annotated[Path, typer.Option(help="the image written (.nii.gz, .nii, .dcm, .png, .tif, .npy)")],
    interpolation: Annotated[
        Interpolation, typer.Option(help="linear, nearest (label maps keep their labels) or bspline")
    ] = Interpolation.linear,
    inverse: Annotated[
        bool, typer.Option("--inverse", help="invert the chain: bring an image of the fixed space onto the moving")
    ] = False,
    fill: Annotated[float, typer.Option(help="the value outside the image")] = 0.0,
    reference_series: Annotated[str | None, typer.Option(help="SeriesInstanceUID, for a folder of several")] = None,
    image_series: Annotated[str | None, typer.Option(help="SeriesInstanceUID, for a folder of several")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace OUT if it exists")] = False,
    json_out: JsonOption = False,
) -> None:
    """Resample IMAGE onto the --reference grid through a chain of transforms (reference world to image world, as
    a registration's transform.tfm maps the fixed image to the moving one)."""
    from lossfit.registration.apply import apply_transform, chain_matrix
    from lossfit.registration.io import save_dicom_series, save_image

    if len(items) < 2:
        fail("give at least one TRANSFORM and then the IMAGE to move")
    *transform_paths, image_path = items
    for t in transform_paths:
        if not t.name.lower().endswith(TRANSFORM_SUFFIXES):
            fail(f"{t}: a transform must end in {', '.join(TRANSFORM_SUFFIXES)} (the IMAGE comes last)")
    check_not_inputs([*transform_paths, image_path, reference], [(out, "--out")])
    check_output_file(out, "--out", overwrite)
    matrix = chain_matrix(transform_paths, inverse=inverse)  # every transform read (and inverted) before the images
    image = load_input(image_path, "--image", series=image_series)
    grid = load_input(reference, "--reference", series=reference_series)
    series_out = out.name.lower().endswith(".dcm") and grid.ndim == 3 and grid.shape[0] > 1
    check_image_output(grid, out.name, image.data, fill)
    moved = apply_transform(image, matrix, grid, interpolation=interpolation.value, fill=fill)
    if series_out:
        import shutil

        if out.exists():  # --overwrite: replaced as a whole, the new series built beside it first
            staged = out.with_name(f".{out.name}.new")
            shutil.rmtree(staged, ignore_errors=True)
            save_dicom_series(moved, staged)
            if out.is_dir():
                shutil.rmtree(out)
            else:
                out.unlink()
            staged.rename(out)
        else:
            save_dicom_series(moved, out)
    else:
        save_image(moved, out)  # atomic: a full disk is named and leaves nothing half-written
    if json_out:
        summary = {
            "output": str(out),
            "transforms": [str(t) for t in transform_paths],
            "inverse": inverse,
            "matrix": matrix.tolist(),
            "convention": "matrix maps the reference's world points (LPS, mm) to the image's",
            "interpolation": interpolation.value,
            "fill": fill,
            "geometry": _geometry(moved),
        }
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(f"wrote {out} ({'x'.join(str(n) for n in moved.size)} voxels on the reference grid)")


@app.command(epilog=EPILOG)
@guarded
def invert(
    transforms: Annotated[
        list[Path], typer.Argument(metavar="TRANSFORM...", help="transform files; a chain is composed first")
    ],
    out: Annotated[Path, typer.Option(help="the inverse: .tfm, .txt, .mat (ITK/ANTs) or .json")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace OUT if it exists")] = False,
    json_out: JsonOption = False,
) -> None:
    """Write the inverse of a transform (or of a chain, composed as `lossfit apply` composes it): it maps the
    moving image's world points back to the fixed image's."""
    from lossfit.registration.apply import chain_matrix
    from lossfit.registration.transform_files import write_transform

    if not out.name.lower().endswith(TRANSFORM_SUFFIXES):
        fail(f"{out}: --out must end in {', '.join(TRANSFORM_SUFFIXES)}")
    check_not_inputs(list(transforms), [(out, "--out")])
    check_output_file(out, "--out", overwrite)
    inverse = chain_matrix(transforms, inverse=True)
    write_transform(out, inverse)
    if json_out:
        typer.echo(json.dumps({"output": str(out), "matrix": inverse.tolist()}, indent=2))
    else:
        typer.echo(f"wrote {out}")
        for row in inverse.tolist():
            typer.echo("  " + "  ".join(f"{v: .6f}" for v in row))


@app.command(epilog=EPILOG)
@guarded
def demo(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="folder for the demo's pictures and report")] = Path("lossfit-demo"),
    report: ReportOption = None,
    json_out: JsonOption = False,
) -> None:
    """Run the demonstrations on data that ships with the installed packages; write their pictures and
    report.html to a folder (OUT/report.html unless --report names another folder).

    It exits 1 when one of lossfit's own fits in the demo did not converge."""
    from rich.console import Console

    from lossfit.demo import run_demo

    check_folder(out, "--out")
    check_folder(report, "--report")
    console = Console(stderr=True) if json_out else None  # stdout holds only the JSON
    result = run_demo(out, console, report_dir=report, command=command_line(ctx))
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    if not result.success:
        raise typer.Exit(EXIT_NOT_CONVERGED)


def main() -> None:  # pragma: no cover - the console script calls `app`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
