"""``lossfit register-many``: a cohort of registrations on a Dask cluster (see :mod:`lossfit.scale`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from lossfit.cli.common import (
    EPILOG,
    EXIT_NOT_CONVERGED,
    JsonOption,
    app,
    check_folder,
    check_outputs,
    fail,
    guarded,
    print_table,
)


@app.command(name="register-many", epilog=EPILOG)
@guarded
def register_many_command(
    manifest: Annotated[
        Path, typer.Argument(help="CSV with columns id, fixed, moving (paths relative to its folder) and options")
    ],
    out: Annotated[Path, typer.Option(help="folder for one run folder per pair and summary.csv/summary.json")],
    scheduler: Annotated[
        str | None, typer.Option(help="a Dask scheduler's address (tcp://host:8786); default: a local cluster")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="the local cluster's worker processes (default 2)")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="skip the pairs already done in --out (same images and options)")
    ] = False,
    transform: Annotated[
        str | None, typer.Option(help="translation, rigid, similarity, affine or projective (default affine)")
    ] = None,
    metric: Annotated[str | None, typer.Option(help="mse, ncc, lncc or mi (default mse)")] = None,
    samples: Annotated[int | None, typer.Option(help="the most fixed voxels compared at the finest level")] = None,
    seed: Annotated[int | None, typer.Option(help="seeds the choice of samples")] = None,
    batch: Annotated[
        int, typer.Option(help="pairs per task, registered together where their images have the same shapes")
    ] = 1,
    device: Annotated[
        str | None,
        typer.Option(help="where each task registers: cuda (one GPU each: start workers with --resources GPU=1)"),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Register every pair of MANIFEST, one Dask task per pair, each writing --out/ID/ as `lossfit register --out`.

    A manifest's option columns override the options given here. A pair that fails is a row with status
    "error" and its reason; the others go on. Exit 0 when every pair succeeded, 1 when some did not."""
    from rich.progress import Progress

    from lossfit.scale import read_manifest, register_many

    if scheduler is not None and workers is not None:
        fail("--scheduler and --workers exclude each other: --workers sizes a local cluster")
    if workers is not None and workers < 1:
        fail(f"--workers must be at least 1; got {workers}")
    if batch < 1:
        fail(f"--batch must be at least 1; got {batch}")
    check_folder(out, "--out")  # before the manifest is read
    pairs = read_manifest(manifest)
    inputs: list[Path | None] = [manifest]
    inputs += [p for pair in pairs for p in (pair.fixed, pair.moving)]
    check_outputs(inputs, out=out, out_folder=True)
    options: dict[str, Any] = {
        k: v for k, v in {"transform": transform, "metric": metric, "samples": samples, "seed": seed}.items()
        if v is not None
    }  # fmt: skip
    with Progress(transient=True, disable=json_out or not sys.stderr.isatty()) as bar:
        task = bar.add_task("registering pairs", total=len(pairs))

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = register_many(
            pairs, out, client=scheduler, workers=workers, resume=resume, progress=progress, batch=batch,
            device=device, **options,
        )  # fmt: skip
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        print_table(
            [{k: r[k] for k in ("id", "status", "metric_start", "metric_answer", "time_s", "message")}
             for r in result.rows],
            f"{len(result.rows)} pairs in {result.time:.1f} s: "
            + ", ".join(f"{n} {status}" for status, n in sorted(result.counts.items())),
        )  # fmt: skip
        typer.echo(f"summary: {out / 'summary.csv'}")
    if not result.success:
        raise typer.Exit(EXIT_NOT_CONVERGED)
