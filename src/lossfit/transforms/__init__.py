"""Geometric transforms as homogeneous matrices: parametrise, apply, compose, invert (any dimension d >= 1)."""

from lossfit.transforms.homogeneous import (
    MODELS,
    Transform,
    apply,
    compose,
    inverse,
    matrix,
    min_points,
    num_params,
    params,
    rotation,
    rotation_log,
)

__all__ = [
    "MODELS",
    "Transform",
    "apply",
    "compose",
    "inverse",
    "matrix",
    "min_points",
    "num_params",
    "params",
    "rotation",
    "rotation_log",
]
