"""``lossfit register``: register two images and write the run folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from lossfit.cli.common import (
    EPILOG,
    EXIT_NOT_CONVERGED,
    REPORT_NAME,
    JsonOption,
    ReportOption,
    app,
    check_outputs,
    command_line,
    fail,
    guarded,
    write_report,
)
from lossfit.cli.images import (
    BYTES_PER_VOXEL,
    PICTURE_BYTES,
    ImageFormat,
    Interpolation,
    check_image_output,
    load_input,
    within_range,
)
from lossfit.registration.outputs import (
    output_suffix,
    registration_page,
    registration_summary,
    warped_name,
    write_registration,
)


@app.command(epilog=EPILOG)
@guarded
def register(
    ctx: typer.Context,
    fixed: Annotated[Path, typer.Argument(help="the fixed image: NIfTI, DICOM file or series folder, PNG/TIFF/JPEG")],
    moving: Annotated[Path, typer.Argument(help="the moving image, brought onto the fixed one")],
    transform: Annotated[
        str,
        typer.Option(
            help="translation, rigid, similarity, affine, projective (2-D); or deformable (affine, then a "
            "diffeomorphic field), svf, field or bspline"
        ),
    ] = "affine",
    metric: Annotated[str, typer.Option(help="mse, ncc, lncc or mi (mutual information, multi-modal)")] = "mse",
    init: Annotated[str, typer.Option(help="geometry, mass, moments or none")] = "geometry",
    initial: Annotated[
        Path | None, typer.Option(help="a transform to start from (.tfm/.txt/.mat/.json; fixed world to moving)")
    ] = None,
    loss: Annotated[str, typer.Option(help="for mse: linear, huber or cauchy (robust to missing content)")] = "linear",
    samples: Annotated[int, typer.Option(help="the most fixed voxels compared at the finest level")] = 100_000,
    levels: Annotated[
        str | None, typer.Option(help="pyramid shrink factors, coarse to fine, e.g. 4,2,1 (default: automatic)")
    ] = None,
    smoothing: Annotated[float, typer.Option(help="Gaussian smoothing (voxels) at the finest level")] = 0.0,
    fixed_mask: Annotated[Path | None, typer.Option(help="only voxels where this image is non-zero count")] = None,
    moving_mask: Annotated[Path | None, typer.Option(help="only moving voxels where it is non-zero count")] = None,
    fixed_series: Annotated[str | None, typer.Option(help="SeriesInstanceUID, for a folder of several")] = None,
    moving_series: Annotated[str | None, typer.Option(help="SeriesInstanceUID, for a folder of several")] = None,
    fixed_volume: Annotated[int | None, typer.Option(help="which volume (from 0) of a 4-D NIfTI file")] = None,
    moving_volume: Annotated[int | None, typer.Option(help="which volume (from 0) of a 4-D NIfTI file")] = None,
    seed: Annotated[int, typer.Option(help="seeds the choice of samples")] = 0,
    symmetric: Annotated[
        bool,
        typer.Option("--symmetric", help="deformable/svf: pull both images half-way (SyN-style; about 2x the time)"),
    ] = False,
    affine: Annotated[
        str | None, typer.Option(help="deformable: the stage found first: affine (default), rigid, similarity, none")
    ] = None,
    fluid: Annotated[float | None, typer.Option(help="svf/field: smoothing of each step, voxels (default 0)")] = None,
    diffusion: Annotated[
        float | None, typer.Option(help="svf/field: smoothing of the field, voxels (default 1)")
    ] = None,
    control_spacing: Annotated[
        float | None, typer.Option(help="bspline: control-point spacing at the finest level, mm")
    ] = None,
    bending: Annotated[float | None, typer.Option(help="bspline: the regulariser's weight (default 0.01)")] = None,
    regularizer: Annotated[str | None, typer.Option(help="bspline: bending (default), diffusion or elastic")] = None,
    folding: Annotated[
        float | None, typer.Option(help="bspline: the fold barrier's weight (default 100; 0: off)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="folder for the warped image, transform (.tfm, .json), picture")
    ] = None,
    image_format: Annotated[
        ImageFormat | None, typer.Option("--format", help="the warped image's format (default: the fixed image's)")
    ] = None,
    interpolation: Annotated[
        Interpolation, typer.Option(help="for the warped image: linear, nearest (label maps) or bspline")
    ] = Interpolation.linear,
    fill: Annotated[float, typer.Option(help="the warped image's value outside the moving image")] = 0.0,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace the outputs of an earlier run in --out (as a whole)")
    ] = False,
    json_out: JsonOption = False,
    report: ReportOption = None,
) -> None:
    """Register MOVING to FIXED in world coordinates; the transform maps fixed world points to moving ones.

    Everything is checked before the work starts: the inputs are never overwritten, --out must be new, empty or
    (with --overwrite) hold an earlier run's outputs, which are then replaced as a whole; the warped image's
    format must hold it. The transform files are written first."""
    from rich.progress import Progress

    from lossfit.registration import register as register_images
    from lossfit.registration.deformable.driver import DEFORMABLE
    from lossfit.run_folder import check_run_folder, check_space

    deformable_options: dict[str, Any] = {
        "affine": affine, "fluid": fluid, "diffusion": diffusion, "control_spacing": control_spacing,
        "bending": bending, "regularizer": regularizer, "folding": folding,
    }  # fmt: skip
    given = {key: value for key, value in deformable_options.items() if value is not None}
    if given and transform not in DEFORMABLE:
        names = ", ".join("--" + key.replace("_", "-") for key in given)
        fail(f"{names} apply to the deformable transforms ({', '.join(DEFORMABLE)}); got --transform {transform}")
    check_outputs([fixed, moving, fixed_mask, moving_mask, initial], out=out, out_folder=True, report=report)
    if out is not None:
        check_run_folder(out, overwrite)
    factors = _parse_levels(levels)
    start = None if initial is None else _read_initial(initial)
    fixed_image = load_input(fixed, "--fixed", series=fixed_series, volume=fixed_volume)
    moving_image = load_input(moving, "--moving", series=moving_series, volume=moving_volume)
    fixed_mask_image = None if fixed_mask is None else load_input(fixed_mask, "--fixed-mask")
    moving_mask_image = None if moving_mask is None else load_input(moving_mask, "--moving-mask")
    suffix = output_suffix(None if image_format is None else image_format.value, fixed)
    if out is not None:
        check_image_output(fixed_image, f"warped{suffix}", moving_image.data, fill)
        voxels = fixed_image.data.numel()
        check_space(out, voxels * BYTES_PER_VOXEL[suffix] + PICTURE_BYTES)
    with Progress(transient=True, disable=json_out or not sys.stderr.isatty()) as bar:
        task = bar.add_task("registering", total=None)

        def progress(level: int, count: int) -> None:
            bar.update(task, total=count, completed=level, description=f"pyramid level {level + 1} of {count}")

        result = register_images(
            fixed_image,
            moving_image,
            transform,
            metric,
            init=init,
            initial=start,
            loss=loss,
            samples=samples,
            levels=factors,
            smoothing=smoothing,
            seed=seed,
            progress=progress,
            fixed_mask=fixed_mask_image,
            moving_mask=moving_mask_image,
            symmetric=symmetric,
            **given,
        )
    warped = result.warped
    name = warped_name(suffix, warped)
    if interpolation is not Interpolation.linear or fill != 0.0:
        from lossfit.registration import resample

        field = getattr(result, "displacement", None)
        how: dict[str, Any] = {"matrix": result.matrix} if field is None else {"displacement": field}
        warped = resample(result.moving, result.fixed, interpolation=interpolation.value, default=fill, **how)
        warped = within_range(warped, f"warped{suffix}", moving_image.data, fill, interpolation.value)
    summary = registration_summary(result, {"fixed": fixed, "moving": moving, "fixed_mask": fixed_mask,
                                             "moving_mask": moving_mask, "initial": initial})  # fmt: skip
    page = registration_page(
        result,
        command_line(ctx),
        f"{moving} registered to {fixed}",
        f"transform: {transform}; metric: {metric}; loss: {loss}; initialisation: {init}; up to {samples} samples "
        "at the finest level",
    )
    same_folder = out is not None and report is not None and report.resolve() == out.resolve()
    if out is not None:
        write_registration(result, warped, name, out, summary, page if same_folder else None)
        summary["outputs"] = str(out)
    if report is not None and not same_folder:
        summary["report"] = str(write_report(report, "lossfit register", page))
    elif same_folder:
        summary["report"] = str(out / REPORT_NAME)  # type: ignore[operator]
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(result.summary())
        assert result.matrix is not None
        if getattr(result, "displacement", None) is not None:
            e = getattr(result, "evaluation", {})
            jacobian = f"{e['jacobian_min']:.3f}..{e['jacobian_max']:.3f}"
            folded = f"{100 * e['folded_fraction']:.3g}%"
            typer.echo(f"field: Jacobian determinant {jacobian}, folded {folded} of voxels; the affine stage:")
        typer.echo("matrix (fixed world -> moving world, LPS mm):")
        for row in result.matrix.tolist():
            typer.echo("  " + "  ".join(f"{v: .6f}" for v in row))
    if not result.success:
        raise typer.Exit(EXIT_NOT_CONVERGED)


def _read_initial(path: Path) -> Any:
    from lossfit.registration.transform_files import read_transform

    return read_transform(path)


def _parse_levels(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        fail(f"--levels must be whole shrink factors separated by commas, coarse to fine (e.g. 4,2,1); got {text!r}")
        raise  # unreachable: fail exits
