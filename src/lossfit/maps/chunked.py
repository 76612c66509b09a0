"""Parameter maps of series larger than memory: slabs of slices fitted as Dask tasks, outputs written slab by slab.

:func:`fit_map_chunked` reads a 4-D NIfTI file (a slab's bytes at a time) or a zarr array lazily as a
``dask.array`` cut into slabs of whole slices; each slab is one task on a ``distributed.Client`` (a local cluster
started for the call by default, or any scheduler by its address), which reads its slab, fits it with
:func:`lossfit.maps.fit_map` and sends back only the maps. The caller writes each slab into the output files as it
arrives (uncompressed NIfTI, each slab one contiguous write at its offset, or zarr), with at most ``2 * workers``
slabs in flight, so memory stays bounded by a few slabs whatever the volume's size. Outputs are staged beside ``out``
and moved into place when every slab is written; nothing is left half-written.

Convention: as for :func:`~lossfit.maps.fit_map` (its per-voxel answers do not depend on which voxels share a call,
so a chunked map equals the in-memory one to the output's float32 rounding); the slabs are along the slowest axis of
the file (NIfTI's z), so each slab is one contiguous read.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lossfit.errors import InputFileError, OutputError
from lossfit.maps.models import resolve
from lossfit.maps.result import NOT_FITTED, MapResult
from lossfit.registration.image import Image

OUT_FORMATS = ("nifti", "zarr")


class NiftiSlabs:
    """A 4-D NIfTI file as an array ``(m, nz, ny, nx)`` that reads only what is indexed (picklable: it holds the path).

    An uncompressed file is read at the slab's offset (no memory map), a ``.nii.gz`` decompressed up to the slab
    asked for; scaling (scl_slope/inter) is applied as nibabel applies it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from lossfit.registration.io import open_nifti

        self.path = str(path)
        _, shape = open_nifti(Path(path))
        if len(shape) != 4:
            raise InputFileError(f"{path}: holds a {len(shape)}-D image of shape {shape}; a series is 4-D")
        nx, ny, nz, m = shape
        self.shape = (m, nz, ny, nx)
        self.ndim = 4
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        import nibabel as nib

        t, z, y, x = (tuple(key) + (slice(None),) * 4)[:4]
        # Read without a memory map: only the slab's bytes are read, and none stay mapped in the worker.
        proxy: Any = nib.load(self.path, mmap=False).dataobj  # type: ignore[attr-defined]
        block = np.asarray(proxy[x, y, z, t], dtype=np.float32)
        return np.ascontiguousarray(block.transpose(3, 2, 1, 0))


def nifti_grid(path: str | os.PathLike[str]) -> Image:
    """The grid of a NIfTI file (LPS, mm) without reading its voxels (the Image's data are a zero-stride view)."""
    from lossfit.registration.io import LPS_RAS, open_nifti

    img, shape = open_nifti(Path(path))
    affine = LPS_RAS @ np.asarray(img.affine, dtype=np.float64)
    nx, ny, nz = shape[:3]
    grid = Image.from_affine(torch.zeros(1).expand(nz, ny, nx), affine)
    codes = {"sform_code": int(img.header["sform_code"]), "qform_code": int(img.header["qform_code"])}
    return Image(grid.data, spacing=grid.spacing, origin=grid.origin, direction=grid.direction, header=codes)


def _open_source(source: Any) -> tuple[Any, Image]:
    """The lazy array ``(m, nz, ny, nx)`` and the grid: a NIfTI path, a zarr path or array, or a Series."""
    from lossfit.registration.series import Series

    if isinstance(source, Series):
        return source.data.numpy(), source.grid
    path = Path(source) if isinstance(source, (str, os.PathLike)) else None
    if path is not None and (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        if not path.exists():
            raise InputFileError(f"{path}: no such file")
        return NiftiSlabs(path), nifti_grid(path)
    import zarr

    array: Any
    try:
        array = zarr.open(str(path), mode="r") if path is not None else source
    except Exception as exc:  # zarr raises several kinds for a path that is not a store
        raise InputFileError(f"{source}: not a NIfTI file or a zarr array ({exc})") from None
    if hasattr(array, "keys") and "0" in array:  # an OME-Zarr image: the full-resolution level
        array = array["0"]
    if getattr(array, "ndim", 0) != 4:
        raise InputFileError(
            f"{source}: a zarr series must be 4-D (m, nz, ny, nx); got {getattr(array, 'shape', None)}"
        )
    spacing = tuple(float(v) for v in array.attrs.get("spacing", (1.0, 1.0, 1.0)))
    origin = tuple(float(v) for v in array.attrs.get("origin", (0.0, 0.0, 0.0)))
    nz, ny, nx = array.shape[1:]
    return array, Image(torch.zeros(1).expand(nz, ny, nx), spacing=spacing, origin=origin)


def _fit_slab(
    block: np.ndarray, mask: np.ndarray | None, x: Sequence[float], model: Any, options: dict[str, Any]
) -> dict[str, Any]:
    """One task: fit a slab ``(m, z, ny, nx)``; returns its maps as float32/int16 arrays ``(z, ny, nx)``."""
    from lossfit.maps.fit import fit_map

    signals = torch.from_numpy(np.ascontiguousarray(np.moveaxis(block, 0, -1)))
    selected = None if mask is None else torch.from_numpy(mask)
    if selected is not None and not bool(selected.any()):
        shape = block.shape[1:]
        return {"empty": True, "shape": shape}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one task per worker thread; restored for a worker that shares its process
    try:
        result = fit_map(signals, x, model, mask=selected, **options)
    finally:
        torch.set_num_threads(threads)
    out: dict[str, Any] = {"empty": False, "counts": result.counts, "steps": result.steps, "at_bound": result.at_bound}
    for name in result.parameters:
        out[name] = np.asarray(result.maps[name], dtype=np.float32)
        out[f"{name}_stderr"] = np.asarray(result.stderr[name], dtype=np.float32)
    out["status"] = np.asarray(result.status, dtype=np.int16)
    out["rms"] = np.asarray(result.rms, dtype=np.float32)
    return out


def fit_map_chunked(
    source: Any,
    x: Any,
    model: Any,
    *,
    out: str | os.PathLike[str],
    slices: int = 8,
    mask: Any = None,
    client: Any = None,
    workers: int | None = None,
    out_format: str = "nifti",
    variable: str = "x",
    overwrite: bool = False,
    progress: Any = None,
    **options: Any,
) -> MapResult:
    """Fit ``model`` at every voxel of a series that need not fit in memory, slab by slab on a Dask client.

    Args:
        source: a 4-D NIfTI path (``.nii`` or ``.nii.gz``, read slab by slab), a zarr array or
            path to one ``(m, nz, ny, nx)`` (an OME-Zarr image's level ``"0"``; ``attrs`` ``spacing``/``origin``
            in mm where present), or an in-memory Series.
        x, model, variable: as for :func:`~lossfit.maps.fit_map` (``start`` None or constants only).
        out: the folder to write; must not exist (or be empty), unless ``overwrite``.
        slices: slices per slab (per task).
        mask: a bool tensor ``(nz, ny, nx)`` or an Image on the series' grid.
        client: a ``distributed.Client``, a scheduler address, or None for a LocalCluster of ``workers`` processes
            (default 2) started for this call.
        out_format: ``"nifti"`` (``NAME.nii``, uncompressed, written slab by slab) or ``"zarr"``
            (``maps.zarr`` with one array per map).
        progress: called as ``progress(done, total)`` (slices written) after each slab.
        **options: the remaining keyword arguments of :func:`~lossfit.maps.fit_map` (``loss``, ``noise`` with a
            given ``sigma``, ``bounds``, ``start``, ``max_steps``, tolerances).

    Returns:
        A :class:`MapResult` whose maps are memory-mapped from the written NIfTI files (read when touched), or read
        from the zarr arrays.
    """
    started = time.perf_counter()
    if out_format not in OUT_FORMATS:
        raise ValueError(f"`out_format` must be one of {', '.join(map(repr, OUT_FORMATS))}; got {out_format!r}")
    if isinstance(slices, bool) or not isinstance(slices, int) or slices < 1:
        raise ValueError(f"`slices` must be a whole number >= 1; got {slices!r}")
    if options.get("noise") == "rician" and options.get("sigma") is None:
        raise ValueError("`noise='rician'` in chunks needs `sigma` (estimate it once with lossfit.maps.estimate_sigma)")
    start = options.get("start")
    if start is not None and not (isinstance(start, dict) and all(isinstance(v, (int, float)) for v in start.values())):
        raise ValueError("`start` in chunks must be None or a dict of numbers (one start for every voxel)")
    spec = resolve(model, variable)
    array, grid = _open_source(source)
    m, nz, ny, nx = (int(n) for n in array.shape)
    acq = np.asarray(x, dtype=np.float64).reshape(-1)
    if acq.size != m:
        raise ValueError(f"`x` must hold one value per acquisition: the series has {m}; got {acq.size}")
    selected = _mask_array(mask, grid)
    names = spec.parameters or tuple(start or ())
    if not names:
        raise ValueError("`start` must name the parameters of a callable model (a dict name -> value)")
    target = _check_out(Path(out), source, overwrite)
    stage = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    stage.mkdir(parents=True)
    try:
        writer = _Writer(stage, out_format, names, grid, (nz, ny, nx), slices)
        try:
            task_options = {**options, "variable": variable}
            counts, steps, at_bound = _run(
                array, selected, acq.tolist(), model, task_options, slices, client, workers, writer, m, progress
            )
        finally:
            writer.close()
        summary = {"model": spec.name, "parameters": list(names), "counts": counts, "steps": steps,
                   "at_bound": at_bound, "sigma": options.get("sigma"), "seconds": time.perf_counter() - started,
                   "slices_per_task": slices, "format": out_format}  # fmt: skip
        (stage / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    return _result(target, out_format, spec.name, names, grid, counts, steps, at_bound, options, seconds)


def _mask_array(mask: Any, grid: Image) -> np.ndarray | None:
    if mask is None:
        return None
    from lossfit.maps.fit import voxel_mask

    chosen = voxel_mask(mask, tuple(grid.shape), grid, "mask")
    return None if chosen is None else chosen.numpy()


def _check_out(target: Path, source: Any, overwrite: bool) -> Path:
    target = target.resolve()
    if isinstance(source, (str, os.PathLike)):
        src = Path(source).resolve()
        if target == src or src.is_relative_to(target) or target.is_relative_to(src):
            raise OutputError(f"{target}: the output folder must not be, hold or lie inside the input {src}")
    if target.exists():
        if not target.is_dir():
            raise OutputError(f"{target}: exists and is not a folder")
        if any(target.iterdir()) and not overwrite:
            raise OutputError(f"{target}: is not empty; pass overwrite=True (--overwrite) to replace it")
    if not target.parent.exists():
        raise OutputError(f"{target}: the folder {target.parent} does not exist")
    if not os.access(target.parent, os.W_OK):
        raise OutputError(f"{target}: cannot write in {target.parent}")
    return target


def _run(
    array: Any,
    selected: np.ndarray | None,
    x: list[float],
    model: Any,
    options: dict[str, Any],
    slices: int,
    client: Any,
    workers: int | None,
    writer: _Writer,
    m: int,
    progress: Any = None,
) -> tuple[dict[str, int], int, dict[str, int]]:
    """Submit the slabs with at most ``2 * workers`` in flight; write each as it arrives."""
    import dask
    import dask.array as da
    from distributed import as_completed

    from lossfit.scale import DaskClient

    nz = array.shape[1]
    lazy = da.from_array(array, chunks=(m, slices, array.shape[2], array.shape[3]), asarray=True, lock=False)
    blocks = lazy.to_delayed().reshape(-1)
    tasks = []
    for b, block in enumerate(blocks):
        z0 = b * slices
        piece = None if selected is None else selected[z0 : min(z0 + slices, nz)]
        tasks.append((z0, dask.delayed(_fit_slab)(block, piece, x, model, options)))
    counts: dict[str, int] = {}
    at_bound: dict[str, int] = {}
    steps = written = 0
    with DaskClient(client, workers, 30.0) as c:
        window = 2 * max(1, len(c.scheduler_info().get("workers", {})) or 1)
        pending = list(reversed(tasks))
        where: dict[Any, int] = {}
        running = as_completed()
        for _ in range(min(window, len(pending))):
            z0, task = pending.pop()
            future = c.compute(task)
            where[future.key] = z0
            running.add(future)
        for future in running:
            part = future.result()
            z0 = where.pop(future.key)
            future.release()
            writer.write(z0, part)
            written += part["shape"][0] if part["empty"] else part["status"].shape[0]
            if progress is not None:
                progress(written, nz)
            if not part["empty"]:
                steps += int(part["steps"])
                for name, count in part["counts"].items():
                    counts[name] = counts.get(name, 0) + int(count)
                for name, count in part["at_bound"].items():
                    at_bound[name] = at_bound.get(name, 0) + int(count)
            if pending:
                z_next, task = pending.pop()
                nxt = c.compute(task)
                where[nxt.key] = z_next
                running.add(nxt)
    return counts, steps, at_bound


class _Writer:
    """The output files, opened once and filled slab by slab."""

    def __init__(
        self, folder: Path, out_format: str, names: tuple[str, ...], grid: Image, shape: tuple[int, int, int],
        slices: int,
    ) -> None:  # fmt: skip
        self.folder, self.format, self.shape = folder, out_format, shape
        self.maps = [*names, *(f"{n}_stderr" for n in names), "status", "rms"]
        self.arrays: dict[str, Any] = {}
        if out_format == "zarr":
            import zarr

            group = zarr.open_group(str(folder / "maps.zarr"), mode="w")
            group.attrs.update({"spacing": list(grid.spacing), "origin": list(grid.origin)})
            for name in self.maps:
                text = "int16" if name == "status" else "float32"
                self.arrays[name] = group.create_array(name, shape=shape, chunks=(slices, *shape[1:]), dtype=text)
        else:
            for name in self.maps:
                kind = np.int16 if name == "status" else np.float32
                self.arrays[name] = _NiftiFile(folder / f"{name}.nii", grid, kind)

    def write(self, z0: int, part: dict[str, Any]) -> None:
        z1 = z0 + (part["shape"][0] if part["empty"] else part["status"].shape[0])
        for name in self.maps:
            if part["empty"]:
                value: Any = NOT_FITTED if name == "status" else math.nan
            else:
                value = part[name]
            if self.format == "zarr":
                self.arrays[name][z0:z1] = value
            else:
                self.arrays[name].write(z0, z1, value)

    def close(self) -> None:
        for array in self.arrays.values():
            if isinstance(array, _NiftiFile):
                array.close()
        self.arrays.clear()


class _NiftiFile:
    """An uncompressed NIfTI file of the grid's shape, header first, its voxels written a slab of slices at a time:
    in NIfTI's (x, y, z) Fortran order slices z0..z1 are one contiguous run of bytes (no memory map, so the writer's
    memory does not grow with the file)."""

    OFFSET = 352

    def __init__(self, path: Path, grid: Image, kind: type) -> None:
        import nibabel as nib

        from lossfit.registration.io import LPS_RAS

        nz, ny, nx = grid.shape
        header = nib.Nifti1Header()
        header.set_data_shape((nx, ny, nz))
        header.set_data_dtype(kind)
        affine = LPS_RAS @ grid.affine.double().numpy()
        header.set_sform(affine, code=int(grid.header.get("sform_code", 1) or 1))
        header.set_qform(affine, code=int(grid.header.get("qform_code", 1) or 1))
        header.set_xyzt_units("mm")
        header["vox_offset"] = self.OFFSET
        self.kind, self.plane = np.dtype(kind), nx * ny
        self.file = open(path, "wb")  # noqa: SIM115 - open for the life of the run, closed by close()
        self.file.write(header.binaryblock + b"\x00" * (self.OFFSET - len(header.binaryblock)))
        self.file.truncate(self.OFFSET + nx * ny * nz * self.kind.itemsize)

    def write(self, z0: int, z1: int, value: Any) -> None:
        """Slices ``z0..z1`` from a ``(z, y, x)`` array (or one number for all of them)."""
        if np.isscalar(value):
            value = np.full((z1 - z0, self.plane), value, dtype=self.kind)
        data = np.ascontiguousarray(np.asarray(value, dtype=self.kind).reshape(z1 - z0, -1))
        self.file.seek(self.OFFSET + z0 * self.plane * self.kind.itemsize)
        self.file.write(data.tobytes())  # (z, y, x) in C order is (x, y, z) in Fortran order

    def close(self) -> None:
        self.file.close()


def _result(
    folder: Path,
    out_format: str,
    model: str,
    names: tuple[str, ...],
    grid: Image,
    counts: dict[str, int],
    steps: int,
    at_bound: dict[str, int],
    options: dict[str, Any],
    seconds: float,
) -> MapResult:
    """The written maps as a MapResult (NIfTI: memory-mapped, read only when touched)."""
    if out_format == "zarr":
        import zarr

        group: Any = zarr.open_group(str(folder / "maps.zarr"), mode="r")

        def read(name: str) -> Image:
            return grid.with_data(torch.from_numpy(np.asarray(group[name][...])))
    else:

        def read(name: str) -> Image:
            kind = np.int16 if name == "status" else np.float32
            nz, ny, nx = grid.shape
            mapped = np.memmap(
                folder / f"{name}.nii", dtype=kind, mode="r", offset=_NiftiFile.OFFSET, shape=(nx, ny, nz), order="F"
            )
            return grid.with_data(torch.from_numpy(np.asarray(mapped).T))

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns that a read-only memory map is not writable
        return MapResult(
            model=model,
            parameters=names,
            maps={n: read(n) for n in names},
            stderr={n: read(f"{n}_stderr") for n in names},
            status=read("status"),
            rms=read("rms"),
            counts={k: v for k, v in sorted(counts.items())},
            sigma=options.get("sigma"),
            steps=steps,
            seconds=seconds,
            at_bound=at_bound,
        )


__all__ = ["NiftiSlabs", "fit_map_chunked", "nifti_grid"]
