"""Two-sided accuracy of the inverse: lossfit's default, Newton-Schulz alone, torch.linalg.inv, side by side.

For each matrix (random orthogonal factors, singular values log-spaced from 1 to 1/cond): the left and right relative
residuals ``||I - X M||_F / sqrt(n)`` and ``||I - M X||_F / sqrt(n)``, measured with the accurate residual (so the
measurement's own rounding does not hide the difference), and the wall time of a whole call (median of repeats; for
lossfit the check against torch.linalg is included). The goal (issue 11): within 10x of torch.linalg's residuals on
both sides up to condition 1e8 in float64 and 1e4 in float32.

Run: ``python benchmarks/inverse_two_sided.py [--threads N] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from collections.abc import Callable

import torch

import lossfit
from lossfit.matrices import accurate

CASES = [
    (50, torch.float64, 1e4),
    (50, torch.float64, 1e8),
    (50, torch.float64, 1e12),
    (200, torch.float64, 1e8),
    (50, torch.float32, 1e2),
    (50, torch.float32, 1e4),
    (200, torch.float32, 1e4),
]


def conditioned(n: int, cond: float, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    s = torch.logspace(0.0, -math.log10(cond), n, dtype=torch.float64)
    return ((u * s) @ v.T).to(dtype)


def sides(x: torch.Tensor, m: torch.Tensor) -> tuple[float, float]:
    size = math.sqrt(m.shape[-1])
    left = accurate.residual(x, m).norm(dim=(-2, -1)).max()
    right = accurate.residual(m, x).norm(dim=(-2, -1)).max()
    return float(left) / size, float(right) / size


def timed(call: Callable[[], torch.Tensor], repeats: int) -> tuple[torch.Tensor, float]:
    out = call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads")
    print("| matrix | method | status | left residual | right residual | right / torch's | time (call) |")
    print("|---|---|---|---|---|---|---|")
    batch = torch.stack([conditioned(20, 10.0 ** (k % 9), torch.float64, k) for k in range(100)])
    cases: list[tuple[str, torch.Tensor]] = [
        (f"n={n}, {str(dtype).removeprefix('torch.')}, cond {cond:.0e}", conditioned(n, cond, dtype))
        for n, dtype, cond in CASES
    ]
    cases.append(("batch of 100, n=20, cond 1 to 1e8, float64", batch))
    for name, m in cases:
        direct, t_direct = timed(lambda m=m: torch.linalg.inv(m), args.repeats)
        tl, tr = sides(direct, m)
        rows = []
        for label, call in (
            ("lossfit default", lambda m=m: lossfit.matrices.inverse(m)),
            ("Newton-Schulz alone (polish_steps=0)", lambda m=m: lossfit.matrices.newton_schulz(m, polish_steps=0)),
        ):
            result, t = timed(call, args.repeats)
            left, right = sides(result.params, m)
            rows.append((label, result.status.name.lower(), left, right, right / tr, t))
        rows.append(("torch.linalg.inv", "", tl, tr, 1.0, t_direct))
        for label, status, left, right, ratio, t in rows:
            print(f"| {name} | {label} | {status} | {left:.2e} | {right:.2e} | {ratio:.3g} | {t * 1e3:.3g} ms |")


if __name__ == "__main__":
    main()
