"""The bank of hard nonlinear regression problems (``tests/hard_curves.py``), every tool with its defaults.

For each problem and each of its two starts (``start1`` far, ``start2`` near), in one process on the same data:

- lossfit: ``lossfit.curve_fit(f, x, y, p0)`` (Levenberg-Marquardt, float64), after one warm-up call on another
  curve, so that no problem pays for the first call's set-up;
- scipy lm / scipy trf: ``scipy.optimize.least_squares(residual, p0, method=...)``, no Jacobian given (finite
  differences), the model evaluated with numpy;
- lmfit: ``lmfit.minimize(residual, params, method="leastsq")`` (MINPACK through lmfit), parameters unbounded.

Score: correct digits = the smallest log relative error ``-log10(|estimate - certified| / |certified|)`` over the
parameters (best over relabellings that leave the model unchanged, capped at 15), shown as 0 when the tool reports
failure or raises (the digits it actually had follow in brackets). ``ok`` is the success flag as each tool reports
it (lmfit: ``result.success``). A pair is *reached* when the tool reports success with at least 6 digits, and
*wrong-but-successful* when it reports success with fewer.

Run: ``taskset -c 1 python benchmarks/curves.py`` (one core; ``--threads`` sets torch's threads, default 1).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy
import scipy.optimize
import torch

import lossfit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hard_curves import PROBLEMS, HardCurve, correct_digits

DIGITS = 6.0


@dataclass
class Run:
    digits: float  # the digits the answer has, whatever the tool reported
    success: bool
    seconds: float
    note: str = ""


def run_lossfit(problem: HardCurve, p0: tuple[float, ...]) -> Run:
    x, y = problem.tensors()
    start = torch.tensor(p0, dtype=torch.float64)
    t = time.perf_counter()
    result = lossfit.curve_fit(problem.f, x, y, start)
    seconds = time.perf_counter() - t
    params = [float(v) for v in result.params.tolist()]
    return Run(correct_digits(problem, params), bool(result.success), seconds, result.status.name.lower())


def numpy_residual(problem: HardCurve) -> Callable[[np.ndarray], np.ndarray]:
    x, y = np.array(problem.x), np.array(problem.y)
    return lambda p: problem.f(x, p, np) - y


def run_scipy(problem: HardCurve, p0: tuple[float, ...], method: str) -> Run:
    residual = numpy_residual(problem)
    t = time.perf_counter()
    try:
        result = scipy.optimize.least_squares(residual, np.array(p0, dtype=np.float64), method=method)
    except (ValueError, np.linalg.LinAlgError) as error:
        return Run(0.0, False, time.perf_counter() - t, f"raised {type(error).__name__}")
    seconds = time.perf_counter() - t
    return Run(correct_digits(problem, result.x.tolist()), bool(result.success), seconds, f"status {result.status}")


def run_lmfit(problem: HardCurve, p0: tuple[float, ...]) -> Run:
    import lmfit

    residual = numpy_residual(problem)
    params = lmfit.Parameters()
    for i, value in enumerate(p0):
        params.add(f"p{i}", value=value)
    names = list(params)
    t = time.perf_counter()
    try:
        result = lmfit.minimize(lambda ps: residual(np.array([ps[k].value for k in names])), params, method="leastsq")
    except (ValueError, np.linalg.LinAlgError) as error:
        return Run(0.0, False, time.perf_counter() - t, f"raised {type(error).__name__}")
    seconds = time.perf_counter() - t
    estimate = [float(result.params[k].value) for k in names]
    return Run(correct_digits(problem, estimate), bool(result.success), seconds, f"ier {result.ier}")


TOOLS: dict[str, Callable[[HardCurve, tuple[float, ...]], Run]] = {
    "lossfit": run_lossfit,
    "scipy lm": lambda p, s: run_scipy(p, s, "lm"),
    "scipy trf": lambda p, s: run_scipy(p, s, "trf"),
    "lmfit": run_lmfit,
}


def cell(run: Run) -> str:
    shown = f"{run.digits:.1f}" if run.success else f"0 [{run.digits:.1f}]"
    flag = "yes" if run.success else "no"
    if run.success and run.digits < DIGITS:
        flag = "**yes (wrong)**"
    return f"{shown} | {flag} | {1000 * run.seconds:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # overflow warnings from numpy models at far starts

    # Warm-up: the first curve_fit call in a process sets up torch.func; do it on a curve outside the bank.
    xw = torch.linspace(0, 4, 30, dtype=torch.float64)
    lossfit.curve_fit(lambda x, p: p[0] * torch.exp(-p[1] * x), xw, 2 * torch.exp(-0.5 * xw), torch.ones(2))

    rows: list[tuple[HardCurve, str, dict[str, Run]]] = []
    for problem in PROBLEMS:
        for start, p0 in problem.starts.items():
            rows.append((problem, start, {tool: fn(problem, p0) for tool, fn in TOOLS.items()}))

    import lmfit

    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "n/a"
    print(
        f"Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"scipy {scipy.__version__}, lmfit {lmfit.__version__}; torch threads {torch.get_num_threads()}, "
        f"CPU affinity {affinity}, {platform.machine()}"
    )
    print()
    head = " | ".join(f"{t} digits | {t} ok | {t} ms" for t in TOOLS)
    print(f"| problem | n | m | difficulty | start | {head} |")
    print("|" + "---|" * (5 + 3 * len(TOOLS)))
    for problem, start, runs in rows:
        cells = " | ".join(cell(runs[t]) for t in TOOLS)
        print(f"| {problem.name} | {problem.n} | {problem.m} | {problem.difficulty} | {start} | {cells} |")
    print()
    pairs = len(rows)
    for tool in TOOLS:
        runs = [r[2][tool] for r in rows]
        reached = sum(r.success and r.digits >= DIGITS for r in runs)
        wrong = sum(r.success and r.digits < DIGITS for r in runs)
        correct_unclaimed = sum(not r.success and r.digits >= DIGITS for r in runs)
        total = sum(r.seconds for r in runs)
        print(
            f"- **{tool}**: reached 6 digits on {reached} of {pairs} pairs; wrong-but-successful: {wrong}; "
            f"failure reported on an answer with >= 6 digits: {correct_unclaimed}; total time {total:.3f} s"
        )
    print()
    print("Failures as each tool reported them:")
    for problem, start, runs in rows:
        for tool, run in runs.items():
            if not run.success:
                print(f"- {tool}, {problem.name} from {start}: {run.note}")


if __name__ == "__main__":
    main()
