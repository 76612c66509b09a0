"""Motion correction of a series with known head motion: lossfit vs ANTsPy vs a SimpleITK loop, one process.

The series (``tests/registration_pairs.py::motion_series``): nilearn's MNI152 T1 resampled by SimpleITK onto a
3.5 mm grid (46 x 54 x 46) through seeded rigid motions (rotations up to 3 degrees about each axis, shifts up to
3 mm; volume 0 still), 1 mm smoothing, Gaussian noise of 1% of the maximum. Every tool registers every volume to
volume 0 with a rigid transform and mean squares (ANTs: its ``motion_correction`` with ``type_of_transform="Rigid"``
and its default metric). Error: the mean distance ``||T_est(x) - T(x)||`` over the brain (voxels above a fifth of
the maximum) per volume, averaged over the volumes. Time: the whole series (median of ``--repeats``), not the
making of it.

- lossfit: ``lossfit.registration.motion_correct(volumes, reference=0)``: batched calls (all volumes of the series
  in one solver run, per-volume stopping and checks).
- ANTsPy: ``ants.motion_correction(image, fixed=volume 0, type_of_transform="Rigid")`` on the 4-D ANTs image; its
  ``motion_parameters`` are ITK .mat files mapping the fixed image's physical points to each volume's, read with
  SimpleITK.
- SimpleITK: a loop of ``ImageRegistrationMethod`` (Euler3DTransform centred by geometry, mean squares, shrink 2/1,
  smoothing 1/0 voxels, RegularStepGradientDescent from step 1 to 1e-4 with physical-shift scales, 200 iterations,
  25% random sampling): the settings a careful user would pick for small motions.

Run: ``python benchmarks/motion.py [--volumes 60] [--repeats 1] [--tools lossfit,ants,sitk]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

import lossfit
from lossfit.registration import displacement
from lossfit.registration.motion import motion_correct
from registration_pairs import motion_series, sitk_matrix, to_sitk


def run_lossfit(volumes: list) -> list[np.ndarray]:  # type: ignore[type-arg]
    result = motion_correct(volumes, reference=0)
    return [m.numpy() for m in result.matrices]


def run_ants(volumes: list) -> list[np.ndarray]:  # type: ignore[type-arg]
    import ants
    import SimpleITK as sitk

    first = volumes[0]
    arrays = np.stack([v.numpy().transpose(2, 1, 0) for v in volumes], axis=-1)  # ANTs: x first, time last
    direction = np.eye(4)
    direction[:3, :3] = np.array(first.direction)
    series = ants.from_numpy(arrays, origin=[*first.origin, 0.0], spacing=[*first.spacing, 1.0], direction=direction)
    fixed = ants.from_numpy(
        arrays[..., 0], origin=list(first.origin), spacing=list(first.spacing), direction=np.array(first.direction)
    )
    out = ants.motion_correction(series, fixed=fixed, type_of_transform="Rigid")
    return [sitk_matrix(sitk.ReadTransform(p[0])) for p in out["motion_parameters"]]


def run_sitk(volumes: list) -> list[np.ndarray]:  # type: ignore[type-arg]
    import SimpleITK as sitk

    fixed = to_sitk(volumes[0])
    answers = []
    for volume in volumes:
        moving = to_sitk(volume)
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMeanSquares()
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(0.25, 1)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 200, relaxationFactor=0.5)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel([2, 1])
        method.SetSmoothingSigmasPerLevel([1, 0])
        start = sitk.CenteredTransformInitializer(
            fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
        )
        method.SetInitialTransform(start, inPlace=False)
        answers.append(sitk_matrix(method.Execute(fixed, moving)))
    return answers


TOOLS = {"lossfit": run_lossfit, "ants": run_ants, "sitk": run_sitk}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tools", default="lossfit,ants,sitk")
    args = parser.parse_args()
    tools = args.tools.split(",")
    volumes, truths = motion_series(args.seed, args.volumes)
    brain = volumes[0]
    mask = brain.data > 0.2 * float(brain.data.max())
    print(
        f"lossfit {lossfit.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads; {args.volumes} volumes of {tuple(brain.size)} at 3.5 mm"
    )
    rows = []
    with tempfile.TemporaryDirectory():
        for name in tools:
            times, answers = [], None
            for _ in range(args.repeats):
                began = time.perf_counter()
                answers = TOOLS[name](volumes)
                times.append(time.perf_counter() - began)
            assert answers is not None
            errors = [
                displacement(torch.from_numpy(a), torch.from_numpy(t), brain, mask=mask)["mean"]
                for a, t in zip(answers, truths, strict=True)
            ]
            rows.append((name, statistics.median(times), float(np.mean(errors)), float(np.max(errors))))
    fastest = min(r[1] for r in rows)
    print("| tool | time (s) | per volume (s) | mean error (mm) | worst volume (mm) | time / fastest |")
    print("|---|---|---|---|---|---|")
    for name, t, mean, worst in rows:
        print(f"| {name} | {t:.2f} | {t / args.volumes:.3f} | {mean:.4f} | {worst:.4f} | {t / fastest:.2f} |")


if __name__ == "__main__":
    main()
