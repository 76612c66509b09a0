"""Applying a transform, or a chain of them, to an image: the step after a registration.

A transform maps points of the reference (fixed, output) grid's world space to the image's (moving, input)
world space, as a registration's matrix and every ITK/ANTs transform file do. A chain ``[A, B]`` is applied as
``antsApplyTransforms -t A -t B`` applies it (measured against ANTs, see
:func:`~lossfit.registration.transform_files.read_transforms`): ``A`` to the reference point first, then ``B`` (the
matrix ``B @ A``), as ``-t 1Warp.nii.gz -t 0GenericAffine.mat`` takes a fixed point through the warp, then the affine.
(An ITK composite *file* lists its parts the other way: its last part is applied first.) ``inverse=True`` inverts
the whole chain: an image living in the reference's space brought onto the grid of the registration's moving image.

A chain may hold displacement fields (``.nii``/``.nii.gz``/``.mha`` files as ``lossfit register --transform
deformable`` and ANTs write them, or ``(field, grid)`` pairs): a field maps ``y -> y + u(y)``, ``u`` interpolated
linearly on its own grid and zero beyond it (as ITK's ``DisplacementFieldTransform``). A field has no inverse here:
invert a deformable registration with its own inverse field (``inverse_warp.nii.gz``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from lossfit.registration.image import Image
from lossfit.registration.register import single_slice
from lossfit.registration.resample import resample

TransformLike = torch.Tensor | str | os.PathLike[str]
FIELD_SUFFIXES = (".nii", ".nii.gz", ".mha")


def is_field_file(item: object) -> bool:
    """Whether a chain item names a displacement field file (by its suffix)."""
    return isinstance(item, (str, os.PathLike)) and str(item).lower().endswith(FIELD_SUFFIXES)


def read_chain(transforms: TransformLike | Sequence[TransformLike]) -> list[torch.Tensor | tuple[torch.Tensor, Image]]:
    """Every item of a chain read: matrices as ``(d+1, d+1)`` float64, fields as ``(field, grid)``."""
    from lossfit.registration.fields_io import read_displacement_field
    from lossfit.registration.transform_files import read_transform

    items = [transforms] if isinstance(transforms, torch.Tensor | str | os.PathLike | tuple) else list(transforms)
    if not items:
        raise ValueError("`transforms` must hold at least one transform (a matrix or a file)")
    out: list[torch.Tensor | tuple[torch.Tensor, Image]] = []
    for k, item in enumerate(items):
        if isinstance(item, tuple):
            field, grid = item
            out.append((torch.as_tensor(field, dtype=torch.float64), grid))
        elif isinstance(item, torch.Tensor):
            m = item.detach().to("cpu", torch.float64)
            d = m.shape[-1] - 1
            if m.dim() != 2 or m.shape != (d + 1, d + 1) or d not in (2, 3):
                raise ValueError(f"`transforms[{k}]` must be a 3x3 or 4x4 matrix; got shape {tuple(m.shape)}")
            out.append(m)
        elif is_field_file(item):
            out.append(read_displacement_field(item))
        else:
            out.append(read_transform(item))
    dims = {m.shape[0] - 1 if isinstance(m, torch.Tensor) else m[1].ndim for m in out}
    if len(dims) > 1:
        raise ValueError(f"`transforms` mixes 2-D and 3-D transforms (of dimensions {sorted(dims)})")
    return out


def chain_points(transforms: TransformLike | Sequence[TransformLike], points: torch.Tensor) -> torch.Tensor:
    """World points ``(N, d)`` of the reference taken through a chain that may hold fields (module docstring)."""
    from lossfit import transforms as T
    from lossfit.registration.resample import world_to_normalized

    y = points.to(torch.float64)
    for item in read_chain(transforms):
        if isinstance(item, torch.Tensor):
            y = T.apply(item, y)
            continue
        field, grid = item
        d = grid.ndim
        if field.shape[-1] != y.shape[-1]:
            raise ValueError(f"a {field.shape[-1]}-D displacement field cannot move {y.shape[-1]}-D points")
        at = T.apply(world_to_normalized(grid), y)  # the field's own normalised coordinates
        inside = (at.abs() <= 1 + 1e-9).all(-1, keepdim=True)
        if not bool(inside.any()):
            from lossfit.registration.checks import world_extent

            raise ValueError(
                f"the displacement field's grid ({world_extent(grid)}) holds none of the points it should move "
                f"(the reference's, taken through the chain so far): it belongs to another image"
            )
        volume = field.movedim(-1, 0).unsqueeze(0)
        looked = (
            torch.nn.functional.grid_sample(
                volume, at.reshape(1, -1, *([1] * (d - 1)), d), mode="bilinear", align_corners=True
            )
            .reshape(d, -1)
            .T
        )
        y = y + torch.where(inside, looked, torch.zeros_like(looked))
    return y


def chain_matrix(transforms: TransformLike | Sequence[TransformLike], *, inverse: bool = False) -> torch.Tensor:
    """The one ``(d+1, d+1)`` float64 matrix of a transform, a file, or a chain of them (see the module
    docstring); inverted when ``inverse``."""
    from lossfit.registration.transform_files import invert_transform

    matrices = read_chain(transforms)
    if any(not isinstance(m, torch.Tensor) for m in matrices):
        raise ValueError(
            "`transforms` holds a displacement field, which no matrix can stand for: apply it with "
            "apply_transform (or `lossfit apply`), and invert a deformable registration with its inverse field"
        )
    total = matrices[0]
    assert isinstance(total, torch.Tensor)
    for m in matrices[1:]:
        assert isinstance(m, torch.Tensor)
        total = m @ total  # the next transform takes the point where the chain so far left it
    return invert_transform(total) if inverse else total


def apply_transform(
    image: Image,
    transforms: TransformLike | Sequence[TransformLike],
    reference: Image,
    *,
    interpolation: str = "linear",
    fill: float = 0.0,
    inverse: bool = False,
) -> Image:
    """``image`` resampled onto ``reference``'s grid through ``transforms`` (reference world to image world).

    Args:
        image: the image to move (a 2-D or 3-D :class:`Image`).
        transforms: a ``(d+1, d+1)`` matrix, a transform file (ITK ``.tfm``/``.txt``, ITK/ANTs ``.mat``, lossfit
            ``.json``), a displacement field file (``.nii.gz``, ``.nii``, ``.mha``), or a chain of them applied as
            ANTs and ITK apply a chain (see the module docstring).
        reference: the grid of the result.
        interpolation: ``linear``, ``nearest`` (label maps keep their labels) or ``bspline`` (cubic).
        fill: the value where the transformed point falls outside ``image``.
        inverse: invert the whole chain.

    Returns:
        An image on ``reference``'s grid (its geometry and header), float data of ``image``'s dtype.

    Raises:
        InputFileError: a transform file cannot be read.
        ValueError: a chain mixing dimensions, a transform of another dimension than the images, a singular
            chain with ``inverse``, an unknown ``interpolation``.

    Example:
        >>> img = Image(torch.arange(12.0).reshape(3, 4))
        >>> shift = torch.eye(3, dtype=torch.float64)
        >>> shift[0, 2] = 1.0  # the output at x looks up the input at x + 1
        >>> apply_transform(img, shift, img, fill=-1).data
        tensor([[ 1.,  2.,  3., -1.],
                [ 5.,  6.,  7., -1.],
                [ 9., 10., 11., -1.]])
    """
    if not isinstance(image, Image) or not isinstance(reference, Image):
        raise TypeError("`image` and `reference` must be lossfit.registration.Image objects")
    chain = read_chain(transforms)
    if any(not isinstance(m, torch.Tensor) for m in chain):
        if inverse:
            raise ValueError(
                "`inverse=True` with a displacement field in the chain: a field is not inverted here; apply the "
                "registration's inverse field (inverse_warp.nii.gz) instead"
            )
        d = next(m[1].ndim for m in chain if not isinstance(m, torch.Tensor))
        if d == 2 and image.ndim == 3 and reference.ndim == 3:  # one-slice volumes: 2-D images, as for matrices
            flat_image, flat_reference = single_slice(image), single_slice(reference)
            if flat_image is not None and flat_reference is not None:
                image, reference = flat_image, flat_reference
        if d != reference.ndim or image.ndim != reference.ndim:
            raise ValueError(
                f"the displacement field is {d}-D but `reference` is {reference.ndim}-D and `image` {image.ndim}-D"
            )
        x = reference.world_grid(torch.float64).reshape(-1, d)
        u = (chain_points(chain, x) - x).reshape(*reference.shape, d)  # type: ignore[arg-type]
        moved = resample(image, reference, interpolation=interpolation, default=float(fill), displacement=u)
        assert isinstance(moved, Image)
        return moved
    matrix = chain_matrix(chain, inverse=inverse)  # type: ignore[arg-type]
    if matrix.shape[0] == 3 and image.ndim == 3 and reference.ndim == 3:
        # one-slice volumes (2-D NIfTI files) take a 2-D transform as register treats them: 2-D images in their plane
        flat_image, flat_reference = single_slice(image), single_slice(reference)
        if flat_image is not None and flat_reference is not None:
            image, reference = flat_image, flat_reference
    if matrix.shape[0] - 1 != reference.ndim:
        raise ValueError(
            f"`transforms` are {matrix.shape[0] - 1}-D but `reference` is {reference.ndim}-D (a 2-D transform "
            "applies to 2-D images)"
        )
    if image.ndim != reference.ndim:
        raise ValueError(f"`image` is {image.ndim}-D but `reference` is {reference.ndim}-D")
    out = resample(image, reference, matrix.to(torch.float64), interpolation=interpolation, default=float(fill))
    assert isinstance(out, Image)  # mask=False returns an Image
    return out


__all__ = ["FIELD_SUFFIXES", "apply_transform", "chain_matrix", "chain_points", "is_field_file", "read_chain"]
