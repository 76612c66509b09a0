"""The cost of one small problem, lossfit against scipy side by side in one process (issue 11, item 1).

- a curve fit, ``y = a exp(-b x) + c`` with 40 noisy points: ``lossfit.curve_fit`` and ``lossfit.least_squares``
  against ``scipy.optimize.curve_fit`` and ``scipy.optimize.least_squares(method="lm")``;
- Rosenbrock from (-1.2, 1): ``lossfit.minimize`` against ``scipy.optimize.minimize(method="BFGS")`` with the
  analytic gradient.

Each call is timed ``--repeat`` times after ``--warmup`` untimed calls, the tools interleaved call by call (so that a
slow spell of the machine hits all of them); the table gives the median and the ratio to scipy's median. Every
answer is checked: lossfit's must be a success and agree with scipy's (the same minimum to 1e-6 relative).
Run: ``python benchmarks/single_call.py [--threads N] [--repeat 200]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import scipy.optimize
import torch

import lossfit


def curve_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, 5, 40, dtype=torch.float64)
    y = 2.0 * torch.exp(-0.7 * x) + 0.3 + 0.01 * torch.randn(40, generator=g, dtype=torch.float64)
    return x, y


def model(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return p[0] * torch.exp(-p[1] * x) + p[2]


def rosenbrock(p: torch.Tensor) -> torch.Tensor:
    return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2


def interleaved(calls: dict[str, Callable[[], object]], warmup: int, repeat: int) -> dict[str, float]:
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeat):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y = curve_data()
    xn, yn = x.numpy(), y.numpy()
    p0 = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    r0 = torch.tensor([-1.2, 1.0], dtype=torch.float64)

    def np_model(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
        return a * np.exp(-b * x) + c

    def np_residual(p: np.ndarray) -> np.ndarray:
        return p[0] * np.exp(-p[1] * xn) + p[2] - yn

    def residual(p: torch.Tensor) -> torch.Tensor:
        return model(x, p) - y

    calls: dict[str, Callable[[], object]] = {
        "lossfit.curve_fit": lambda: lossfit.curve_fit(model, x, y, p0),
        "lossfit.least_squares": lambda: lossfit.least_squares(residual, p0),
        "scipy curve_fit": lambda: scipy.optimize.curve_fit(np_model, xn, yn, p0=[1.0, 1.0, 0.0]),
        "scipy least_squares lm": lambda: scipy.optimize.least_squares(np_residual, [1.0, 1.0, 0.0], method="lm"),
        "lossfit.minimize (Rosenbrock)": lambda: lossfit.minimize(rosenbrock, r0),
        "scipy BFGS (Rosenbrock)": lambda: scipy.optimize.minimize(
            scipy.optimize.rosen, [-1.2, 1.0], jac=scipy.optimize.rosen_der, method="BFGS"
        ),
    }
    # Every answer checked before anything is timed.
    fit = lossfit.curve_fit(model, x, y, p0)
    ls = lossfit.least_squares(residual, p0)
    ref = scipy.optimize.least_squares(np_residual, [1.0, 1.0, 0.0], method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15)
    for name, result in (("curve_fit", fit), ("least_squares", ls)):
        assert result.success, (name, result.message)
        np.testing.assert_allclose(result.params.numpy(), ref.x, rtol=1e-6)
    mini = lossfit.minimize(rosenbrock, r0)
    assert mini.success, mini.message
    np.testing.assert_allclose(mini.params.numpy(), [1.0, 1.0], rtol=1e-6)

    medians = interleaved(calls, args.warmup, args.repeat)
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, scipy {scipy.__version__}; median of {args.repeat} calls"
    )
    print()
    print("| problem | tool | steps | time per call | ratio to scipy |")
    print("|---|---|---|---|---|")
    rows = [
        ("curve fit, 3 parameters, 40 points", "lossfit.curve_fit", fit.num_steps, "scipy curve_fit"),
        ("", "lossfit.least_squares", ls.num_steps, "scipy least_squares lm"),
        ("", "scipy curve_fit", "", "scipy curve_fit"),
        ("", "scipy least_squares lm", "", "scipy least_squares lm"),
        ("Rosenbrock from (-1.2, 1)", "lossfit.minimize (Rosenbrock)", mini.num_steps, "scipy BFGS (Rosenbrock)"),
        ("", "scipy BFGS (Rosenbrock)", "", "scipy BFGS (Rosenbrock)"),
    ]
    for problem, tool, steps, peer in rows:
        ratio = medians[tool] / medians[peer]
        print(f"| {problem} | {tool} | {steps} | {medians[tool] * 1e3:.3g} ms | {ratio:.3g}x |")


if __name__ == "__main__":
    main()
