"""``lossfit motion``: motion correction of a 4-D series, every volume registered to one reference."""

from __future__ import annotations

import json
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
from lossfit.registration.outputs import geometry_summary

TABLE_NAME = "motion.tsv"


@app.command(epilog=EPILOG)
@guarded
def motion(
    series: Annotated[Path, typer.Argument(help="the series: a 4-D NIfTI file or a folder of DICOM volumes")],
    out: Annotated[
        Path,
        typer.Option(help="folder for corrected.nii.gz (corrected/ for DICOM), transforms/, motion.tsv, .json, .png"),
    ],
    reference: Annotated[str, typer.Option(help="mean, or the index of a volume (from 0)")] = "mean",
    transform: Annotated[str, typer.Option(help="rigid (head motion), translation, similarity or affine")] = "rigid",
    metric: Annotated[str, typer.Option(help="mse, ncc (contrast that drifts) or mi")] = "mse",
    loss: Annotated[str, typer.Option(help="for mse: linear, huber or cauchy (where fill enters at the edges)")] = (
        "linear"
    ),
    passes: Annotated[int, typer.Option(help="2: register again to the mean of the first pass's result")] = 1,
    samples: Annotated[int, typer.Option(help="the most voxels compared per volume at the finest level")] = 20_000,
    chunk: Annotated[int | None, typer.Option(help="volumes per batched call (default: memory-bounded)")] = None,
    seed: Annotated[int, typer.Option(help="seeds the choice of samples")] = 0,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace the outputs of an earlier run in --out (as a whole)")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Register every volume of SERIES to one reference in batched calls; write the corrected series, one ITK
    transform per volume (reference world -> that volume's world, as `register` writes them), the motion table
    (rotations in degrees, translations in mm, framewise displacement) and its plot."""
    import torch

    from lossfit.registration.motion import motion_correct
    from lossfit.registration.series import load_series
    from lossfit.run_folder import check_run_folder, check_space

    check_outputs([series], out=out, out_folder=True)
    check_run_folder(out, overwrite)
    ref: str | int = reference
    if reference != "mean":
        try:
            ref = int(reference)
        except ValueError:
            fail(f"--reference must be mean or a volume index; got {reference!r}")
    data = load_series(series)
    if len(data) < 2:
        fail(f"{series}: holds one volume; motion correction needs a series of volumes (a 4-D file)")
    if isinstance(ref, int) and not -len(data) <= ref < len(data):
        fail(f"--reference must index one of the {len(data)} volumes (0..{len(data) - 1}); got {ref}")
    check_space(out, data.data.numel() * 4 + len(data) * 1024 + (4 << 20))
    result = motion_correct(
        data, ref, transform, metric, chunk=chunk, passes=passes, samples=samples, seed=seed, loss=loss
    )
    corrected = data.with_data(torch.stack([image.data for image in result.corrected]))
    rows = result.table()
    summary = {
        "success": result.success,
        "status": result.status.name.lower(),
        "volumes": len(rows),
        "reference": reference,
        "transform": transform,
        "metric": metric,
        "loss": loss,
        "passes": passes,
        "time_s": result.time,
        "mean_fd_mm": float(result.framewise_displacement.mean()),
        "max_fd_mm": float(result.framewise_displacement.max()),
        "input": str(series),
        "grid": geometry_summary(data.grid),
        "convention": "transforms/NNNN.tfm map the reference's world points (LPS, mm) to volume NNNN's",
        "motion": rows,
        "checks": [c for r in result.registrations for c in r.checks],
        "outputs": str(out),
    }
    _write(out, result, corrected, rows, summary, dicom=series.is_dir())
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(
            f"{result.status.name.lower()}: {len(rows)} volumes in {result.time:.1f} s; framewise displacement mean "
            f"{summary['mean_fd_mm']:.3f} mm, largest {summary['max_fd_mm']:.3f} mm; wrote {out}"
        )
    if not result.success:
        raise typer.Exit(EXIT_NOT_CONVERGED)


def _write(
    out: Path, result: Any, corrected: Any, rows: list[dict[str, Any]], summary: dict[str, Any], *, dicom: bool
) -> None:
    """The run folder, as a whole: the transforms and the table first, then the corrected series in the input's
    format (corrected.nii.gz, or corrected/ as a DICOM series with the input's study and patient tags), the plot and
    the report (report.html: the summary, the plot and the table per volume)."""
    from lossfit.io import atomic_write_text
    from lossfit.plotting import plot_motion, save_figure
    from lossfit.registration.series import save_series
    from lossfit.registration.transform_files import write_transform
    from lossfit.run_folder import RunFolder

    def transforms(folder: Path) -> None:
        folder.mkdir()
        for i, matrix in enumerate(result.matrices):
            write_transform(folder / f"{i:04d}.tfm", matrix)

    def table(path: Path) -> None:
        keys = list(rows[0])
        lines = ["\t".join(keys)] + ["\t".join(_cell(row[k]) for k in keys) for row in rows]
        atomic_write_text(path, "\n".join(lines) + "\n")

    def report(path: Path) -> None:
        from lossfit.report import Report

        page = Report(title="lossfit motion")
        section = page.section(f"Motion of {summary['input']}", note=summary["convention"])
        section.status(success=result.success, status=result.status, message=result.status.message)
        keys = ("volumes", "reference", "transform", "metric", "loss", "passes", "time_s", "mean_fd_mm", "max_fd_mm")
        section.table([{key: summary[key] for key in keys}], caption="Summary")
        section.figure(plot_motion(result, ""), caption="Rotations, translations and framewise displacement")
        section.table(rows, caption="Per volume (rotations about x, y, z in degrees; translations in mm)")
        page.save(path)

    with RunFolder(out) as run:
        run.write("transforms", transforms)
        run.write(TABLE_NAME, table)
        run.write("motion.json", lambda p: atomic_write_text(p, json.dumps(summary, indent=2) + "\n"))
        run.write("corrected" if dicom else "corrected.nii.gz", lambda p: save_series(corrected, p))
        run.write("motion.png", lambda p: save_figure(plot_motion(result, "motion"), str(p)))
        run.write("report.html", report)


def _cell(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
