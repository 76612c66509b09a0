"""A registration's outputs: the run folder ``lossfit register --out`` and ``lossfit register-many`` write, its
JSON summary and report page. Library code (the command line and :mod:`lossfit.scale` both call it)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

FORMAT_SUFFIXES = {"nifti": ".nii.gz", "dicom": ".dcm", "png": ".png", "tiff": ".tif", "npy": ".npy"}
# The format of an image written from an input of this suffix (a DICOM series folder gives a series folder).
IMAGE_OUTPUTS = {
    ".nii": ".nii",
    ".nii.gz": ".nii.gz",
    ".dcm": ".dcm",
    ".ima": ".dcm",
    ".png": ".png",
    ".jpg": ".png",
    ".jpeg": ".png",
    ".bmp": ".png",
    ".tif": ".tif",
    ".tiff": ".tif",
    ".npy": ".npy",
}


def output_suffix(fmt: str | None, like: Path) -> str:
    """The suffix of an image written in format ``fmt`` (a key of :data:`FORMAT_SUFFIXES`; when None, ``like``'s
    own format: a lossless one for JPEG/BMP, DICOM for a DICOM folder or a file without a suffix)."""
    if fmt is not None:
        return FORMAT_SUFFIXES[fmt]
    name = like.name.lower()
    if like.is_dir():
        return ".dcm"
    for suffix in sorted(IMAGE_OUTPUTS, key=len, reverse=True):
        if name.endswith(suffix):
            return IMAGE_OUTPUTS[suffix]
    return ".dcm"  # a DICOM file named by its UID, or without a suffix


def warped_name(suffix: str, warped: Any) -> str:
    """The warped image's name in a run folder: ``warped`` (a DICOM series folder) for a 3-D DICOM output."""
    return "warped" if suffix == ".dcm" and warped.ndim == 3 else f"warped{suffix}"


def geometry_summary(image: Any) -> dict[str, Any]:
    """An image's grid for the JSON summaries: size, spacing, origin, direction and world extent."""
    from lossfit.registration.checks import world_extent

    return {
        "size": list(image.size),
        "spacing_mm": list(image.spacing),
        "origin_mm": list(image.origin),
        "direction": [list(row) for row in image.direction],
        "extent": world_extent(image),
    }


def registration_summary(result: Any, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """A registration's JSON summary: its ``to_dict()`` with the input paths and both grids."""
    summary = result.to_dict()
    summary["inputs"] = {name: None if path is None else str(path) for name, path in inputs.items()}
    summary["geometry"] = {"fixed": geometry_summary(result.fixed), "moving": geometry_summary(result.moving)}
    return summary


def registration_page(result: Any, command: str, heading: str, note: str) -> Callable[[Any], None]:
    """A function that fills a report page with the registration's section."""

    def build(page: Any) -> None:
        from lossfit.registration import resample
        from lossfit.report.sections import registration_section

        before = resample(result.moving, result.fixed)
        registration_section(page, heading, result, before, note=note, command=command)

    return build


def write_registration(
    result: Any,
    warped: Any,
    warped_name: str,
    out: Path,
    summary: dict[str, Any],
    report_page: Callable[[Any], None] | None,
) -> None:
    """Write the run folder as a whole (see :mod:`lossfit.run_folder`): transform.tfm (affine family) or, for a
    deformable mapping, warp.nii.gz (the whole mapping as an ITK displacement field on the fixed grid: SimpleITK's
    DisplacementFieldTransform, ANTs' warp), transform.h5 (the same as an ITK composite of the affine stage and
    the field part, one file for SimpleITK.ReadTransform), inverse_warp.nii.gz (on the moving grid) and affine.tfm
    (the affine stage alone), and transform.json first, then the warped moving image (``warped/``, a DICOM series
    folder, for a 3-D DICOM output), registration.png (checkerboards and differences before and after),
    deformation.png for a deformable mapping (the field's Jacobian determinant map and deformed grid), and
    report.html when ``report_page`` is given (--report names the same folder)."""
    from lossfit.io import atomic_write_text
    from lossfit.plotting import plot_registration, save_figure
    from lossfit.registration import resample
    from lossfit.registration.io import save_dicom_series, save_image
    from lossfit.report.sections import deformation_figure
    from lossfit.run_folder import RunFolder

    def picture(path: Path) -> None:
        before = resample(result.moving, result.fixed)
        figure = plot_registration(result.fixed, before, warped, f"{result.transform} / {result.metric}")
        save_figure(figure, str(path))

    def write_page(path: Path) -> None:
        from lossfit.report import Report

        page = Report(title="lossfit register")
        assert report_page is not None
        report_page(page)
        page.save(path)

    with RunFolder(out) as run:
        if getattr(result, "displacement", None) is not None:  # a deformable mapping: ITK displacement fields
            from lossfit.registration.transform_files import write_itk_transform

            run.write("warp.nii.gz", result.save_transform)
            run.write("transform.h5", result.save_transform)
            if result.inverse_displacement is not None:
                run.write("inverse_warp.nii.gz", result.save_inverse_transform)
            run.write("affine.tfm", lambda p: write_itk_transform(p, result.matrix))
        elif result.transform != "projective":
            run.write("transform.tfm", result.save_transform)
        run.write("transform.json", lambda p: atomic_write_text(p, json.dumps(summary, indent=2) + "\n"))
        run.write(warped_name, lambda p: (save_dicom_series if warped_name == "warped" else save_image)(warped, p))
        run.write("registration.png", picture)
        if getattr(result, "displacement", None) is not None:
            run.write("deformation.png", lambda p: save_figure(deformation_figure(result), str(p)))
        if report_page is not None:
            run.write("report.html", write_page)
