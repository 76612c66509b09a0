"""``lossfit matrix``, ``lossfit fit`` and ``lossfit align``: matrices, models and point transforms."""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from lossfit.cli.common import (
    EPILOG,
    EXIT_NOT_CONVERGED,
    JsonOption,
    ReportOption,
    app,
    check_outputs,
    command_line,
    fail,
    guarded,
    write_report,
)


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
    from lossfit.io import read_matrix

    needs_rhs = op in (MatrixOp.solve, MatrixOp.lstsq)
    if needs_rhs and rhs is None:
        fail(f"`{op.value}` needs a right-hand side file B after the matrix file")
    if not needs_rhs and rhs is not None:
        fail(f"`{op.value}` takes one matrix file; got a second one ({rhs})")
    if op is MatrixOp.low_rank and k is None:
        fail("`low-rank` needs --k, the rank")
    several = op in (MatrixOp.svd, MatrixOp.eigh, MatrixOp.polar, MatrixOp.low_rank)
    check_outputs([file, rhs], out=out, several=several, plot=plot, report=report)
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
        from lossfit.plotting import plot_history, pyplot, save_figure

        if draw is None:
            fig, ax = pyplot().subplots(figsize=(6, 4))
        else:
            fig, (data_ax, ax) = pyplot().subplots(1, 2, figsize=(11, 4.2))
            draw(data_ax)
        plot_history(result, ax=ax)
        ax.set_title(f"{result.solver.name}: {result.status.name.lower()}")
        fig.tight_layout()
        save_figure(fig, str(plot))
    written = None
    if report is not None:

        def build(page: Any) -> None:
            from lossfit.report.sections import fit_section

            figure = None
            if draw is not None:
                from lossfit.plotting import pyplot

                figure, ax = pyplot().subplots(figsize=(6.4, 4.4))
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

    from lossfit.io import read_table
    from lossfit.models import fit as fit_model

    check_outputs([data], out=out, several=True, plot=plot, report=report)
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
        from lossfit.models import fit_formula, parse

        if start is None:
            fail("a formula model needs --start with a value for each parameter, e.g. --start a=1,b=0.1")
        result = fit_formula(model, table, _parse_start(start), target=target, loss=loss)  # type: ignore[arg-type]
        columns = {name: table[name] for name in result.extras["columns"]}
        fitted = parse(model)({**columns, **result.params}).detach().broadcast_to(y.shape)
        only = list(columns) if len(columns) == 1 else []

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
    from lossfit.io import read_matrix
    from lossfit.points import align as align_points

    check_outputs([src, dst], out=out, plot=plot, report=report)
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
