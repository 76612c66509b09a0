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


def _emit(result: Any, out: Path | None, json_out: bool, plot: Path | None) -> None:
    from lossfit.io import write_arrays

    if out is not None:
        write_arrays(out, result.params)
    if plot is not None:
        from lossfit.plotting import _pyplot, save_figure

        fig, ax = _pyplot().subplots(figsize=(6, 4))
        result.plot(ax=ax)
        ax.set_title(f"{result.solver.name}: {result.status.name.lower()}")
        save_figure(fig, str(plot))
    if json_out:
        summary = result.to_dict()
        if _size(result.params) > 10_000:
            summary["params"] = "omitted (large); use --out"
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(result.summary())
    if not result.success:
        raise typer.Exit(EXIT_NOT_CONVERGED)


def _size(params: Any) -> int:
    if isinstance(params, dict):
        return sum(v.numel() for v in params.values())
    return int(params.numel())


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
