"""An image: a tensor of voxel values and the world geometry that places it in the patient.

Convention:
    - World space is LPS in millimetres, as ITK/SimpleITK and DICOM (x grows to the patient's Left, y to Posterior,
      z to Superior). NIfTI's RAS is converted on load/save (flip the signs of x and y).
    - ``Image.data`` is a torch tensor with the spatial axes in reversed index order, exactly like
      ``SimpleITK.GetArrayFromImage``: 2-D ``(ny, nx)``, 3-D ``(nz, ny, nx)``. Scalar images only (colour
      photographs are converted to luminance on load). Float32 by default.
    - ``spacing``, ``origin`` are tuples of d Python floats in index order (x, y[, z]); ``direction`` is a d x d
      tuple of tuples (row-major, like a matrix), whose COLUMNS are the world directions of the index axes i, j, k
      (SimpleITK's ``GetDirection()`` reshaped row-major to d x d gives exactly this).
    - World point of continuous index (i, j[, k]) : ``p = origin + direction @ (spacing * index)``.
    - ``Image.affine`` -> (d+1)x(d+1) float64 tensor mapping homogeneous index (i,j,k,1) to world;
      ``Image.from_affine(data, affine)`` classmethod.

A 2-D image lies in the plane ``z = slice_z`` of the world (LPS mm; 0 unless given): an axial DICOM slice keeps its
position there, and files written from it put it back.

Index (0, 0[, 0]) is the centre of the first voxel, ``data[0, 0, 0]``; index i runs along the last axis of ``data``.
Geometry is kept in float64 (on the CPU) whatever the dtype and device of the data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

Vector = tuple[float, ...]
Matrix = tuple[tuple[float, ...], ...]
VectorLike = Sequence[float] | np.ndarray | torch.Tensor
MatrixLike = Sequence[Sequence[float]] | Sequence[float] | np.ndarray | torch.Tensor

_UNIT_TOL = 1e-3  # how far a direction column's length may be from 1
_SINGULAR_TOL = 1e-6  # |det(direction)| below this is singular


def _numbers(value: Any, argument: str) -> np.ndarray:
    """``value`` as a float64 array, or ``TypeError`` naming ``argument``."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = (value.double() if value.is_floating_point() else value).numpy()
    try:
        array = np.asarray(value)
    except Exception:
        raise TypeError(f"`{argument}` must hold numbers; got {type(value).__name__}") from None
    if array.dtype.kind not in "iuf":
        raise TypeError(f"`{argument}` must hold real numbers; got {type(value).__name__} of {array.dtype}")
    return array.astype(np.float64)


def check_vector(value: Any, argument: str, ndim: int | None, *, positive: bool = False) -> Vector:
    """``value`` as a tuple of ``ndim`` finite floats (2 or 3 when ``ndim`` is None); ``positive`` for spacing.

    A single number is accepted for ``spacing`` (isotropic) when ``ndim`` is known.
    """
    array = _numbers(value, argument)
    what = f"{ndim}" if ndim else "2 or 3"
    if array.ndim == 0 and positive:
        array = np.full(ndim or 2, float(array))
    if array.ndim != 1 or array.size not in ((ndim,) if ndim else (2, 3)):
        raise ValueError(f"`{argument}` must hold {what} numbers in index order (x, y[, z]); got {value!r}")
    if not np.isfinite(array).all() or (positive and not (array > 0).all()):
        kind = "positive finite" if positive else "finite"
        raise ValueError(f"`{argument}` must hold {kind} numbers; got {tuple(array.tolist())}")
    return tuple(float(x) for x in array)


def check_direction(value: Any, ndim: int | None) -> Matrix:
    """``value`` as a d x d tuple of tuples whose columns are unit vectors and whose determinant is not zero.

    A flat sequence of d*d numbers (SimpleITK's ``GetDirection()``) is read row-major.
    """
    array = _numbers(value, "direction")
    sizes = (ndim,) if ndim else (2, 3)
    if array.ndim == 1 and array.size in [d * d for d in sizes]:
        d = math.isqrt(array.size)
        array = array.reshape(d, d)
    if array.ndim != 2 or array.shape[0] != array.shape[1] or array.shape[0] not in sizes:
        want = " or ".join(f"{d}x{d}" for d in sizes)
        raise ValueError(f"`direction` must be a {want} matrix (columns = index axes); got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("`direction` must be finite; it holds NaN or infinity")
    norms = np.linalg.norm(array, axis=0)
    if np.abs(norms - 1).max() > _UNIT_TOL:
        raise ValueError(
            f"`direction` must have unit columns (the voxel size goes in `spacing`); got column lengths "
            f"{tuple(round(float(n), 6) for n in norms)}"
        )
    det = float(np.linalg.det(array))
    if abs(det) < _SINGULAR_TOL:
        raise ValueError(f"`direction` must not be singular (its columns must span space); got determinant {det:.3g}")
    return tuple(tuple(float(x) for x in row) for row in array)


class VoxelData:
    """What an image and a series both say of the tensor they hold (``_data``): its shape, dtype and device."""

    __slots__ = ()
    _data: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        """``data.shape``: (ny, nx) or (nz, ny, nx) for an image, (T, nz, ny, nx) for a series."""
        return self._data.shape

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of ``data``."""
        return self._data.dtype

    @property
    def device(self) -> torch.device:
        """The device of ``data``."""
        return self._data.device


class Image(VoxelData):
    """A scalar image on a regular grid placed in LPS world space (see the module docstring for the convention).

    Args:
        data: ``(ny, nx)`` or ``(nz, ny, nx)`` real tensor; integer data become float32, float data are kept as
            given (dtype, device, storage: nothing is copied). NaN is allowed.
        spacing: voxel size in mm, (x, y[, z]); a single number means isotropic. Default all 1.
        origin: world position of the centre of voxel (0, 0[, 0]) in mm, (x, y[, z]). Default all 0.
        direction: d x d matrix (or d*d numbers, row-major) whose columns are the world directions of the index
            axes; unit columns, not singular (oblique and sheared grids are accepted). Default the identity.
        slice_z: for a 2-D image, the world z (mm) of its plane (an axial DICOM slice's position). Default 0.
        header: fields of the source file that writers keep (see :attr:`header`). Default none.

    Raises:
        TypeError: ``data`` is not a tensor, or is complex or boolean; a geometry argument does not hold numbers.
        ValueError: ``data`` is not 2-D or 3-D or is empty; a geometry argument has the wrong length, is not
            finite, a spacing is not positive, or the direction is not unit-columned or is singular.

    Example:
        >>> img = Image(torch.zeros(4, 5, 6), spacing=(1.0, 2.0, 3.0), origin=(10.0, 0.0, 0.0))
        >>> img.size, img.shape
        ((6, 5, 4), torch.Size([4, 5, 6]))
        >>> img.index_to_world(torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))
        tensor([11.,  2.,  3.], dtype=torch.float64)
    """

    __slots__ = ("_data", "_direction", "_header", "_origin", "_slice_z", "_spacing")

    def __init__(
        self,
        data: torch.Tensor,
        *,
        spacing: VectorLike | float | None = None,
        origin: VectorLike | None = None,
        direction: MatrixLike | None = None,
        slice_z: float = 0.0,
        header: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(data, torch.Tensor):
            raise TypeError(f"`data` must be a torch.Tensor (use torch.as_tensor); got {type(data).__name__}")
        if data.is_complex() or data.dtype == torch.bool:
            raise TypeError(f"`data` must hold real numbers; got {data.dtype}")
        if data.dim() not in (2, 3):
            raise ValueError(f"`data` must be 2-D (ny, nx) or 3-D (nz, ny, nx); got shape {tuple(data.shape)}")
        if data.numel() == 0:
            raise ValueError(f"`data` must not be empty; got shape {tuple(data.shape)}")
        if not data.is_floating_point():
            data = data.to(torch.float32)
        d = data.dim()
        self._data = data
        self._spacing = (1.0,) * d if spacing is None else check_vector(spacing, "spacing", d, positive=True)
        self._origin = (0.0,) * d if origin is None else check_vector(origin, "origin", d)
        identity = tuple(tuple(float(r == c) for c in range(d)) for r in range(d))
        self._direction = identity if direction is None else check_direction(direction, d)
        if isinstance(slice_z, bool) or not isinstance(slice_z, (int, float)) or not math.isfinite(slice_z):
            raise TypeError(f"`slice_z` must be a finite number (mm); got {slice_z!r}")
        if d != 2 and slice_z != 0:
            raise ValueError(f"`slice_z` places a 2-D image in the world; a {d}-D image has its own z (got {slice_z})")
        self._slice_z = float(slice_z)
        if header is not None and not isinstance(header, Mapping):
            raise TypeError(f"`header` must be a mapping of file fields or None; got {type(header).__name__}")
        self._header = dict(header or {})  # a plain dict (it pickles); read through a read-only view

    @classmethod
    def from_affine(cls, data: torch.Tensor, affine: Any) -> Image:
        """An image whose (d+1)x(d+1) ``affine`` maps the homogeneous index (i, j[, k], 1) to LPS world (mm).

        The spacing is the length of each of the affine's first d columns, the direction those columns normalised,
        the origin its last column.
        """
        a = _numbers(affine, "affine")
        d = data.dim() if isinstance(data, torch.Tensor) else 0
        if a.shape != (d + 1, d + 1):
            raise ValueError(f"`affine` must be {d + 1}x{d + 1} for {d}-D data; got shape {a.shape}")
        bottom = np.zeros(d + 1)
        bottom[-1] = 1
        if not np.allclose(a[-1], bottom, rtol=0, atol=1e-9):
            raise ValueError(f"`affine` must end in the row {tuple(bottom.tolist())}; got {tuple(a[-1].tolist())}")
        spacing = np.linalg.norm(a[:d, :d], axis=0)
        if not (spacing > 0).all():
            raise ValueError(f"`affine` must not have a zero column; got column lengths {tuple(spacing.tolist())}")
        try:
            return cls(data, spacing=spacing, origin=a[:d, d], direction=a[:d, :d] / spacing)
        except ValueError as exc:
            raise ValueError(f"`affine` does not describe a grid: {exc}") from None

    # --- read-only attributes -------------------------------------------------------------------------------
    @property
    def data(self) -> torch.Tensor:
        """The voxel values, ``(ny, nx)`` or ``(nz, ny, nx)``."""
        return self._data

    @property
    def slice_z(self) -> float:
        """For a 2-D image, the world z (LPS, mm) of the plane it lies in (an axial slice's position); 0 for 3-D."""
        return self._slice_z

    @property
    def header(self) -> Mapping[str, Any]:
        """Fields of the file the grid came from that a writer keeps (read-only; e.g. a NIfTI's ``sform_code`` and
        ``qform_code``). It travels with the grid: :meth:`with_data` and resampling onto this grid keep it."""
        return MappingProxyType(self._header)

    @property
    def spacing(self) -> Vector:
        """Voxel size in mm, index order (x, y[, z])."""
        return self._spacing

    @property
    def origin(self) -> Vector:
        """World position (LPS, mm) of the centre of the first voxel, index (0, 0[, 0])."""
        return self._origin

    @property
    def direction(self) -> Matrix:
        """d x d matrix, row-major; column c is the world direction of index axis c."""
        return self._direction

    @property
    def ndim(self) -> int:
        """The number of spatial dimensions d (2 or 3)."""
        return self._data.dim()

    @property
    def size(self) -> tuple[int, ...]:
        """The number of voxels along each index axis, (nx, ny[, nz]): ``shape`` reversed."""
        return tuple(reversed(self._data.shape))

    @property
    def affine(self) -> torch.Tensor:
        """(d+1)x(d+1) float64 CPU tensor mapping the homogeneous index (i, j[, k], 1) to world (LPS, mm)."""
        d = self.ndim
        a = torch.eye(d + 1, dtype=torch.float64)
        a[:d, :d] = self._scaled_direction()
        a[:d, d] = torch.tensor(self._origin, dtype=torch.float64)
        return a

    @property
    def center(self) -> Vector:
        """World position (LPS, mm) of the centre of the image extent: the index (n - 1) / 2 along each axis."""
        middle = torch.tensor([(n - 1) / 2 for n in self.size], dtype=torch.float64)
        return tuple(float(x) for x in self.index_to_world(middle))

    # --- coordinates ----------------------------------------------------------------------------------------
    def _scaled_direction(self) -> torch.Tensor:
        return torch.tensor(self._direction, dtype=torch.float64) * torch.tensor(self._spacing, dtype=torch.float64)

    def _points(self, value: Any, argument: str) -> torch.Tensor:
        t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
        if t.is_complex() or t.dtype == torch.bool or t.dim() == 0 or t.shape[-1] != self.ndim:
            raise ValueError(f"`{argument}` must be a real tensor of shape (..., {self.ndim}); got {_describe(t)}")
        return t

    def index_to_world(self, index: torch.Tensor) -> torch.Tensor:
        """World points (LPS, mm) of continuous indices: ``(..., d)`` in (i, j[, k]) order to ``(..., d)`` (x, y[, z]).

        Computed in float64; the result has the input's floating dtype (float64 for integer input) and device.
        """
        t = self._points(index, "index")
        out_dtype = t.dtype if t.is_floating_point() else torch.float64
        work = _work_dtype(t.device)
        m = self._scaled_direction().to(t.device, work)
        o = torch.tensor(self._origin, dtype=torch.float64).to(t.device, work)
        return (t.to(work) @ m.T + o).to(out_dtype)

    def world_to_index(self, points: torch.Tensor) -> torch.Tensor:
        """Continuous indices (i, j[, k]) of world points (LPS, mm): the inverse of :meth:`index_to_world`."""
        t = self._points(points, "points")
        out_dtype = t.dtype if t.is_floating_point() else torch.float64
        work = _work_dtype(t.device)
        inverse = torch.linalg.inv(self._scaled_direction()).to(t.device, work)
        o = torch.tensor(self._origin, dtype=torch.float64).to(t.device, work)
        return ((t.to(work) - o) @ inverse.T).to(out_dtype)

    def world_grid(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """World coordinates (LPS, mm; x, y[, z] order) of every voxel centre: a tensor of shape ``shape + (d,)``.

        ``grid[k, j, i]`` is the world point of index (i, j, k). On the data's device; dtype defaults to the data's.
        Each axis' contribution is computed in float64 and summed in ``dtype``.
        """
        dtype = dtype or self._data.dtype
        if not dtype.is_floating_point:
            raise TypeError(f"`dtype` must be a floating dtype; got {dtype}")
        d, device = self.ndim, self._data.device
        m = self._scaled_direction()
        grid = torch.tensor(self._origin, dtype=torch.float64).to(device, dtype).expand(*self.shape, d).clone()
        for axis, n in enumerate(self.shape):
            along = torch.arange(n, dtype=torch.float64)[:, None] * m[:, d - 1 - axis]  # (n, d)
            view = [1] * d + [d]
            view[axis] = n
            grid += along.to(device, dtype).reshape(view)
        return grid

    # --- new images -----------------------------------------------------------------------------------------
    def with_data(self, data: torch.Tensor) -> Image:
        """An image with the same geometry and new ``data`` of the same spatial shape."""
        if not isinstance(data, torch.Tensor) or data.shape != self.shape:
            raise ValueError(f"`data` must be a tensor of shape {tuple(self.shape)}; got {_describe(data)}")
        return Image(
            data,
            spacing=self._spacing,
            origin=self._origin,
            direction=self._direction,
            slice_z=self._slice_z,
            header=self._header,
        )

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Image:
        """The same image with its data converted to a floating ``dtype`` and/or moved to ``device``."""
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"`dtype` must be a floating dtype; got {dtype}")
        return self.with_data(self._data.to(device=device, dtype=dtype))

    def numpy(self) -> np.ndarray:
        """A NumPy copy of the data (bfloat16 and float16 become float32)."""
        data = self._data.detach()
        if data.dtype in (torch.bfloat16, torch.float16):
            data = data.to(torch.float32)
        return data.to("cpu", copy=True).numpy()

    def __repr__(self) -> str:
        def fmt(values: Vector) -> str:
            return "(" + ", ".join(f"{v + 0.0:.6g}" for v in values) + ")"  # + 0.0: no "-0"

        identity = all(
            abs(v - float(r == c)) < 1e-12 for r, row in enumerate(self._direction) for c, v in enumerate(row)
        )
        direction = "" if identity else ", direction=(" + ", ".join(fmt(row) for row in self._direction) + ")"
        device = "" if self.device.type == "cpu" else f", device={self.device}"
        device = (f", slice_z={self._slice_z:.6g}" if self._slice_z else "") + device
        size = "(" + ", ".join(str(n) for n in self.size) + ")"
        return (
            f"Image(size={size}, spacing={fmt(self._spacing)}, origin={fmt(self._origin)}{direction}, "
            f"dtype={str(self.dtype).removeprefix('torch.')}{device})"
        )


def _work_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
