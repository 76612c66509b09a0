"""100,000 independent curve fits, y = a (1 - exp(-b x)) with 20 noisy points each, side by side in one process.

- lossfit: one batched ``lossfit.least_squares`` call with its defaults (Levenberg-Marquardt, each problem stopping
  on its own), after a warm-up call on a small batch, timed ``--repeat`` times: the median, and the first call;
- scipy: ``scipy.optimize.least_squares(method="lm")`` with its defaults, one fit at a time, on the first
  ``--scipy-fits`` problems; the per-fit time is measured on those and the total extrapolated (marked as such);
- torch.optim.LBFGS: the loop a PyTorch user writes today (strong Wolfe line search, one fit at a time), on the first
  ``--torch-fits`` problems, extrapolated likewise.

Accuracy: each method's parameters against scipy's on the problems both solved, against the true (a, b), and
against the polished minimum (scipy ``lm`` restarted from its own answer with ``ftol = xtol = gtol = 1e-15``), which
says how far each method stopped from the minimum itself (scipy's default tolerances are 1e-8).
Run: ``python benchmarks/curve_batch.py [--threads N] [--fits 100000] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import scipy.optimize
import torch

import lossfit


def make_problems(b: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, 5, 20, dtype=torch.float64).expand(b, 20).contiguous()
    a = 0.5 + 2 * torch.rand(b, 1, generator=g, dtype=torch.float64)
    k = 0.3 + 2 * torch.rand(b, 1, generator=g, dtype=torch.float64)
    y = a * (1 - torch.exp(-k * x)) + 0.02 * torch.randn(b, 20, generator=g, dtype=torch.float64)
    return x, y, torch.cat([a, k], dim=1)


def residual(p: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return p[0] * (1 - torch.exp(-p[1] * x)) - y


def run_lossfit(x: torch.Tensor, y: torch.Tensor, repeat: int) -> tuple[torch.Tensor, float, float, lossfit.FitResult]:
    """lossfit's fits, the median time of ``repeat`` batched calls and the first call's time."""
    start = torch.ones(x.shape[0], 2, dtype=torch.float64)
    lossfit.least_squares(residual, start[:100], args=(x[:100], y[:100]), batch=True)  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = lossfit.least_squares(residual, start, args=(x, y), batch=True)
        times.append(time.perf_counter() - t0)
    return result.params, statistics.median(times), times[0], result


def run_scipy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    out = np.empty((x.shape[0], 2))
    t0 = time.perf_counter()
    for i in range(x.shape[0]):

        def fun(p: np.ndarray, xi: np.ndarray = x[i], yi: np.ndarray = y[i]) -> np.ndarray:
            return p[0] * (1 - np.exp(-p[1] * xi)) - yi

        out[i] = scipy.optimize.least_squares(fun, np.ones(2), method="lm").x
    return out, time.perf_counter() - t0


def polish(x: np.ndarray, y: np.ndarray, start: np.ndarray) -> np.ndarray:
    out = np.empty_like(start)
    for i in range(x.shape[0]):

        def fun(p: np.ndarray, xi: np.ndarray = x[i], yi: np.ndarray = y[i]) -> np.ndarray:
            return p[0] * (1 - np.exp(-p[1] * xi)) - yi

        out[i] = scipy.optimize.least_squares(fun, start[i], method="lm", ftol=1e-15, xtol=1e-15, gtol=1e-15).x
    return out


def run_torch_lbfgs(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
    out = torch.empty(x.shape[0], 2, dtype=torch.float64)
    t0 = time.perf_counter()
    for i in range(x.shape[0]):
        p = torch.ones(2, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS(
            [p], lr=1, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe"
        )

        def closure(i: int = i, p: torch.Tensor = p, opt: torch.optim.LBFGS = opt) -> torch.Tensor:
            opt.zero_grad()
            loss = (residual(p, x[i], y[i]) ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        out[i] = p.detach()
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--fits", type=int, default=100_000)
    parser.add_argument("--scipy-fits", type=int, default=5_000)
    parser.add_argument("--torch-fits", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3, help="batched calls timed (the median is reported)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, y, truth = make_problems(args.fits)

    ours, ours_time, first_time, result = run_lossfit(x, y, args.repeat)
    ns = min(args.scipy_fits, args.fits)
    theirs, scipy_time = run_scipy(x[:ns].numpy(), y[:ns].numpy())
    nt = min(args.torch_fits, args.fits)
    lbfgs, lbfgs_time = run_torch_lbfgs(x[:nt], y[:nt])

    per_scipy = scipy_time / ns
    per_lbfgs = lbfgs_time / nt
    ours_np = ours.numpy()
    agree = np.abs(ours_np[:ns] - theirs) / np.abs(theirs)
    agree_lbfgs = (lbfgs - torch.from_numpy(theirs[:nt])).abs() / torch.from_numpy(theirs[:nt]).abs()
    err_ours = float(((ours - truth).abs() / truth).median())
    err_scipy = float(np.median(np.abs(theirs - truth[:ns].numpy()) / truth[:ns].numpy()))
    failed = sum(not s.success for s in result.statuses)
    best = polish(x[:ns].numpy(), y[:ns].numpy(), theirs)
    off_ours = np.abs(ours_np[:ns] - best) / np.abs(best)
    off_scipy = np.abs(theirs - best) / np.abs(best)
    truth_ns = truth[:ns].numpy()
    err_best = float(np.median(np.abs(best - truth_ns) / truth_ns))
    err_ours_ns = float(np.median(np.abs(ours_np[:ns] - truth_ns) / truth_ns))

    print(f"# {args.fits} curve fits, float64, torch {torch.__version__}, {args.threads} threads, {platform.machine()}")
    print()
    print("| method | fits timed | time per fit | total for all fits | speed-up of lossfit | max rel. diff vs scipy |")
    print("|---|---|---|---|---|---|")
    print(
        f"| lossfit batched (LM, {result.num_steps} steps at most; median of {args.repeat} calls) | {args.fits} "
        f"| {ours_time / args.fits * 1e6:.2f} us "
        f"| {ours_time:.3f} s (measured) | 1x | {agree.max():.1e} (median {np.median(agree):.1e}) |"
    )
    print(
        f"| lossfit batched, the first of those calls | {args.fits} | {first_time / args.fits * 1e6:.2f} us "
        f"| {first_time:.3f} s (measured) | {first_time / ours_time:.2f}x | same |"
    )
    print(
        f"| scipy least_squares lm, one by one | {ns} | {per_scipy * 1e6:.1f} us | {per_scipy * args.fits:.1f} s "
        f"(extrapolated) | {per_scipy * args.fits / ours_time:.0f}x "
        f"({per_scipy * args.fits / first_time:.0f}x against the first call) | 0 |"
    )
    print(
        f"| torch.optim.LBFGS loop, one by one | {nt} | {per_lbfgs * 1e3:.2f} ms | {per_lbfgs * args.fits:.0f} s "
        f"(extrapolated) | {per_lbfgs * args.fits / ours_time:.0f}x | {float(agree_lbfgs.max()):.1e} |"
    )
    print()
    print(
        f"lossfit: {args.fits - failed} of {args.fits} fits verified successful; median relative error against the "
        f"true (a, b): lossfit {err_ours:.2e}, scipy {err_scipy:.2e} (noise sets this floor)."
    )
    print(
        f"Against the polished minimum (first {ns} problems): lossfit's largest relative distance "
        f"{off_ours.max():.1e} (median {np.median(off_ours):.1e}), scipy's with its defaults {off_scipy.max():.1e} "
        f"(median {np.median(off_scipy):.1e}); median error against the truth there: polished minimum "
        f"{err_best:.4e}, lossfit {err_ours_ns:.4e}, scipy {err_scipy:.4e}."
    )


if __name__ == "__main__":
    main()
