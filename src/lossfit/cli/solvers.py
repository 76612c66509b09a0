"""``lossfit inverse-solvers``: the solvers compared on the gradient-descent matrix inverse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from lossfit.cli.common import (
    EPILOG,
    JsonOption,
    ReportOption,
    app,
    check_outputs,
    command_line,
    fail,
    guarded,
    print_table,
    write_report,
)


@app.command("inverse-solvers", epilog=EPILOG)
@guarded
def inverse_solvers(
    ctx: typer.Context,
    compare: Annotated[str, typer.Option(help="comma-separated solvers, e.g. gd,adam,lbfgs,lm,auto")] = "gd",
    steps: Annotated[int, typer.Option(help="steps for the iterative solvers (the post used 10,000)")] = 10_000,
    float64: Annotated[bool, typer.Option("--float64", help="compute in float64 (the post used float32)")] = False,
    plot: Annotated[Path | None, typer.Option(help="save the convergence plot (.png/.svg/.pdf)")] = None,
    json_out: JsonOption = False,
    report: ReportOption = None,
) -> None:
    """A 4x4 inverse by SGD (lr 0.9, momentum 0.9) as a blog post derives it, beside other solvers on the same loss.

    It exits 0 when every run finished (the comparison is the result, and the post's own method is expected to
    stop at its step limit); 2 for bad options."""
    import torch

    from lossfit.engine.solvers import SOLVERS
    from lossfit.experiments import compare_inverse_solvers as run_comparison
    from lossfit.experiments import plot_inverse_solvers

    solvers = tuple(s.strip() for s in compare.split(",") if s.strip())
    known = {"auto", "newton-schulz", *SOLVERS}
    unknown = [s for s in solvers if s not in known]
    if not solvers or unknown:
        fail(f"--compare must name solvers from {', '.join(sorted(known))}; got {compare!r}")
    if steps < 1:
        fail(f"--steps must be at least 1; got {steps}")
    check_outputs([], plot=plot, report=report)
    dtype = torch.float64 if float64 else torch.float32
    runs = run_comparison(solvers, steps, dtype, targets=(1e-6,))
    if plot is not None:
        from lossfit.plotting import save_figure

        save_figure(plot_inverse_solvers(runs), str(plot))
    if report is not None:
        command = command_line(ctx)

        def build(page: Any) -> None:
            from lossfit.report.sections import fit_section, inverse_solvers_section

            note = (
                f"X M = I by minimising mean((X M - I)**2), {str(dtype).removeprefix('torch.')}, at most {steps} "
                "steps; gd is the post's own method (SGD, lr 0.9, momentum 0.9, every tolerance 0)"
            )
            inverse_solvers_section(
                page,
                "Matrix inverse by optimisation: the solvers compared",
                runs,
                note=note,
                figure=plot_inverse_solvers(runs),
                caption="Relative residual per step and per millisecond (log scales)",
                command=command,
            )
            for r in runs:
                fit_section(page, f"{r.matrix}, {r.result.solver.name}", r.result, note=f"solver asked: {r.solver}")

        write_report(report, "lossfit inverse-solvers", build)
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
        print_table(rows, "X M = I by optimisation")


# The command's earlier name (after the source document), kept hidden so that existing scripts still run.
app.command("seed003", hidden=True, epilog=EPILOG)(inverse_solvers)
