"""Image registration in world coordinates: images with geometry, resampling, metrics, ``register``, export."""

from lossfit.registration.evaluate import displacement, target_registration_error
from lossfit.registration.export import read_itk_transform, write_itk_transform
from lossfit.registration.image import Image
from lossfit.registration.io import load_image
from lossfit.registration.register import register
from lossfit.registration.resample import resample
from lossfit.registration.result import Level, Registration

__all__ = [
    "Image",
    "Level",
    "Registration",
    "displacement",
    "load_image",
    "read_itk_transform",
    "register",
    "resample",
    "target_registration_error",
    "write_itk_transform",
]
