"""Parameter maps: lossfit.maps.fit_map against the scipy curve_fit loop, the log-linear closed form and dipy's IVIM,
side by side on the same simulated data in one process (and, for the chunked run, its Dask workers).

Sections (each prints a Markdown table):

1. speed: a 1,000,000-voxel 3-parameter map (``S0 exp(-TE/T2) + C``, 8 echoes, Gaussian noise): lossfit's whole
   call (median of ``--repeats``) against scipy's ``curve_fit`` per voxel, timed on ``--sample`` voxels and scaled;
   the same minima: the fraction of sampled voxels where lossfit's cost is at most scipy's (1 + 1e-9), and the
   median relative difference of the parameters. Also the MNI152 phantom at 2 mm (its brain voxels).
2. accuracy against SNR: T2 on the MNI152 phantom (4 mm, Rician noise): median relative error of T2 in grey and
   white matter for the log-linear fit (weighted by y^2), least squares and the Rician likelihood.
3. IVIM: lossfit against dipy's ``IvimModel`` (its default two-stage fit) on phantom voxels: time and median errors
   of f, D and D*.
4. beyond memory: ``fit_map_chunked`` on a NIfTI file larger than the memory the run is seen to use: input size,
   peak resident memory over all processes (above their idle level), time, and equality with the in-memory map on
   a sample of slices.

Run: ``python benchmarks/maps.py [--voxels 1000000] [--sample 2000] [--repeats 3] [--skip-chunked]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from lossfit.maps import fit_map, fit_map_chunked
from lossfit.maps.models import log_linear
from lossfit.maps.phantom import ACQUISITIONS, mni_phantom

TE = torch.tensor([10.0, 20, 30, 40, 50, 60, 70, 80], dtype=torch.float64)


def offset_voxels(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    s0 = 800 + 400 * torch.rand(n, generator=gen, dtype=torch.float64)
    t2 = 40 + 80 * torch.rand(n, generator=gen, dtype=torch.float64)
    c = 20 * torch.rand(n, generator=gen, dtype=torch.float64)
    y = (
        s0[:, None] * torch.exp(-TE / t2[:, None])
        + c[:, None]
        + 10 * torch.randn(n, 8, generator=gen, dtype=torch.float64)
    )
    return y, torch.stack([s0, t2, c], dim=1)


def scipy_loop(y: np.ndarray, x: np.ndarray, f, starts: np.ndarray) -> tuple[np.ndarray, float]:
    from scipy.optimize import curve_fit

    out = np.full((len(y), starts.shape[1]), np.nan)
    start = time.perf_counter()
    for i in range(len(y)):
        with contextlib.suppress(RuntimeError):  # a voxel scipy gives up on stays NaN
            out[i] = curve_fit(f, x, y[i], p0=starts[i])[0]
    return out, time.perf_counter() - start


def speed(args: argparse.Namespace) -> None:
    print("\n### 1. Speed: a 3-parameter map (S0 exp(-TE/T2) + C, 8 echoes)\n")
    y, _ = offset_voxels(args.voxels)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = fit_map(y, TE, "t2-offset")
        times.append(time.perf_counter() - start)
    ours = statistics.median(times)
    sample = y[: args.sample]
    starts = np.stack([result.maps[n][: args.sample].numpy() for n in result.parameters], axis=1)

    def f(x, a, b, c):
        return a * np.exp(-x / b) + c

    # scipy from lossfit's own closed-form start (the weighted log-linear fit of y - offset), so both begin alike.
    from lossfit.maps.models import BUILT_IN

    assert BUILT_IN["t2-offset"].start is not None
    closed = BUILT_IN["t2-offset"].start(TE[:, None], sample.T).T.numpy()
    fitted, spent = scipy_loop(sample.numpy(), TE.numpy(), f, closed)
    per_voxel = spent / args.sample
    scaled = per_voxel * args.voxels
    ours_p = starts
    pred_ours = ours_p[:, :1] * np.exp(-TE.numpy() / ours_p[:, 1:2]) + ours_p[:, 2:3]
    pred_scipy = fitted[:, :1] * np.exp(-TE.numpy() / fitted[:, 1:2]) + fitted[:, 2:3]
    c_ours = ((pred_ours - sample.numpy()) ** 2).sum(1)
    c_scipy = ((pred_scipy - sample.numpy()) ** 2).sum(1)
    valid = np.isfinite(c_scipy) & np.isfinite(c_ours)
    not_worse = float(np.mean(c_ours[valid] <= c_scipy[valid] * (1 + 1e-9)))
    rel = np.abs(ours_p - fitted) / np.maximum(np.abs(fitted), 1.0)
    print("| method | voxels | time | per voxel | ratio | statuses |")
    print("|---|---|---|---|---|---|")
    print(
        f"| lossfit fit_map (float64) | {args.voxels:,} | {ours:.2f} s (median of {args.repeats}: "
        f"{', '.join(f'{t:.2f}' for t in times)}) | {ours / args.voxels * 1e6:.2f} us | 1 | {result.counts} |"
    )
    print(
        f"| scipy curve_fit loop | {args.sample:,} timed, scaled to {args.voxels:,} | {scaled:.0f} s "
        f"({spent:.2f} s measured) | {per_voxel * 1e6:.0f} us | {scaled / ours:.0f}x slower | |"
    )
    print(
        f"\nSame minima: lossfit's cost <= scipy's (1 + 1e-9) in {not_worse:.1%} of {int(valid.sum())} sampled voxels; "
        f"median relative parameter difference {np.nanmedian(rel, axis=0)} (S0, T2, C), 99th percentile "
        f"{np.nanpercentile(rel, 99, axis=0)}."
    )
    series, truth, _, _ = mni_phantom("t2", snr=50, resolution=2, seed=1)
    inside = ~torch.isnan(truth["T2"].data)
    start = time.perf_counter()
    mapped = fit_map(series, ACQUISITIONS["t2"], "t2-offset", mask=inside)
    spent_mni = time.perf_counter() - start
    print(
        f"\nMNI152 phantom at 2 mm, t2-offset: {int(inside.sum()):,} brain voxels in {spent_mni:.2f} s "
        f"({spent_mni / int(inside.sum()) * 1e6:.2f} us a voxel); statuses {mapped.counts}."
    )


def accuracy(args: argparse.Namespace) -> None:
    print("\n### 2. T2 error against SNR (MNI152 phantom, 4 mm, Rician noise; grey and white matter)\n")
    print("Each cell: median |relative error| / median relative error (the bias).\n")
    print("| SNR | log-linear (weighted) | least squares | Rician likelihood | voxels |")
    print("|---|---|---|---|---|")
    for snr in (5, 10, 20, 50, 100):
        series, truth, labels, sigma = mni_phantom("t2", snr=snr, resolution=4, seed=snr)
        inside = ~torch.isnan(truth["T2"].data)
        tissue = inside & ((labels.data == 1) | (labels.data == 2))
        flat = series.data.reshape(series.data.shape[0], -1).double()[:, tissue.reshape(-1)]
        x = torch.tensor(ACQUISITIONS["t2"], dtype=torch.float64)[:, None]
        _, t2_log = log_linear(x, flat)
        true = truth["T2"].data[tissue].double()
        plain = fit_map(series, ACQUISITIONS["t2"], "t2", mask=tissue)
        rician = fit_map(series, ACQUISITIONS["t2"], "t2", mask=tissue, noise="rician", sigma=sigma)

        def err(values: torch.Tensor, true: torch.Tensor = true) -> str:
            relative = (values - true) / true
            return f"{float(relative.abs().median()):.4f} / {float(relative.median()):+.4f}"

        print(
            f"| {snr} | {err(t2_log)} | {err(plain.maps['T2'].data[tissue].double())} | "
            f"{err(rician.maps['T2'].data[tissue].double())} | {int(tissue.sum()):,} |"
        )


def ivim(args: argparse.Namespace) -> None:
    print("\n### 3. IVIM: lossfit against dipy (MNI152 phantom voxels, 2 mm, SNR 50)\n")
    from dipy.core.gradients import gradient_table
    from dipy.reconst.ivim import IvimModel

    series, truth, labels, _ = mni_phantom("ivim", snr=50, resolution=2, seed=7)
    tissue = (labels.data == 1) | (labels.data == 2)
    index = torch.nonzero(tissue.reshape(-1)).reshape(-1)[:: max(1, int(tissue.sum()) // args.ivim_voxels)]
    index = index[: args.ivim_voxels]
    flat = series.data.reshape(series.data.shape[0], -1)[:, index].double()
    b = np.asarray(ACQUISITIONS["ivim"])
    directions = np.zeros((len(b), 3))
    directions[b > 0] = [1.0, 0.0, 0.0]
    gtab = gradient_table(b, bvecs=directions, b0_threshold=0)
    start = time.perf_counter()
    theirs = IvimModel(gtab).fit(flat.T.numpy())
    dipy_time = time.perf_counter() - start
    start = time.perf_counter()
    ours = fit_map(flat.T.contiguous(), ACQUISITIONS["ivim"], "ivim")
    lossfit_time = time.perf_counter() - start
    rows = []
    for name, dipy_value in (("f", theirs.perfusion_fraction), ("D", theirs.D), ("Dstar", theirs.D_star)):
        true = truth[name].data.reshape(-1)[index].double().numpy()
        ours_err = np.nanmedian(np.abs(ours.maps[name].numpy() - true) / true)
        dipy_err = np.nanmedian(np.abs(np.asarray(dipy_value) - true) / true)
        rows.append((name, ours_err, dipy_err))
    print("| method | voxels | time | per voxel | median rel. error f | D | D* |")
    print("|---|---|---|---|---|---|---|")
    n = len(index)
    print(
        f"| lossfit fit_map | {n:,} | {lossfit_time:.2f} s | {lossfit_time / n * 1e6:.1f} us | "
        + " | ".join(f"{r[1]:.4f}" for r in rows)
        + " |"
    )
    print(
        f"| dipy IvimModel (trr) | {n:,} | {dipy_time:.2f} s | {dipy_time / n * 1e6:.0f} us | "
        + " | ".join(f"{r[2]:.4f}" for r in rows)
        + " |"
    )
    print(f"\nlossfit statuses: {ours.counts}; speed ratio {dipy_time / lossfit_time:.0f}x.")


class PeakMemory:
    """Samples the resident memory of this process and its children (the Dask workers) every 50 ms."""

    def __init__(self) -> None:
        import psutil

        self.process = psutil.Process()
        self.peak = self.peak_private = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def totals(self) -> tuple[int, int]:
        """Resident memory, and its private (anonymous) part: resident minus file-backed pages (page cache)."""
        rss = private = 0
        for process in [self.process, *self.process.children(recursive=True)]:
            with contextlib.suppress(Exception):  # a worker may exit between listing and reading
                info = process.memory_info()
                rss += info.rss
                private += info.rss - info.shared
        return rss, private

    def total(self) -> int:
        return self.totals()[0]

    def run(self) -> None:
        while not self.stop.is_set():
            rss, private = self.totals()
            self.peak = max(self.peak, rss)
            self.peak_private = max(self.peak_private, private)
            time.sleep(0.05)


def chunked(args: argparse.Namespace) -> None:
    print("\n### 4. Beyond memory: fit_map_chunked on a NIfTI file, 2 local workers\n")
    print("| input | voxels | time | peak resident above idle (all processes) | of which private | "
          "input / private peak | worker limit |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    nx, ny = args.chunked_shape[:2]
    for nz in args.chunked_depths:
        chunked_one(args, nx, ny, nz)


def chunked_one(args: argparse.Namespace, nx: int, ny: int, nz: int) -> None:
    import distributed
    import nibabel as nib

    with tempfile.TemporaryDirectory(dir=args.tmp) as folder:
        path = Path(folder) / "echoes.nii"
        gen = np.random.default_rng(0)
        header = nib.Nifti1Header()  # written header first, the voxels through a memory map: never all in memory
        header.set_data_shape((nx, ny, nz, 8))
        header.set_data_dtype(np.float32)
        header.set_sform(np.eye(4), code=1)
        header["vox_offset"] = 352
        with open(path, "wb") as fh:
            fh.write(header.binaryblock + b"\x00" * (352 - len(header.binaryblock)))
            fh.truncate(352 + nx * ny * nz * 8 * 4)
        mapped = np.memmap(path, dtype=np.float32, mode="r+", offset=352, shape=(nx, ny, nz, 8), order="F")
        te = TE.numpy()
        for z in range(nz):
            t2 = gen.uniform(40, 120, size=(nx, ny))
            s0 = gen.uniform(800, 1200, size=(nx, ny))
            mapped[:, :, z, :] = s0[..., None] * np.exp(-te / t2[..., None]) + gen.normal(0, 10, size=(nx, ny, 8))
        mapped.flush()
        del mapped
        size = path.stat().st_size
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                           memory_limit=args.worker_memory)  # fmt: skip
        client = distributed.Client(cluster)
        time.sleep(1.0)
        monitor = PeakMemory()
        idle, idle_private = monitor.totals()
        monitor.thread.start()
        start = time.perf_counter()
        result = fit_map_chunked(path, TE.tolist(), "t2", out=Path(folder) / "maps", slices=args.slices, client=client)
        spent = time.perf_counter() - start
        monitor.stop.set()
        monitor.thread.join()
        client.close()
        cluster.close()
        # Equality with the in-memory map on a few slices.
        check = nib.load(str(path)).dataobj[:, :, :4, :]
        signals = torch.from_numpy(np.ascontiguousarray(np.asarray(check).transpose(2, 1, 0, 3))).double()
        whole = fit_map(signals, TE, "t2")
        got = result.maps["T2"].data[:4].double()
        good = torch.isfinite(whole.maps["T2"]) & torch.isfinite(got)
        diff = float(((got - whole.maps["T2"]).abs() / whole.maps["T2"].abs())[good].max())
        voxels = nx * ny * nz
        grown = monitor.peak_private - idle_private
        print(
            f"| {size / 2**20:.0f} MiB | {voxels:,} | {spent:.1f} s ({spent / voxels * 1e6:.2f} us a voxel) | "
            f"{(monitor.peak - idle) / 2**20:.0f} MiB | {grown / 2**20:.0f} MiB | {size / max(grown, 1):.1f}x | "
            f"{args.worker_memory} |"
        )
        print(
            f"|  | statuses {result.counts}; largest relative T2 difference from the in-memory fit on 4 slices "
            f"{diff:.2e} (float32 output) | | | | | |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ivim-voxels", type=int, default=2000)
    parser.add_argument("--chunked-shape", type=int, nargs=2, default=(256, 256))
    parser.add_argument("--chunked-depths", type=int, nargs="+", default=(80, 320))
    parser.add_argument("--slices", type=int, default=2)
    parser.add_argument("--worker-memory", default="1GiB")
    parser.add_argument("--tmp", default=None)
    parser.add_argument("--skip-chunked", action="store_true")
    parser.add_argument("--only", choices=("speed", "accuracy", "ivim", "chunked"))
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    sections = {"speed": speed, "accuracy": accuracy, "ivim": ivim, "chunked": chunked}
    for name, run in sections.items():
        if args.only not in (None, name) or (name == "chunked" and args.skip_chunked):
            continue
        run(args)


if __name__ == "__main__":
    main()
