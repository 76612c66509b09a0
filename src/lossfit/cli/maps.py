"""``lossfit fit-map``: a signal model fitted at every voxel of a series; maps, standard errors, statuses, report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from lossfit.cli.common import (
    EPILOG,
    EXIT_NOT_CONVERGED,
    JsonOption,
    app,
    check_outputs,
    fail,
    guarded,
)

NIFTI, DICOM = "nifti", "dicom"


def _numbers(text: str, option: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"{option} must be numbers separated by commas, e.g. 10,20,40,80; got {text!r}")
    if not values or not all(math.isfinite(v) for v in values):
        fail(f"{option} must be finite numbers separated by commas; got {text!r}")
    return values


def _starts(text: str | None) -> dict[str, float] | None:
    if text is None:
        return None
    starts: dict[str, float] = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        try:
            starts[name.strip()] = float(value)
        except ValueError:
            fail(f"--start must be name=value pairs separated by commas, e.g. a=1,b=0.1; got {item!r}")
    return starts


@app.command("fit-map", epilog=EPILOG)
@guarded
def fit_map_command(
    series: Annotated[Path, typer.Argument(help="the series: a 4-D NIfTI file or a folder of DICOM volumes")],
    x: Annotated[str, typer.Option("--x", help="the acquisition values, one per volume: 10,20,40,80")],
    model: Annotated[str, typer.Option(help="t2 (t2star), t2-offset, t1-ir, ivim, or a formula in x: a*exp(-x/b)")],
    out: Annotated[Path, typer.Option(help="folder for the maps, their standard errors, status, rms, report.html")],
    start: Annotated[str | None, typer.Option(help="a formula's starting values: a=1000,b=60")] = None,
    mask: Annotated[Path | None, typer.Option(help="voxels to fit: an image (resampled onto the series' grid)")] = None,
    labels: Annotated[
        Path | None, typer.Option(help="a label image (tissues): the report's histograms per label")
    ] = None,
    loss: Annotated[str, typer.Option(help="linear, soft_l1, huber, cauchy or arctan")] = "linear",
    noise: Annotated[str | None, typer.Option(help="rician: the likelihood of magnitude data")] = None,
    sigma: Annotated[
        float | None, typer.Option(help="the noise per channel (rician; default: from outside --mask)")
    ] = (None),
    chunks: Annotated[
        int | None, typer.Option(help="slices per Dask task: fit slab by slab (series larger than memory)")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="local Dask workers with --chunks (default 2)")] = None,
    scheduler: Annotated[str | None, typer.Option(help="a Dask scheduler's address, with --chunks")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace the outputs of an earlier run")] = False,
    json_out: JsonOption = False,
) -> None:
    """Fit MODEL to the signal of every voxel of SERIES (volume i acquired at the i-th --x value) and write one map per
    parameter (in the input's format), its standard errors, the status of every voxel, the residual RMS, a summary
    and a report with the maps and their histograms."""
    from lossfit.maps.models import resolve
    from lossfit.registration.io import load_image
    from lossfit.registration.series import load_series
    from lossfit.run_folder import check_run_folder

    values = _numbers(x, "--x")
    spec = resolve(model)
    names = spec.parameters or tuple(_starts(start) or ())
    check_outputs([series, mask, labels], out=out, out_folder=True)
    check_run_folder(out, overwrite, own=lambda name: _own(name, names))
    fmt = DICOM if series.is_dir() else NIFTI
    if chunks is not None and fmt != NIFTI:
        fail("--chunks reads a NIfTI file slab by slab; convert the DICOM series to NIfTI first")
    if noise not in (None, "rician"):
        fail(f"--noise must be rician (or left out for least squares); got {noise!r}")
    mask_image = load_image(mask) if mask is not None else None
    label_image = load_image(labels) if labels is not None else None
    options: dict[str, Any] = {"loss": loss, "noise": noise, "sigma": sigma, "start": _starts(start)}
    with _Progress() as progress:
        if chunks is not None:
            from lossfit.maps import fit_map_chunked

            result = fit_map_chunked(series, values, model, out=out, slices=chunks, mask=mask_image,
                                     client=scheduler, workers=workers, overwrite=overwrite, progress=progress.update,
                                     **options)  # fmt: skip
        else:
            from lossfit.maps import fit_map

            data = load_series(series)
            if len(data) != len(values):
                fail(f"--x gives {len(values)} values; {series} holds {len(data)} volumes (one value per volume)")
            result = fit_map(data, values, model, mask=mask_image, progress=progress.update, **options)
    summary = {**result.to_dict(), "input": str(series), "x": values, "outputs": str(out)}
    _write(out, result, summary, fmt, label_image, written=chunks is not None)
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
    else:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items(), key=lambda kv: -kv[1]))
        typer.echo(f"{'success' if result.success else 'not every voxel converged'}: {result.fitted} voxels in "
                   f"{result.seconds:.1f} s ({counts}); wrote {out}")  # fmt: skip
    if not result.success:
        raise typer.Exit(EXIT_NOT_CONVERGED)


OWN_FILES = ("fit_map.json", "summary.json", "maps.zarr", "report.html")


def _own(name: str, parameters: tuple[str, ...]) -> bool:
    """The names a fit-map run writes: a map per parameter and its standard errors, status, rms (NIfTI files or
    DICOM folders), the summaries and the report."""
    stems = {*parameters, *(f"{n}_stderr" for n in parameters), "status", "rms"}
    return name in OWN_FILES or name in stems or name.removesuffix(".gz").removesuffix(".nii") in stems


class _Progress:
    """A progress bar on stderr (rich), quiet when stderr is not a terminal."""

    def __enter__(self) -> _Progress:
        import sys

        from rich.progress import Progress

        self.bar = Progress(transient=True, disable=not sys.stderr.isatty())
        self.bar.start()
        self.task = self.bar.add_task("fitting", total=None)
        return self

    def update(self, done: int, total: int) -> None:
        self.bar.update(self.task, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()


def _write(out: Path, result: Any, summary: dict[str, Any], fmt: str, labels: Any, written: bool) -> None:
    """The run folder as a whole: the maps in the input's format (already written by the chunked path), the
    summary and the report."""
    from lossfit.io import atomic_write_text
    from lossfit.registration.io import save_dicom_series, save_image
    from lossfit.run_folder import RunFolder

    maps = [(n, result.maps[n]) for n in result.parameters]
    maps += [(f"{n}_stderr", result.stderr[n]) for n in result.parameters]
    maps += [("status", result.status), ("rms", result.rms)]
    if written:  # fit_map_chunked wrote the maps into `out`; add the report beside them
        _report(out / "report.html", result, summary, labels)
        atomic_write_text(out / "fit_map.json", json.dumps(summary, indent=2) + "\n")
        return

    def writer(image: Any) -> Any:
        if fmt == DICOM:  # DICOM holds no NaN or infinity: those voxels are 0 (the status map says why)
            finite = image.with_data(image.data.to(_float()).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0))
            return lambda p: save_dicom_series(finite, p)
        return lambda p: save_image(image.to(_float()), p)

    with RunFolder(out) as run:
        for name, image in maps:
            run.write(name if fmt == DICOM else f"{name}.nii.gz", writer(image))
        run.write("fit_map.json", lambda p: atomic_write_text(p, json.dumps(summary, indent=2) + "\n"))
        run.write("report.html", lambda p: _report(p, result, summary, labels))


def _float() -> Any:
    import torch

    return torch.float32


def _report(path: Path, result: Any, summary: dict[str, Any], labels: Any) -> None:
    from lossfit.report import Report

    page = Report(title="lossfit fit-map")
    section = page.section(f"{result.model} at every voxel of {summary['input']}")
    status = "success" if result.success else "not every voxel converged"
    section.status(success=result.success, status=status, message=_counts(result.counts))
    section.table([{"parameter": n, **(summary["maps"][n] or {})} for n in result.parameters], caption="Quartiles")
    tissue_rows = _per_label(result, labels)
    if tissue_rows:
        section.table(tissue_rows, caption="Medians per label (converged voxels)")
    for name in result.parameters:
        section.figure(_map_figure(result.maps[name], name), caption=f"{name}: middle slices")
        section.figure(_histogram(result.maps[name], result.status, labels, name), caption=f"{name}: histograms")
    page.save(path)


def _per_label(result: Any, labels: Any) -> list[dict[str, Any]]:
    """One row per label of ``labels`` (0 is background): its converged voxels and each map's median there."""
    import torch

    if labels is None or tuple(labels.shape) != tuple(result.status.shape):
        return []
    good = _converged(result.status)
    values = labels.data.round().long()
    rows = []
    for label in (int(v) for v in torch.unique(values) if int(v) != 0):
        chosen = good & (values == label)
        row: dict[str, Any] = {"label": f"label {label}", "voxels": int(chosen.sum())}
        for name in result.parameters:
            data = result.maps[name].data[chosen].double()
            row[name] = float(data.median()) if data.numel() else float("nan")
        rows.append(row)
    return rows


def _converged(status: Any) -> Any:
    from lossfit.maps.result import converged

    return converged(status.data)


def _counts(counts: dict[str, int]) -> str:
    return "; ".join(f"{k}: {v} voxels" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def _map_figure(image: Any, name: str) -> Any:
    import numpy as np

    from lossfit.plotting import pyplot, world_slices

    plt = pyplot()
    panels = world_slices(image)
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4))
    axes = np.atleast_1d(axes)
    finite = image.data[np.isfinite(image.data.numpy())]
    low, high = (float(finite.quantile(0.01)), float(finite.quantile(0.99))) if finite.numel() else (0.0, 1.0)
    for ax, panel in zip(axes, panels, strict=True):
        shown = ax.imshow(panel.data.numpy(), cmap="viridis", vmin=low, vmax=high, aspect=panel.aspect)
        ax.set_title(panel.name, fontsize=9)
        ax.axis("off")
    fig.colorbar(shown, ax=list(axes), shrink=0.8, label=name)
    return fig


def _histogram(image: Any, status: Any, labels: Any, name: str) -> Any:
    """Histograms of a map over the converged voxels, one per label of ``labels`` (tissues) or one in all."""
    import torch

    from lossfit.plotting import pyplot

    plt = pyplot()
    good = _converged(status) & torch.isfinite(image.data)
    groups: list[tuple[str, torch.Tensor]] = [("converged voxels", good)]
    if labels is not None and tuple(labels.shape) == tuple(image.shape):
        values = labels.data.round().long()
        groups = [(f"label {int(v)}", good & (values == v)) for v in torch.unique(values) if int(v) != 0]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for label, chosen in groups:
        data = image.data[chosen].double()
        if data.numel():
            low, high = float(data.quantile(0.005)), float(data.quantile(0.995))
            ax.hist(data.clamp(low, high).numpy(), bins=60, alpha=0.5, label=f"{label} ({data.numel()})")
    ax.set_xlabel(name)
    ax.set_ylabel("voxels")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
