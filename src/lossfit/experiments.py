"""A 4x4 matrix inverse derived by gradient descent, as a blog post does it, reproduced and compared with other solvers.

The post ("pytorch – matrix inverse with pytorch optimizer", part 2 of "Matrix operations with pytorch – optimizer")
minimises ``mean((X @ M - I)**2)`` with SGD (learning rate 0.9, momentum 0.9) for 10,000 steps, on a
random matrix (``torch.manual_seed(314); torch.rand(4, 4)``) and on ``diag(1, 2, 3, 4)``, starting from
``torch.rand`` after re-seeding with 314, and plots the loss on a log scale. Here the same runs are one call, and
any other solver can run beside them on the same loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lossfit.engine import FitResult
from lossfit.matrices import inverse

SEED = 314
SEED_OPTIONS = {"lr": 0.9, "momentum": 0.9}


def inverse_matrices(dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The post's two matrices: ``torch.rand(4, 4)`` after ``manual_seed(314)``, and ``diag(1, 2, 3, 4)``."""
    generator = torch.Generator().manual_seed(SEED)
    return {
        "random 4x4": torch.rand(4, 4, generator=generator).to(dtype),
        "diag(1,2,3,4)": torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0])).to(dtype),
    }


@dataclass(frozen=True)
class Run:
    """One solver on one matrix: the fit, and the steps and seconds it took to reach relative residuals."""

    matrix: str
    solver: str
    result: FitResult
    relative_residual: torch.Tensor
    steps_to: dict[float, int | None]
    seconds_to: dict[float, float | None]


def compare_inverse_solvers(
    solvers: tuple[str, ...] = ("gd",),
    steps: int = 10_000,
    dtype: torch.dtype = torch.float32,
    targets: tuple[float, ...] = (1e-6,),
) -> list[Run]:
    """Run the post's inverse experiment for each solver on both matrices.

    ``"gd"`` is the post's method exactly (SGD with learning rate 0.9 and momentum 0.9 from the post's random start,
    ``steps`` steps with no stopping test); other names run :func:`lossfit.matrices.inverse` with that solver's
    defaults (``"auto"`` is lossfit's default, Newton-Schulz), at most ``steps`` steps.

    Returns:
        One :class:`Run` per matrix and solver, with the relative residual ``||X M - I||_F / ||I||_F`` after each
        step and the first step (and time) at which it fell below each of ``targets``.
    """
    runs = []
    for name, m in inverse_matrices(dtype).items():
        for solver in solvers:
            options: dict[str, Any]
            if solver == "gd":
                options = {**SEED_OPTIONS, "ftol": 0.0, "xtol": 0.0, "gtol": 0.0, "max_steps": steps}
                result = inverse(m, solver="gd", init="random", seed=SEED, **options)
            elif solver in ("auto", "newton-schulz"):
                result = inverse(m, solver=solver, max_steps=min(steps, 200))
            else:
                result = inverse(m, solver=solver, init="random", seed=SEED, max_steps=steps)
            runs.append(_run(name, solver, result, m.shape[-1], targets))
    return runs


def _run(name: str, solver: str, result: FitResult, n: int, targets: tuple[float, ...]) -> Run:
    assert result.history is not None
    residual = (n * result.history.loss.to(torch.float64)).clamp_min(0).sqrt()
    steps_to: dict[float, int | None] = {}
    seconds_to: dict[float, float | None] = {}
    for target in targets:
        below = (residual <= target).nonzero()
        first = int(below[0]) if below.numel() else None
        steps_to[target] = first
        seconds_to[target] = float(result.history.time[first]) if first is not None else None
    return Run(name, solver, result, residual, steps_to, seconds_to)


def plot_inverse_solvers(runs: list[Run], title: str = "A 4x4 inverse by optimisation") -> Any:
    """One figure with every run's relative residual against step and against time (log scales)."""
    from lossfit.plotting import pyplot

    plt = pyplot()
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4.2))
    for run in runs:
        assert run.result.history is not None
        label = f"{run.matrix}, {run.result.solver.name}"
        y = run.relative_residual.clamp_min(1e-17).numpy()
        x = torch.arange(len(y)).numpy()
        by_step.plot(x + 1, y, label=label)
        by_time.plot(run.result.history.time.numpy() * 1e3 + 1e-3, y, label=label)
    by_step.set_xlabel("step + 1")
    by_time.set_xlabel("time (ms)")
    for ax in (by_step, by_time):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylabel("relative residual ||XM - I|| / ||I||")
        ax.grid(True, which="both", alpha=0.3)
    by_step.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
