"""The linear transform types of ITK (and so of SimpleITK, ANTs and 3D Slicer): how each stores its parameters, and
the ``(A, t, c)`` of ``y = A (x - c) + t + c`` they mean (``c`` the centre, from the FixedParameters).

Every entry of :data:`ITK_TYPES` was checked point by point against SimpleITK 2.5 (ITK 5.4); see
``tests/test_transform_files.py``. :mod:`lossfit.registration.transform_files` reads and writes the files.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Array = np.ndarray
_VERSOR_EPSILON = 1e-10  # ITK rescales a versor whose norm is at least 1 - this (VersorRigid3DTransform and kin)


def _rotation_2d(angle: float) -> Array:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _quaternion_matrix(x: float, y: float, z: float, w: float) -> Array:
    """The matrix of ``v -> q v q*`` (vnl's rotation matrix): a rotation times ``|q|^2``, never renormalised."""
    return np.array(
        [
            [w * w + x * x - y * y - z * z, 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), w * w - x * x + y * y - z * z, 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), w * w - x * x - y * y + z * z],
        ]
    )


def _versor_matrix(v: Array, rescale: bool = True) -> Array:
    """The rotation of ITK's versor parameters (the vector part of a unit quaternion; w = sqrt(1 - |v|^2))."""
    norm = float(np.linalg.norm(v))
    if rescale and norm >= 1.0 - _VERSOR_EPSILON:
        v = v / (norm + _VERSOR_EPSILON * norm)  # what ITK does before building the versor
        norm = float(np.linalg.norm(v))
    if norm > 1.0:
        raise ValueError(f"its versor has norm {norm:.6g}; a versor's vector part must not exceed 1")
    x, y, z = (float(value) for value in v)
    return _quaternion_matrix(x, y, z, math.sqrt(max(0.0, 1.0 - norm * norm)))


def _euler_3d(angles: Array, zyx: bool) -> Array:
    cx, sx = math.cos(angles[0]), math.sin(angles[0])
    cy, sy = math.cos(angles[1]), math.sin(angles[1])
    cz, sz = math.cos(angles[2]), math.sin(angles[2])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx if zyx else rz @ rx @ ry


Parts = tuple[Array, Array, Array]
Builder = Callable[[Array, Array, int], Parts]


def _off_diagonal(k: Array) -> Array:
    """The skew matrix of ScaleSkewVersor3DTransform: k0..k5 at (0,1) (0,2) (1,0) (1,2) (2,0) (2,1)."""
    return np.array([[0, k[0], k[1]], [k[2], 0, k[3]], [k[4], k[5], 0]])


def _matrix_offset(p: Array, f: Array, d: int) -> Parts:
    return p[: d * d].reshape(d, d), p[d * d :], f[:d]


def _centered_affine(p: Array, f: Array, d: int) -> Parts:
    # ITK sets the FixedParameters first, then the Parameters, whose centre replaces them.
    return p[: d * d].reshape(d, d), p[d * d + d :], p[d * d : d * d + d]


def _scale_skew_versor(p: Array, f: Array, d: int) -> Parts:
    # ITK adds the scales and skews to the rotation (A = R + diag(s) - I + K); it does not multiply them.
    return _versor_matrix(p[:3]) + np.diag(p[6:9]) - np.eye(3) + _off_diagonal(p[9:15]), p[3:6], f[:3]


def _compose_scale_skew_versor(p: Array, f: Array, d: int) -> Parts:
    upper = np.array([[1, p[9], p[10]], [0, 1, p[11]], [0, 0, 1]])
    return _versor_matrix(p[:3]) @ np.diag(p[6:9]) @ upper, p[3:6], f[:3]


@dataclass(frozen=True)
class ItkType:
    """How an ITK linear transform type stores itself, and the ``(A, t, c)`` of ``y = A (x - c) + t + c`` it means.

    Attributes:
        dimensions: the d it exists for.
        parameters: d -> the number of Parameters.
        fixed: d -> the allowed numbers of FixedParameters (the centre); None: any, ignored.
        layout: the Parameters in words.
        build: (Parameters, FixedParameters, d) -> (A, t, c).
    """

    dimensions: tuple[int, ...]
    parameters: Callable[[int], int]
    fixed: Callable[[int], tuple[int, ...]] | None
    layout: str
    build: Builder


def _centre(d: int) -> tuple[int, ...]:
    return (d,)


def _zero(d: int) -> Array:
    return np.zeros(d)


_MATRIX = "matrix (row by row), translation"
_ANGLE = "angle (rad, counter-clockwise), translation"
ITK_TYPES: dict[str, ItkType] = {
    "AffineTransform": ItkType((2, 3), lambda d: d * d + d, _centre, _MATRIX, _matrix_offset),
    "MatrixOffsetTransformBase": ItkType((2, 3), lambda d: d * d + d, _centre, _MATRIX, _matrix_offset),
    "CenteredAffineTransform": ItkType(
        (2, 3),
        lambda d: d * d + 2 * d,
        _centre,
        "matrix, centre (replaces the fixed one), translation",
        _centered_affine,
    ),
    "IdentityTransform": ItkType((2, 3), lambda d: 0, None, "none", lambda p, f, d: (np.eye(d), _zero(d), _zero(d))),
    "TranslationTransform": ItkType((2, 3), lambda d: d, None, "translation", lambda p, f, d: (np.eye(d), p, _zero(d))),
    "ScaleTransform": ItkType((2, 3), lambda d: d, _centre, "scales", lambda p, f, d: (np.diag(p), _zero(d), f[:d])),
    "Euler2DTransform": ItkType(
        (2,), lambda d: 3, _centre, _ANGLE, lambda p, f, d: (_rotation_2d(p[0]), p[1:3], f[:2])
    ),
    "Rigid2DTransform": ItkType(
        (2,), lambda d: 3, _centre, _ANGLE, lambda p, f, d: (_rotation_2d(p[0]), p[1:3], f[:2])
    ),
    "Similarity2DTransform": ItkType(
        (2,), lambda d: 4, _centre, "scale, " + _ANGLE, lambda p, f, d: (p[0] * _rotation_2d(p[1]), p[2:4], f[:2])
    ),
    "Euler3DTransform": ItkType(
        (3,),
        lambda d: 6,
        lambda d: (3, 4),
        "angles about x, y, z (A = Rz Rx Ry, or Rz Ry Rx where a 4th fixed parameter is not 0), translation",
        lambda p, f, d: (_euler_3d(p[:3], len(f) == 4 and f[3] != 0), p[3:6], f[:3]),
    ),
    "Rigid3DTransform": ItkType((3,), lambda d: 12, _centre, _MATRIX, _matrix_offset),
    "VersorTransform": ItkType(
        (3,), lambda d: 3, _centre, "versor", lambda p, f, d: (_versor_matrix(p[:3], rescale=False), _zero(3), f[:3])
    ),
    "VersorRigid3DTransform": ItkType(
        (3,), lambda d: 6, _centre, "versor, translation", lambda p, f, d: (_versor_matrix(p[:3]), p[3:6], f[:3])
    ),
    "QuaternionRigidTransform": ItkType(
        (3,),
        lambda d: 7,
        _centre,
        "quaternion (x, y, z, w; A = |q|^2 R, not normalised), translation",
        lambda p, f, d: (_quaternion_matrix(*p[:4].tolist()), p[4:7], f[:3]),
    ),
    "Similarity3DTransform": ItkType(
        (3,),
        lambda d: 7,
        _centre,
        "versor, translation, scale",
        lambda p, f, d: (p[6] * _versor_matrix(p[:3]), p[3:6], f[:3]),
    ),
    "ScaleVersor3DTransform": ItkType(
        (3,),
        lambda d: 9,
        _centre,
        "versor, translation, scales (A = R + diag(s) - I)",
        lambda p, f, d: (_versor_matrix(p[:3]) + np.diag(p[6:9]) - np.eye(3), p[3:6], f[:3]),
    ),
    "ScaleSkewVersor3DTransform": ItkType(
        (3,),
        lambda d: 15,
        _centre,
        "versor, translation, scales, 6 skews (A = R + diag(s) - I + K)",
        _scale_skew_versor,
    ),
    "ComposeScaleSkewVersor3DTransform": ItkType(
        (3,),
        lambda d: 12,
        _centre,
        "versor, translation, scales, 3 skews (A = R diag(s) K, K unit upper triangular)",
        _compose_scale_skew_versor,
    ),
}
"""The ITK linear transform types lossfit reads: their layouts and meaning, checked against SimpleITK 2.5."""
