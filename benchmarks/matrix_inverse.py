"""A blog post's gradient-descent inverse vs lossfit's default vs torch.linalg.inv, side by side, one process (float64).

For each matrix: the steps and the time each method needs to bring the relative residual ``||X M - I||_F / ||I||_F``
below 1e-6 and 1e-12, and the residual it ends with.

- the post ("pytorch – matrix inverse with pytorch optimizer"): its own loop as published (``X @ M`` against ``I``
  by MSE, ``X -= lr * grad; grad *= momentum`` with lr 0.9 and momentum 0.9, random start after
  ``manual_seed(314)``, 10,000 steps), timed per step;
- lossfit: ``lossfit.matrices.inverse(M)`` with its defaults; the time to a target is the solver's own clock from its
  history, and "call" is the whole call's wall time, the check against torch.linalg included (median of repeats);
- torch.linalg.inv: wall time (median of repeats) and its residual.

Run: ``python benchmarks/matrix_inverse.py [--threads N] [--seed-steps 10000]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import lossfit
from lossfit.experiments import inverse_matrices

TARGETS = (1e-6, 1e-12)


def conditioned(n: int, cond: float, seed: int = 0) -> torch.Tensor:
    """A random n x n matrix with singular values spaced logarithmically from 1 down to 1/cond."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)
    return u @ torch.diag(s) @ v.T


def relres(x: torch.Tensor, m: torch.Tensor) -> float:
    n = m.shape[-1]
    return float((x @ m - torch.eye(n, dtype=m.dtype)).norm() / n**0.5)


def seed_method(m: torch.Tensor, steps: int) -> tuple[dict[float, tuple[int, float] | None], float, float]:
    """The seed's loop, verbatim in substance; returns first (step, seconds) per target, final residual, total time."""
    n = m.shape[0]
    eye = torch.eye(n, dtype=m.dtype)
    torch.manual_seed(314)
    x = torch.rand(n, n, dtype=m.dtype, requires_grad=True)
    reached: dict[float, tuple[int, float] | None] = {t: None for t in TARGETS}
    start = time.perf_counter()
    for step in range(steps + 1):
        elapsed = time.perf_counter() - start
        loss = ((x @ m - eye) ** 2).mean()
        # The seed records every loss; the residual after `step` updates follows from it: sqrt(n * mse).
        res = (n * float(loss.detach())) ** 0.5
        for t in TARGETS:
            if reached[t] is None and res <= t:
                reached[t] = (step, elapsed)
        if step == steps or res != res:  # done, or NaN (diverged)
            break
        loss.backward()
        with torch.no_grad():
            x -= 0.9 * x.grad
            x.grad *= 0.9
    return reached, relres(x.detach(), m), time.perf_counter() - start


def lossfit_default(m: torch.Tensor, repeats: int) -> tuple[dict[float, tuple[int, float] | None], float, float, str]:
    lossfit.matrices.inverse(m)  # warm-up
    calls, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = lossfit.matrices.inverse(m)
        calls.append(time.perf_counter() - start)
    assert result is not None and result.history is not None
    n = m.shape[-1]
    residuals = (n * result.history.loss).sqrt()
    reached: dict[float, tuple[int, float] | None] = {}
    for t in TARGETS:
        below = (residuals <= t).nonzero()
        reached[t] = (int(below[0]), float(result.history.time[int(below[0])])) if below.numel() else None
    return reached, relres(result.params, m), statistics.median(calls), result.status.name.lower()


def linalg(m: torch.Tensor, repeats: int) -> tuple[float, float]:
    torch.linalg.inv(m)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        x = torch.linalg.inv(m)
        times.append(time.perf_counter() - start)
    return relres(x, m), statistics.median(times)


def fmt_reach(value: tuple[int, float] | None) -> str:
    return "not reached" if value is None else f"{value[0]} / {value[1] * 1e3:.3g} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed-steps", type=int, default=10_000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = {name: m for name, m in inverse_matrices(torch.float64).items()}
    for n in (64, 256):
        for cond in (10.0, 1e4):
            cases[f"n={n}, cond={cond:g}"] = conditioned(n, cond)
    print(
        f"# matrix inverse, float64, torch {torch.__version__}, {args.threads} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    print()
    print(
        "| matrix | method | steps / time to 1e-6 | steps / time to 1e-12 | final residual | time (call) "
        "| speed-up to 1e-6 |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, m in cases.items():
        seed_reach, seed_res, seed_total = seed_method(m, args.seed_steps)
        repeats = 20 if m.shape[0] <= 64 else 5
        ours_reach, ours_res, ours_call, status = lossfit_default(m, repeats)
        torch_res, torch_time = linalg(m, 50)
        if seed_reach[1e-6] is not None:
            speedup = f"{seed_reach[1e-6][1] / ours_call:.0f}x (seed time to 1e-6 / lossfit whole call)"
        else:
            speedup = (
                f"> {seed_total / ours_call:.0f}x (seed never reached it in {args.seed_steps} steps, "
                f"{seed_total:.2f} s)"
            )
        print(
            f"| {name} | the post's SGD (0.9/0.9) | {fmt_reach(seed_reach[1e-6])} | {fmt_reach(seed_reach[1e-12])} "
            f"| {seed_res:.2e} | {seed_total * 1e3:.4g} ms ({args.seed_steps} steps) | |"
        )
        print(
            f"| {name} | lossfit default ({status}) | {fmt_reach(ours_reach[1e-6])} | {fmt_reach(ours_reach[1e-12])} "
            f"| {ours_res:.2e} | {ours_call * 1e3:.3g} ms | {speedup} |"
        )
        print(f"| {name} | torch.linalg.inv | 1 call | 1 call | {torch_res:.2e} | {torch_time * 1e3:.3g} ms | |")


if __name__ == "__main__":
    main()
