"""10,000 curve fits of data sets of 10 to 200 points each: one ragged batched call against the scipy loop.

The data: ``y = a (1 - exp(-b x))`` on ``m`` points of ``[0, 5]``, ``m`` uniform in 10..200, ``a`` in [0.5, 2.5],
``b`` in [0.3, 2.3], Gaussian noise 0.02; every fit starts at (1, 1).

- lossfit: ``lossfit.curve_fit(f, xs, ys, p0, batch=True)`` with the lists of sets (padded to the longest with
  copies of each set's last point, which a mask drops), after a warm-up call on 100 sets; the median of
  ``--repeat`` calls. With ``--buckets K`` also the sets sorted by length in ``K`` calls (less padding).
- scipy: ``scipy.optimize.curve_fit`` (its defaults: ``lm``, 2-point differences), one set at a time, on the first
  ``--scipy-fits`` sets; the per-fit time is measured there and the total extrapolated (marked as such).

Accuracy: each of lossfit's fits against scipy's polished minimum (``ftol = xtol = gtol = 1e-15``) on the sets both
solved: the same minimum to 1e-8 relative is the bar.
Run: ``python benchmarks/curve_ragged.py [--threads N] [--fits 10000] [--repeat 3]``.
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


def make_sets(b: int, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(10, 201, (b,), generator=g)
    a = 0.5 + 2 * torch.rand(b, generator=g, dtype=torch.float64)
    k = 0.3 + 2 * torch.rand(b, generator=g, dtype=torch.float64)
    xs, ys = [], []
    for i in range(b):
        x = torch.linspace(0, 5, int(lengths[i]), dtype=torch.float64)
        noise = 0.02 * torch.randn(int(lengths[i]), generator=g, dtype=torch.float64)
        xs.append(x)
        ys.append(a[i] * (1 - torch.exp(-k[i] * x)) + noise)
    return xs, ys, torch.stack([a, k], dim=1)


def model(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return p[0] * (1 - torch.exp(-p[1] * x))


def np_model(x: np.ndarray, a: float, b: float) -> np.ndarray:
    return a * (1 - np.exp(-b * x))


def run_lossfit(xs: list, ys: list, buckets: int) -> tuple[torch.Tensor, list[bool]]:
    p0 = torch.ones(len(xs), 2, dtype=torch.float64)
    if buckets <= 1:
        fit = lossfit.curve_fit(model, xs, ys, p0, batch=True)
        return fit.params, [s.success for s in fit.statuses]
    order = sorted(range(len(xs)), key=lambda i: xs[i].shape[0])
    params = torch.empty(len(xs), 2, dtype=torch.float64)
    ok = [False] * len(xs)
    for chunk in np.array_split(np.array(order), buckets):
        idx = chunk.tolist()
        fit = lossfit.curve_fit(model, [xs[i] for i in idx], [ys[i] for i in idx], p0[idx], batch=True)
        params[idx] = fit.params
        for j, s in zip(idx, fit.statuses, strict=True):
            ok[j] = s.success
    return params, ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--fits", type=int, default=10_000)
    parser.add_argument("--scipy-fits", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--buckets", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    xs, ys, truth = make_sets(args.fits)
    run_lossfit(xs[:100], ys[:100], 1)  # warm-up

    timings: dict[int, list[float]] = {1: [], args.buckets: []}
    results = {}
    for _ in range(args.repeat):
        for k in timings:
            t0 = time.perf_counter()
            results[k] = run_lossfit(xs, ys, k)
            timings[k].append(time.perf_counter() - t0)

    ns = min(args.scipy_fits, args.fits)
    theirs = np.empty((ns, 2))
    t0 = time.perf_counter()
    for i in range(ns):
        theirs[i] = scipy.optimize.curve_fit(np_model, xs[i].numpy(), ys[i].numpy(), p0=[1.0, 1.0])[0]
    per_scipy = (time.perf_counter() - t0) / ns
    polished = np.empty((ns, 2))
    for i in range(ns):
        xi, yi = xs[i].numpy(), ys[i].numpy()
        polished[i] = scipy.optimize.least_squares(
            lambda p, xi=xi, yi=yi: np_model(xi, *p) - yi, theirs[i], method="lm", ftol=1e-15, xtol=1e-15, gtol=1e-15
        ).x

    print(
        f"# {args.fits} ragged curve fits (10-200 points), float64, torch {torch.__version__}, {args.threads} "
        f"threads, {platform.machine()}"
    )
    print()
    print(
        "| method | fits timed | time per fit | total for all fits | lossfit's speed-up | max rel. diff vs polished |"
    )
    print("|---|---|---|---|---|---|")
    for k, times in timings.items():
        params, ok = results[k]
        diff = np.abs(params[:ns].numpy() - polished) / np.abs(polished)
        median = statistics.median(times)
        label = "one call, padded to the longest" if k == 1 else f"{k} calls, sets sorted by length"
        print(
            f"| lossfit, {label} (median of {args.repeat}) | {args.fits} | {median / args.fits * 1e6:.1f} us | "
            f"{median:.2f} s (measured) | {per_scipy * args.fits / median:.1f}x | {diff.max():.1e} "
            f"({sum(ok)} of {args.fits} verified successes) |"
        )
    diff = np.abs(theirs - polished) / np.abs(polished)
    print(
        f"| scipy curve_fit, one by one | {ns} | {per_scipy * 1e6:.1f} us | {per_scipy * args.fits:.1f} s "
        f"(extrapolated) | 1x | {diff.max():.1e} |"
    )
    err = float(((results[1][0] - truth).abs() / truth).median())
    print()
    print(f"median relative error of lossfit's fits against the true (a, b): {err:.2e} (the noise floor)")


if __name__ == "__main__":
    main()
