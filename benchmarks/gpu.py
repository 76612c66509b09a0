"""lossfit's batched paths on a GPU (issue 11, item 6): 10^6 curve fits, a batch of inverses, a 1 mm registration.

Each task runs on ``--device`` (``cuda`` by default; the script stops with one line when no GPU is there) and, for
the ratio, the same call on the CPU at a size the CPU finishes in seconds (``--cpu-fraction`` of the problems,
extrapolated linearly and marked so). Every answer is checked as on the CPU: the fits' verified successes, the
inverses' two-sided residuals against torch.linalg.inv's on the same device, the registration's error against the
known transform.

- curve fits: ``y = a (1 - exp(-b x))``, 20 points each, ``--fits`` problems (10^6) in one ``least_squares`` call;
- inverses: ``--inverses`` random matrices of size ``--n`` (condition up to 1e6), float64, ``lossfit.matrices.inverse``;
- registration: nilearn's MNI152 at 1 mm against itself through a known affine warp (``benchmarks/registration.py``'s
  ``mni1mm`` case), ``lossfit.register(..., "affine")``, images moved to the device.

Run: ``python benchmarks/gpu.py [--device cuda] [--fits 1000000] [--tasks curves,inverses,registration]``;
``--device cpu --fits 20000 --inverses 50 --tasks curves,inverses`` is a dry run of the script itself.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import lossfit


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """``fn()`` and its wall time, the device synchronised before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


def curve_problems(b: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, 5, 20, dtype=torch.float64).expand(b, 20).contiguous()
    a = 0.5 + 2 * torch.rand(b, 1, generator=g, dtype=torch.float64)
    k = 0.3 + 2 * torch.rand(b, 1, generator=g, dtype=torch.float64)
    y = a * (1 - torch.exp(-k * x)) + 0.02 * torch.randn(b, 20, generator=g, dtype=torch.float64)
    return x.to(device), y.to(device)


def residual(p: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return p[0] * (1 - torch.exp(-p[1] * x)) - y


def curves(device: torch.device, fits: int, cpu_fits: int) -> list[str]:
    def call(dev: torch.device, b: int) -> tuple[lossfit.FitResult, float]:
        x, y = curve_problems(b, dev)
        start = torch.ones(b, 2, dtype=torch.float64, device=dev)
        lossfit.least_squares(residual, start[:100], args=(x[:100], y[:100]), batch=True)  # warm-up
        return timed(lambda: lossfit.least_squares(residual, start, args=(x, y), batch=True), dev)

    result, seconds = call(device, fits)
    ok = sum(s.success for s in result.statuses)
    _, cpu_seconds = call(torch.device("cpu"), cpu_fits)
    cpu_total = cpu_seconds * fits / cpu_fits
    return [
        f"| {fits} curve fits (LM, 20 points) | {device} | {seconds:.3f} s | {ok} of {fits} verified | "
        f"CPU: {cpu_total:.2f} s ({'extrapolated from ' + str(cpu_fits) if cpu_fits < fits else 'measured'}) | "
        f"{cpu_total / seconds:.1f}x |"
    ]


def inverses(device: torch.device, count: int, n: int, cpu_count: int) -> list[str]:
    from lossfit.matrices import accurate

    def accurate_residuals(a: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = a.shape[-1] ** 0.5  # relative: ||I - X M||_F / sqrt(n), as benchmarks/inverse_two_sided.py
        left = accurate.residual(x, a).norm(dim=(-2, -1)) / scale
        return left, accurate.residual(a, x).norm(dim=(-2, -1)) / scale

    def matrices(b: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(1)
        u, _ = torch.linalg.qr(torch.randn(b, n, n, generator=g, dtype=torch.float64))
        v, _ = torch.linalg.qr(torch.randn(b, n, n, generator=g, dtype=torch.float64))
        s = torch.logspace(0, -6, n, dtype=torch.float64)
        return u @ torch.diag_embed(s.expand(b, n)) @ v.transpose(1, 2)

    m = matrices(count).to(device)
    result, seconds = timed(lambda: lossfit.matrices.inverse(m), device)
    reference, ref_seconds = timed(lambda: torch.linalg.inv(m), device)
    left, right = accurate_residuals(m, result.params)
    ref_left, ref_right = accurate_residuals(m, reference)
    m_cpu = matrices(cpu_count)
    _, cpu_seconds = timed(lambda: lossfit.matrices.inverse(m_cpu), torch.device("cpu"))
    cpu_total = cpu_seconds * count / cpu_count
    return [
        f"| {count} inverses, n = {n}, condition 1e6, float64 | {device} | {seconds:.3f} s "
        f"(torch.linalg.inv {ref_seconds * 1e3:.2f} ms) | {result.status.name}; worst residuals left {left.max():.1e} "
        f"right {right.max():.1e} (torch's {ref_left.max():.1e} / {ref_right.max():.1e}) | CPU: {cpu_total:.2f} s "
        f"({'extrapolated from ' + str(cpu_count) if cpu_count < count else 'measured'}) | {cpu_total / seconds:.1f}x |"
    ]


def registration(device: torch.device) -> list[str]:
    sys.path.insert(0, str(Path(__file__).parent))
    from registration import errors, make_case

    case = make_case("mni1mm", 0)
    rows = []
    for dev in (device, torch.device("cpu")):
        fixed, moving = case.fixed.to(device=dev), case.moving.to(device=dev)
        lossfit.register(fixed, moving, transform="affine")  # warm-up (kernels, allocator)
        result, seconds = timed(lambda f=fixed, m=moving: lossfit.register(f, m, transform="affine"), dev)
        mean, p95 = errors(case, result.matrix.detach().cpu().double().numpy())
        rows.append((dev, seconds, result.status.name, mean, p95))
    (dev, seconds, status, mean, p95), (_, cpu_seconds, cpu_status, cpu_mean, _) = rows
    return [
        f"| MNI152 1 mm affine registration | {dev} | {seconds:.2f} s | {status}, mean error {mean:.4f} mm "
        f"(p95 {p95:.4f}) | CPU: {cpu_seconds:.2f} s, {cpu_status}, {cpu_mean:.4f} mm (measured) | "
        f"{cpu_seconds / seconds:.1f}x |"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tasks", default="curves,inverses,registration")
    parser.add_argument("--fits", type=int, default=1_000_000)
    parser.add_argument("--inverses", type=int, default=1_000)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--cpu-fraction", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run with a GPU, or --device cpu for a dry run of the script")
        raise SystemExit(2)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    print(f"# lossfit on {name}; torch {torch.__version__}; CPU side: {args.threads} threads, {platform.machine()}")
    print()
    print("| task | device | time | answers | the same on the CPU | speed-up |")
    print("|---|---|---|---|---|---|")
    tasks = args.tasks.split(",")
    if "curves" in tasks:
        cpu_fits = max(1000, int(args.fits * args.cpu_fraction))
        for row in curves(device, args.fits, min(cpu_fits, args.fits)):
            print(row, flush=True)
    if "inverses" in tasks:
        cpu_count = max(10, int(args.inverses * args.cpu_fraction))
        for row in inverses(device, args.inverses, args.n, min(cpu_count, args.inverses)):
            print(row, flush=True)
    if "registration" in tasks:
        for row in registration(device):
            print(row, flush=True)


if __name__ == "__main__":
    main()
