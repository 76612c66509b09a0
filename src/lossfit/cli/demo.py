"""``lossfit demo``: the demonstrations on data the installed packages ship."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lossfit.cli.common import (
    EPILOG,
    EXIT_NOT_CONVERGED,
    JsonOption,
    ReportOption,
    app,
    check_outputs,
    command_line,
    guarded,
)


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

    check_outputs([], out=out, out_folder=True, report=report)
    console = Console(stderr=True) if json_out else None  # stdout holds only the JSON
    result = run_demo(out, console, report_dir=report, command=command_line(ctx))
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    if not result.success:
        raise typer.Exit(EXIT_NOT_CONVERGED)
