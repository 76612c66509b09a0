"""``lossfit apply`` and ``lossfit invert``: the step after a registration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lossfit.cli.common import EPILOG, JsonOption, app, check_not_inputs, fail, guarded
from lossfit.cli.images import (
    TRANSFORM_SUFFIXES,
    Interpolation,
    check_image_output,
    check_output_file,
    load_input,
    within_range,
)
from lossfit.registration.outputs import geometry_summary


@app.command(epilog=EPILOG)
@guarded
def apply(
    items: Annotated[
        list[Path],
        typer.Argument(
            metavar="TRANSFORM... IMAGE",
            help="transform files (.tfm/.txt/.mat/.json, or displacement fields .nii.gz/.nii/.mha such as a "
            "deformable registration's warp.nii.gz; a chain applies as antsApplyTransforms -t applies it: "
            "the first takes the reference point first), then the image to move",
        ),
    ],
    reference: Annotated[Path, typer.Option(help="the grid of the result (the registration's fixed image)")],
    out: Annotated[Path, typer.Option(help="the image written (.nii.gz, .nii, .dcm, .png, .tif, .npy)")],
    interpolation: Annotated[
        Interpolation, typer.Option(help="linear, nearest (label maps keep their labels) or bspline")
    ] = Interpolation.linear,
    inverse: Annotated[
        bool, typer.Option("--inverse", help="invert the chain: bring an image of the fixed space onto the moving")
    ] = False,
    fill: Annotated[float, typer.Option(help="the value outside the image")] = 0.0,
    reference_series: Annotated[str | None, typer.Option(help="SeriesInstanceUID, for a folder of several")] = None,
    image_series: Annotated[str | None, typer.Option(help="SeriesInstanceUID, for a folder of several")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace OUT if it exists")] = False,
    json_out: JsonOption = False,
) -> None:
    """Resample IMAGE onto the --reference grid through a chain of transforms (reference world to image world, as
    a registration's transform.tfm maps the fixed image to the moving one)."""
    import torch

    from lossfit.registration.apply import FIELD_SUFFIXES, apply_transform, chain_matrix, read_chain
    from lossfit.registration.io import save_dicom_series, save_image

    if len(items) < 2:
        fail("give at least one TRANSFORM and then the IMAGE to move")
    *transform_paths, image_path = items
    for t in transform_paths:
        if not t.name.lower().endswith(TRANSFORM_SUFFIXES + FIELD_SUFFIXES):
            fail(
                f"{t}: a transform must end in {', '.join(TRANSFORM_SUFFIXES + FIELD_SUFFIXES)} (the IMAGE comes last)"
            )
    check_not_inputs([*transform_paths, image_path, reference], [(out, "--out")])
    check_output_file(out, "--out", overwrite)
    chain = read_chain(transform_paths)  # every transform read before the images
    has_field = any(not isinstance(m, torch.Tensor) for m in chain)
    if has_field and inverse:
        fail("--inverse with a displacement field: apply the registration's inverse field (inverse_warp.nii.gz)")
    matrix = None if has_field else chain_matrix(chain, inverse=inverse)  # type: ignore[arg-type]
    image = load_input(image_path, "--image", series=image_series)
    grid = load_input(reference, "--reference", series=reference_series)
    series_out = out.name.lower().endswith(".dcm") and grid.ndim == 3 and grid.shape[0] > 1
    check_image_output(grid, out.name, image.data, fill)
    moved = apply_transform(image, chain if has_field else matrix, grid, interpolation=interpolation.value, fill=fill)  # type: ignore[arg-type]
    moved = within_range(moved, out.name, image.data, fill, interpolation.value)
    if series_out:
        import shutil

        if out.exists():  # --overwrite: replaced as a whole, the new series built beside it first
            staged = out.with_name(f".{out.name}.new")
            shutil.rmtree(staged, ignore_errors=True)
            save_dicom_series(moved, staged)
            if out.is_dir():
                shutil.rmtree(out)
            else:
                out.unlink()
            staged.rename(out)
        else:
            save_dicom_series(moved, out)
    else:
        save_image(moved, out)  # atomic: a full disk is named and leaves nothing half-written
    if json_out:
        summary = {
            "output": str(out),
            "transforms": [str(t) for t in transform_paths],
            "inverse": inverse,
            "matrix": None if matrix is None else matrix.tolist(),
            "convention": "the chain maps the reference's world points (LPS, mm) to the image's",
            "interpolation": interpolation.value,
            "fill": fill,
            "geometry": geometry_summary(moved),
        }
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(f"wrote {out} ({'x'.join(str(n) for n in moved.size)} voxels on the reference grid)")


@app.command(epilog=EPILOG)
@guarded
def invert(
    transforms: Annotated[
        list[Path], typer.Argument(metavar="TRANSFORM...", help="transform files; a chain is composed first")
    ],
    out: Annotated[Path, typer.Option(help="the inverse: .tfm, .txt, .mat (ITK/ANTs) or .json")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace OUT if it exists")] = False,
    json_out: JsonOption = False,
) -> None:
    """Write the inverse of a transform (or of a chain, composed as `lossfit apply` composes it): it maps the
    moving image's world points back to the fixed image's."""
    from lossfit.registration.apply import chain_matrix
    from lossfit.registration.transform_files import write_transform

    if not out.name.lower().endswith(TRANSFORM_SUFFIXES):
        fail(f"{out}: --out must end in {', '.join(TRANSFORM_SUFFIXES)}")
    check_not_inputs(list(transforms), [(out, "--out")])
    check_output_file(out, "--out", overwrite)
    inverse = chain_matrix(transforms, inverse=True)
    write_transform(out, inverse)
    if json_out:
        typer.echo(json.dumps({"output": str(out), "matrix": inverse.tolist()}, indent=2))
    else:
        typer.echo(f"wrote {out}")
        for row in inverse.tolist():
            typer.echo("  " + "  ".join(f"{v: .6f}" for v in row))
