"""Registration accuracy on the geometry corpus: pairs on two different grids, made by SimpleITK, known answers.

The pairs are those of ``tests/test_registration_trust.py`` (``tests/registration_pairs.py``): seeded random grids
(anisotropic spacing, oblique directions with flipped and permuted axes, origins, fields of view that cut off part
of the object), the moving image resampled by SimpleITK through a known world transform. For each transform and
metric the table gives how many pairs ``register`` calls a success, how many of those are right (mean error over
the fixed foreground under a tenth of the finer voxel), how many successes are wrong by more than one voxel (the
defect that must never happen), and the worst and median error in tenths of the finer voxel.

Run: ``python benchmarks/registration_corpus.py [--dims 2,3] [--threads 2]``. With ``PYTHONPATH`` pointing at an
older checkout's ``src`` it measures that version on the same pairs (results without ``checks`` are fine).
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

import lossfit
from registration_pairs import random_pair

CASES = {
    2: (
        "camera",
        ["translation", "rigid", "similarity", "affine", "projective"],
        range(3),
        ["mse", "ncc", "mi", "lncc"],
    ),
    3: ("mni", ["translation", "rigid", "similarity", "affine"], range(2), ["mse", "ncc", "mi"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="2,3")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# registration corpus, lossfit from {Path(lossfit.__file__).parent}, {args.threads} threads, ")
    print(f"# {platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}")
    print()
    print(
        "| d | transform | metric | pairs | success | right | wrong success (> 1 voxel) | worst / median error "
        "(tenths of a voxel) | time per pair (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    totals = {"pairs": 0, "success": 0, "right": 0, "wrong": 0}
    for d in (int(v) for v in args.dims.split(",")):
        name, models, seeds, metrics = CASES[d]
        for model, metric in itertools.product(models, metrics):
            ratios, successes, right, wrong, times = [], 0, 0, 0, []
            for seed in seeds:
                pair = random_pair(seed, model, name)
                start = time.perf_counter()
                result = lossfit.register(pair.fixed, pair.moving, model, metric)
                times.append(time.perf_counter() - start)
                ratio = pair.error(result.matrix) / pair.tolerance
                ratios.append(ratio)
                successes += bool(result.success)
                right += bool(result.success) and ratio < 1
                wrong += bool(result.success) and ratio > 10
            n = len(ratios)
            for key, value in (("pairs", n), ("success", successes), ("right", right), ("wrong", wrong)):
                totals[key] += value
            print(
                f"| {d} | {model} | {metric} | {n} | {successes} | {right} | {wrong} | "
                f"{max(ratios):.3g} / {statistics.median(ratios):.3g} | {statistics.median(times):.2f} |",
                flush=True,
            )
    print()
    print(
        f"total: {totals['pairs']} pairs, {totals['success']} successes, {totals['right']} right, "
        f"{totals['wrong']} wrong successes"
    )


if __name__ == "__main__":
    main()
