"""``lossfit demo``: the demonstrations, on data made here (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from lossfit.experiments import plot_seed003, seed003
from lossfit.plotting import save_figure


def run_demo(out: Path, console: Console | None = None) -> dict[str, Path]:
    """Run seed 003's experiment as published and a comparison of solvers on it; write plots into ``out``.

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
    for name, path in written.items():
        console.print(f"wrote {name}: {path}")
    return written
