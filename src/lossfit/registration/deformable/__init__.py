"""Deformable registration: dense fields (a stationary velocity or a displacement) and cubic B-splines, in world
coordinates on the fixed image's grid (see :mod:`.driver` for the steps)."""

from lossfit.registration.deformable.driver import DEFORMABLE, register_deformable
from lossfit.registration.deformable.result import DeformableRegistration

__all__ = ["DEFORMABLE", "DeformableRegistration", "register_deformable"]
