"""Pairs per minute for a cohort on one machine: an in-process loop, a LocalCluster of 1 and of 2 workers (a task per
pair, and tasks of 8 pairs registered in batched calls), and the cluster's per-task overhead (a trivial task's round
trip).

Two cohorts (``--data``):

- ``mni`` (the default): nilearn's MNI152 T1 on two random 2 mm grids per pair (oblique, axis flips and
  permutations, a field of view that may cut part of the head off), the moving one seen through a known rigid warp
  (up to 6 degrees and 6 mm), made and written as NIfTI by SimpleITK (``tests/registration_pairs.py::random_pair``);
  each pair has its own fixed grid, so no two pairs share a shape and a batch cannot group them.
- ``ct``: CT_small (pydicom's test data, 128 x 128, 2-D) and copies seen through known small rigid warps on one grid
  of their own, saved as NIfTI.

Each pair is registered (rigid, mse) and its run folder written, as ``lossfit register-many`` does; every pair's
answer is checked against its known warp (mean error over the fixed image's foreground under a tenth of a voxel).
Run: ``.venv/bin/python benchmarks/cohort.py [--data mni|ct] [--pairs 40]``.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))


def make_mni_cohort(folder: Path, count: int) -> tuple[list[tuple[str, Path, Path]], dict]:  # type: ignore[type-arg]
    """MNI152 pairs on two random 2 mm grids each, written by SimpleITK; and each pair's known answer."""
    import SimpleITK as sitk

    from registration_pairs import random_pair, to_sitk

    pairs, known = [], {}
    for i in range(count):
        pair = random_pair(100 + i, "rigid", "mni", spacing=(2.0, 2.0))
        name = f"p{i:03d}"
        for role, image in (("fixed", pair.fixed), ("moving", pair.moving)):
            sitk.WriteImage(to_sitk(image), str(folder / f"{name}_{role}.nii.gz"))
        pairs.append((name, folder / f"{name}_fixed.nii.gz", folder / f"{name}_moving.nii.gz"))
        known[name] = pair
    return pairs, known


def make_cohort(folder: Path, count: int) -> list[tuple[str, Path, Path]]:
    import numpy as np
    import pydicom
    import torch

    from lossfit.registration import Image, load_image, resample, save_image

    fixed = load_image(Path(str(pydicom.data.get_testdata_file("CT_small.dcm"))))
    save_image(fixed, folder / "fixed.nii.gz")
    c, t = fixed.center, math.radians(10)
    direction = [[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]]
    origin = (c[0] - 45 * math.cos(t) + 40 * math.sin(t), c[1] - 45 * math.sin(t) - 40 * math.cos(t))
    grid = Image(torch.zeros(115, 113), spacing=(0.8, 0.7), origin=origin, direction=direction)
    rng = np.random.default_rng(0)
    centre = torch.tensor(c, dtype=torch.float64)
    pairs = []
    for i in range(count):
        a = math.radians(float(rng.uniform(-6, 6)))
        linear = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
        warp = torch.eye(3, dtype=torch.float64)
        warp[:2, :2] = linear
        warp[:2, 2] = centre - linear @ centre + torch.tensor(rng.uniform(-3, 3, 2), dtype=torch.float64)
        save_image(resample(fixed, grid, warp), folder / f"moving{i:03d}.nii.gz")
        pairs.append((f"p{i:03d}", folder / "fixed.nii.gz", folder / f"moving{i:03d}.nii.gz"))
    return pairs


def _error(known: dict, folder: Path, name: str) -> tuple[float, float]:  # type: ignore[type-arg]
    """A pair's mean error (mm) against its known warp, from the matrix its run folder holds, and its tolerance."""
    import json

    import torch

    matrix = torch.tensor(json.loads((folder / name / "transform.json").read_text())["matrix"], dtype=torch.float64)
    pair = known[name]
    return pair.error(matrix), pair.tolerance


def _warm_up() -> None:
    """The imports a worker needs once (torch, the registration, the writer and matplotlib for the picture)."""


def _nothing(x: int) -> int:
    return x


def main() -> None:
    import distributed
    import torch

    from lossfit.scale import as_pairs, register_many, register_pair

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--data", choices=("mni", "ct"), default="mni")
    parser.add_argument("--round-trips", type=int, default=200)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lossfit-cohort-bench-"))
    try:
        known = {}
        if args.data == "mni":
            pairs, known = make_mni_cohort(root, args.pairs)
        else:
            pairs = make_cohort(root, args.pairs)
        rows = []
        torch.set_num_threads(1)  # as each task does
        began = time.perf_counter()
        (root / "seq").mkdir()
        seq = [register_pair(p, root / "seq", {"transform": "rigid"}) for p in as_pairs(pairs)]
        elapsed = time.perf_counter() - began
        assert all(r["success"] for r in seq)
        errors = [_error(known, root / "seq", name) for name in known]
        rows.append(("in-process loop (1 thread)", elapsed, None, elapsed))
        for workers, batch in ((1, 1), (2, 1), (2, 8)):
            began = time.perf_counter()
            cluster = distributed.LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
            )
            client = distributed.Client(cluster)
            client.run(_warm_up)
            ready = time.perf_counter()
            result = register_many(pairs, root / f"w{workers}b{batch}", client=client, transform="rigid", batch=batch)
            done = time.perf_counter()
            assert result.success, result.counts
            errors += [_error(known, root / f"w{workers}b{batch}", name) for name in known]
            if workers == 2 and batch == 1:
                client.submit(_nothing, 0, pure=False).result()
                trip = time.perf_counter()
                for i in range(args.round_trips):
                    client.submit(_nothing, i, pure=False).result()
                overhead = (time.perf_counter() - trip) / args.round_trips
            client.close()
            cluster.close()
            name = f"LocalCluster, {workers} worker{'s' if workers > 1 else ''}" + (
                f", batch {batch}" if batch > 1 else ""
            )
            rows.append((name, done - ready, ready - began, done - began))
        what = "MNI152 pairs on two random 2 mm grids each" if args.data == "mni" else "2-D pairs (CT_small 128x128)"
        print(f"{args.pairs} {what}, rigid, mse, run folders written; {torch.__version__}\n")
        print("| run | pairs/min (work) | cluster start (s) | pairs/min (with start) |")
        print("|---|---:|---:|---:|")
        for name, work, start, total in rows:
            start_cell = "-" if start is None else f"{start:.1f}"
            print(f"| {name} | {60 * args.pairs / work:.0f} | {start_cell} | {60 * args.pairs / total:.0f} |")
        print(f"\ncluster overhead: a trivial task's round trip (submit, result), {args.round_trips} in a row: "
              f"{1000 * overhead:.1f} ms")  # fmt: skip
        if errors:
            worst = max(e / tol for e, tol in errors)
            mean = sum(e for e, _ in errors) / len(errors)
            print(f"known answers: {len(errors)} registrations, mean error {mean:.4f} mm, the worst at {worst:.2f} "
                  "of its pair's tolerance (a tenth of the finer voxel)")  # fmt: skip
            assert worst <= 1.0, "a registration missed its known answer"
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
