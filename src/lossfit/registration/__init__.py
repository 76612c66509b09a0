"""Image registration: images with world geometry, their files, and (to come) the fit that aligns them."""

from lossfit.registration.image import Image
from lossfit.registration.io import load_image

__all__ = ["Image", "load_image"]
