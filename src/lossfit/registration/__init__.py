"""Image registration in world coordinates: images with geometry, resampling, metrics, ``register``, transform
files (read, write, invert, apply)."""

from lossfit.registration.apply import apply_transform
from lossfit.registration.evaluate import displacement, target_registration_error
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
    "Image",
    "Level",
    "Registration",
    "apply_transform",
    "displacement",
    "invert_transform",
    "load_image",
    "read_itk_transform",
    "read_transform",
    "read_transforms",
    "register",
    "resample",
    "save_dicom_series",
    "save_image",
    "target_registration_error",
    "write_itk_transform",
    "write_transform",
]
