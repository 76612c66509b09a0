"""Point alignment: lossfit vs scikit-image's estimate_transform vs scipy's robust least squares, in one process.

Accuracy: for each model (rigid, similarity, affine, projective; 2-D) and outlier rate (0%, 10%, 40%), 50 random
point sets of 60 pairs (noise 0.02 on a 10 x 10 field, outliers displaced by N(0, 5^2)); the error of a fit is the mean
distance between the fitted and the true transform's images of the source points; the table gives the median over the
sets. Methods:
- lossfit: ``lossfit.align`` with loss "mse" at 0% and "cauchy" otherwise (its defaults: closed form, then a
  least-median-of-squares start for the robust loss);
- skimage: ``estimate_transform`` (closed-form least squares; scikit-image's RANSAC needs a threshold, so it is not
  a like-for-like default);
- scipy: ``least_squares(loss="cauchy", f_scale=0.05)`` on the same parametrisation, started at the identity.

Speed: 10,000 affine point sets (60 pairs, 10% outliers, Cauchy loss): lossfit in one batched call against scipy's
``least_squares`` (its residual in plain numpy) looped over a sample of sets and extrapolated (marked as such). The
batched call is timed ``--repeat`` times after a warm-up on 10 sets; the table gives the median and, separately, the
first call (which also pays for the process's first use of that much memory).

Run: ``python benchmarks/points.py [--threads N] [--repeat 3] [--speed-only]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import scipy.optimize
import torch
from skimage.transform import estimate_transform

import lossfit
from lossfit import transforms as T

SKIMAGE = {"rigid": "euclidean", "similarity": "similarity", "affine": "affine", "projective": "projective"}


def true_matrix(model: str, g: torch.Generator) -> torch.Tensor:
    p = 0.3 * torch.randn(T.num_params(model, 2), generator=g, dtype=torch.float64)
    if model == "affine":
        p[:4] += torch.eye(2, dtype=torch.float64).reshape(-1)
    if model == "projective":
        p += torch.eye(3, dtype=torch.float64).reshape(-1)[:-1]
        p[6:8] *= 0.05
    return T.matrix(model, p, 2)


def point_set(model: str, rate: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m = true_matrix(model, g)
    src = 10 * torch.rand(60, 2, generator=g, dtype=torch.float64)
    dst = T.apply(m, src) + 0.02 * torch.randn(60, 2, generator=g, dtype=torch.float64)
    k = int(rate * 60)
    if k:
        idx = torch.randperm(60, generator=g)[:k]
        dst[idx] += 5 * torch.randn(k, 2, generator=g, dtype=torch.float64)
    return src, dst, m


def error(m: torch.Tensor, truth: torch.Tensor, src: torch.Tensor) -> float:
    if not bool(torch.isfinite(m).all()):
        return float("inf")
    return float((T.apply(m, src) - T.apply(truth, src)).norm(dim=-1).mean())


def scipy_fit(model: str, src: torch.Tensor, dst: torch.Tensor, loss: str) -> torch.Tensor:
    s, d = src.numpy(), dst.numpy()

    def residual(p: np.ndarray) -> np.ndarray:
        m = T.matrix(model, torch.from_numpy(p), 2)
        return (T.apply(m, torch.from_numpy(s)).numpy() - d).ravel()

    p0 = T.params(model, torch.eye(3, dtype=torch.float64)).numpy()
    fit = scipy.optimize.least_squares(residual, p0, loss=loss, f_scale=0.05)
    return T.matrix(model, torch.from_numpy(fit.x), 2)


def scipy_affine_numpy(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The fair timing of scipy: an affine residual in plain numpy, robust loss, started at the identity."""

    def residual(p: np.ndarray) -> np.ndarray:
        return (src @ p[:4].reshape(2, 2).T + p[4:] - dst).ravel()

    return scipy.optimize.least_squares(residual, np.array([1.0, 0, 0, 1, 0, 0]), loss="cauchy", f_scale=0.05).x


def accuracy_table(sets: int) -> list[str]:
    rows = []
    for model in ("rigid", "similarity", "affine", "projective"):
        for rate in (0.0, 0.1, 0.4):
            g = torch.Generator().manual_seed(1000 + int(rate * 100))
            errors: dict[str, list[float]] = {"lossfit": [], "skimage": [], "scipy": []}
            for _ in range(sets):
                src, dst, m = point_set(model, rate, g)
                loss = "mse" if rate == 0 else "cauchy"
                errors["lossfit"].append(error(lossfit.align(src, dst, model=model, loss=loss).matrix, m, src))
                tform = estimate_transform(SKIMAGE[model], src.numpy(), dst.numpy())
                errors["skimage"].append(error(torch.from_numpy(np.asarray(tform.params)), m, src))
                errors["scipy"].append(error(scipy_fit(model, src, dst, "linear" if rate == 0 else "cauchy"), m, src))
            med = {k: statistics.median(v) for k, v in errors.items()}
            best = min(med, key=med.get)  # type: ignore[arg-type]
            rows.append(
                f"| {model} | {rate:.0%} | {med['lossfit']:.2e} | {med['skimage']:.2e} | {med['scipy']:.2e} | {best} |"
            )
    return rows


def speed(sets: int, sample: int, repeat: int) -> list[str]:
    g = torch.Generator().manual_seed(7)
    data = [point_set("affine", 0.1, g) for _ in range(sets)]
    src = torch.stack([d[0] for d in data])
    dst = torch.stack([d[1] for d in data])
    lossfit.align(src[:10], dst[:10], model="affine", loss="cauchy", f_scale=0.05)  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        batch = lossfit.align(src, dst, model="affine", loss="cauchy", f_scale=0.05)
        times.append(time.perf_counter() - t0)
    first, ours = times[0], statistics.median(times)
    src_np, dst_np = src.numpy(), dst.numpy()
    t0 = time.perf_counter()
    for i in range(sample):
        scipy_affine_numpy(src_np[i], dst_np[i])
    per = (time.perf_counter() - t0) / sample
    t0 = time.perf_counter()
    for i in range(sample):
        lossfit.align(src[i], dst[i], model="affine", loss="cauchy", f_scale=0.05)
    per_loop = (time.perf_counter() - t0) / sample
    ok = sum(s.success for s in batch.statuses)
    return [
        f"| lossfit, one batched call (median of {repeat}) | {sets} | {ours:.2f} s (measured) "
        f"| {ours / sets * 1e3:.3f} ms | 1x |",
        f"| lossfit, one batched call (the first of those) | {sets} | {first:.2f} s (measured) "
        f"| {first / sets * 1e3:.3f} ms | {first / ours:.2f}x |",
        f"| lossfit, looped | {sample} | {per_loop * sets:.1f} s (extrapolated) | {per_loop * 1e3:.2f} ms "
        f"| {per_loop * sets / ours:.0f}x |",
        f"| scipy least_squares (cauchy), looped | {sample} | {per * sets:.1f} s (extrapolated) | {per * 1e3:.2f} ms "
        f"| {per * sets / ours:.0f}x ({per * sets / first:.0f}x against the first call) |",
        "",
        f"lossfit batch: {ok} of {sets} fits verified successful.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--sets", type=int, default=50)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--sample", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3, help="batched calls timed (the median is reported)")
    parser.add_argument("--speed-only", action="store_true", help="skip the accuracy table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# point alignment, float64, torch {torch.__version__}, {args.threads} threads, {platform.machine()}")
    print()
    if not args.speed_only:
        print("Median error (mean distance to the true mapping, field 10 x 10, noise 0.02), lower is better:")
        print()
        print("| model | outliers | lossfit | skimage estimate_transform | scipy least_squares | lowest |")
        print("|---|---|---|---|---|---|")
        for row in accuracy_table(args.sets):
            print(row)
        print()
    print("| method | sets timed | total for all sets | per set | lossfit batched is faster by |")
    print("|---|---|---|---|---|")
    for row in speed(args.batch, args.sample, args.repeat):
        print(row)


if __name__ == "__main__":
    main()
