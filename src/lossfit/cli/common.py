"""What every ``lossfit`` command shares: the app, exit codes, one-line errors, output checks, reports."""

from __future__ import annotations

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


def check_outputs(
    inputs: list[Path | None],
    *,
    out: Path | None = None,
    out_folder: bool = False,
    several: bool = False,
    plot: Path | None = None,
    report: Path | None = None,
) -> None:
    """Refuse, before any work, the outputs a command cannot write: ``--out`` (a file of a format the command
    writes, ``several`` arrays or one; or, with ``out_folder``, a folder), ``--plot`` and the ``--report`` folder,
    and any of them that is, holds or lies inside one of the ``inputs``."""
    if out is not None and out_folder:
        check_folder(out, "--out")
    elif out is not None:
        from lossfit.io import check_output_suffix

        check_output_suffix(out, several)
    check_plot(plot)
    check_folder(report, "--report")
    check_not_inputs(inputs, [(out, "--out"), (plot, "--plot"), (report, "--report")])


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


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for key in rows[0]:
        table.add_column(key)
    for row in rows:
        table.add_row(*(table_cell(v) for v in row.values()))
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # a pipe or a log: do not cut the table to 80 columns
    console.print(table)


def table_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
