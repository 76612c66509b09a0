"""Applying a transform, or a chain of them, to an image: the step after a registration.

A transform maps points of the reference (fixed, output) grid's world space to the image's (moving, input)
world space, as a registration's matrix and every ITK/ANTs transform file do. A chain ``[A, B]`` is applied as
``antsApplyTransforms -t A -t B`` applies it (measured against ANTs, see
:func:`~lossfit.registration.transform_files.read_transforms`): ``A`` to the reference point first, then ``B`` (the
matrix ``B @ A``), as ``-t 1Warp.nii.gz -t 0GenericAffine.mat`` takes a fixed point through the warp, then the affine.
(An ITK composite *file* lists its parts the other way: its last part is applied first.) ``inverse=True`` inverts
the whole chain: an image living in the reference's space brought onto the grid of the registration's moving image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from lossfit.registration.image import Image
from lossfit.registration.register import single_slice
from lossfit.registration.resample import resample

TransformLike = torch.Tensor | str | os.PathLike[str]


def chain_matrix(transforms: TransformLike | Sequence[TransformLike], *, inverse: bool = False) -> torch.Tensor:
    """The one ``(d+1, d+1)`` float64 matrix of a transform, a file, or a chain of them (see the module
    docstring); inverted when ``inverse``."""
    from lossfit.registration.transform_files import invert_transform, read_transform

    items = [transforms] if isinstance(transforms, torch.Tensor | str | os.PathLike) else list(transforms)
    if not items:
        raise ValueError("`transforms` must hold at least one transform (a matrix or a file)")
    matrices = []
    for k, item in enumerate(items):
        if isinstance(item, torch.Tensor):
            m = item.detach().to("cpu", torch.float64)
            d = m.shape[-1] - 1
            if m.dim() != 2 or m.shape != (d + 1, d + 1) or d not in (2, 3):
                raise ValueError(f"`transforms[{k}]` must be a 3x3 or 4x4 matrix; got shape {tuple(m.shape)}")
        else:
            m = read_transform(item)
        matrices.append(m)
    sizes = {m.shape[0] for m in matrices}
    if len(sizes) > 1:
        raise ValueError(f"`transforms` mixes 2-D and 3-D transforms (matrices of sizes {sorted(sizes)})")
    total = matrices[0]
    for m in matrices[1:]:
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
            ``.json``), or a chain of them applied as ANTs and ITK apply a chain (see the module docstring).
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
    matrix = chain_matrix(transforms, inverse=inverse)
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


__all__ = ["apply_transform", "chain_matrix"]
