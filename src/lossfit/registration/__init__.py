"""Image registration in world coordinates: images with geometry, resampling, metrics, ``register`` (affine and
deformable), transform files and displacement fields (read, write, invert, apply), evaluation."""

from lossfit.registration.apply import apply_transform
from lossfit.registration.deformable import DeformableRegistration
from lossfit.registration.evaluate import (
    dice,
    displacement,
    end_point_error,
    folded_fraction,
    inverse_consistency,
    jacobian_determinant,
    target_registration_error,
    warp_labels,
)
from lossfit.registration.fields_io import read_displacement_field, write_composite_h5, write_displacement_field
from lossfit.registration.image import Image
from lossfit.registration.io import load_image, save_dicom_series, save_image
from lossfit.registration.register import register
from lossfit.registration.resample import resample
from lossfit.registration.result import Level, Registration
from lossfit.registration.transform_files import (
    invert_transform,
    read_itk_transform,
    read_transform,
    read_transforms,
    write_itk_transform,
    write_transform,
)

__all__ = [
    "DeformableRegistration",
    "Image",
    "Level",
    "Registration",
    "apply_transform",
    "dice",
    "displacement",
    "end_point_error",
    "folded_fraction",
    "inverse_consistency",
    "invert_transform",
    "jacobian_determinant",
    "load_image",
    "read_displacement_field",
    "read_itk_transform",
    "read_transform",
    "read_transforms",
    "register",
    "resample",
    "save_dicom_series",
    "save_image",
    "target_registration_error",
    "warp_labels",
    "write_composite_h5",
    "write_displacement_field",
    "write_itk_transform",
    "write_transform",
]
