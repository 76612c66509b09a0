"""Evaluating a registration: target registration error on landmarks, the displacement between two transforms, and
the quality of a dense displacement field (Jacobian determinant, folding, end-point error, inverse consistency) and
of the label maps it moves (Dice overlap).

Convention:
    A displacement field ``u`` is a floating tensor of shape ``(*grid.shape, d)`` on a ``grid`` (an :class:`Image`;
    ``grid.shape`` in data order, ``(ny, nx)`` or ``(nz, ny, nx)``). Its last axis holds the components in world axis
    order (x, y[, z]), in LPS mm. At the world point ``x`` of each voxel centre of ``grid`` it defines the mapping
    ``phi(x) = x + u(x)`` from fixed world to moving world: ITK's ``DisplacementFieldTransform``, in the layout of
    ``SimpleITK.GetArrayFromImage`` of that field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, cast

import numpy as np
import torch

from lossfit import transforms as T
from lossfit.registration.image import Image
from lossfit.registration.resample import resample, sample, world_to_normalized

_GEOMETRY_TOL = 1e-6  # ITK's default tolerance: origins within 1e-6 of a voxel, spacings and directions to 1e-6
_INSIDE_TOL = 1e-6  # a point is inside a grid when its normalised coordinates are within 1 + this (as resample)


def _matrix(value: Any, argument: str, d: int | None = None) -> torch.Tensor:
    m = torch.as_tensor(value, dtype=torch.float64)
    k = m.shape[0] if m.dim() == 2 else -1
    if m.dim() != 2 or m.shape[1] != k or k < 3 or (d is not None and k != d + 1):
        want = f"{d + 1}x{d + 1}" if d is not None else "a square (d+1)x(d+1)"
        raise ValueError(f"`{argument}` must be {want} matrix; got shape {tuple(m.shape)}")
    return m


def target_registration_error(matrix: Any, fixed_points: Any, moving_points: Any) -> torch.Tensor:
    """Distances (mm) between ``matrix`` applied to landmarks of the fixed image and the same landmarks located in
    the moving image: ``|| T x_i - y_i ||`` for ``fixed_points (N, d)`` and ``moving_points (N, d)`` in world (LPS)."""
    x = torch.as_tensor(fixed_points, dtype=torch.float64)
    y = torch.as_tensor(moving_points, dtype=torch.float64)
    if x.dim() != 2 or x.shape != y.shape:
        raise ValueError(
            f"`fixed_points` and `moving_points` must both be (N, d); got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    m = _matrix(matrix, "matrix", x.shape[1])
    return (T.apply(m, x) - y).norm(dim=-1)


def displacement(a: Any, b: Any, image: Image, mask: Any = None) -> dict[str, float]:
    """How far apart two transforms put the voxels of ``image`` (mm): the mean, 95th percentile and largest
    ``|| A x - B x ||`` over its voxel centres ``x`` (those where ``mask``, a boolean tensor of the image's shape or
    an Image, is true)."""
    ma, mb = _matrix(a, "a", image.ndim), _matrix(b, "b", image.ndim)
    points = image.world_grid(torch.float64).reshape(-1, image.ndim)
    keep = _mask(mask, image)
    if keep is not None:
        points = points[keep.reshape(-1).to(points.device)]
    dist = (T.apply(ma, points) - T.apply(mb, points)).norm(dim=-1)
    subset = dist if dist.numel() <= 1_000_000 else dist[:: dist.numel() // 1_000_000 + 1]
    return {"mean": float(dist.mean()), "p95": float(torch.quantile(subset, 0.95)), "max": float(dist.max())}


# --- dense displacement fields -----------------------------------------------------------------------------------
def jacobian_determinant(displacement: torch.Tensor, grid: Image) -> torch.Tensor:
    """The determinant of the Jacobian of ``phi(x) = x + u(x)`` at every voxel of ``grid``: ``det(I + du/dx)``.

    Args:
        displacement: ``u``, ``(*grid.shape, d)`` or a batch ``(B, *grid.shape, d)``; floating, world components
            (x, y[, z]) in LPS mm (see the module docstring).
        grid: the grid the field lives on; its spacing and direction turn index differences into world derivatives.

    Returns:
        ``grid.shape`` (or ``(B, *grid.shape)``), in ``displacement``'s dtype and on its device. Values below 1
        compress, above 1 expand, and ``<= 0`` fold (``phi`` is not invertible there). Differentiable in
        ``displacement``, so it can serve as a penalty.

    Raises:
        TypeError: ``grid`` is not an Image; ``displacement`` is not a floating tensor.
        ValueError: ``displacement`` does not have the shape above.

    Convention:
        The derivative is with respect to WORLD coordinates, by the chain rule through the grid: with
        ``M = direction @ diag(spacing)`` (the linear part of ``grid.affine``, index -> world), ``du/dx = G M^-1``
        where ``G[c, a] = du_c / d index_a``. ``G`` is a central difference ``(u[n+1] - u[n-1]) / 2`` inside and a
        one-sided difference at the first and last voxel of each axis; an axis of one voxel has no derivative (0).
        An affine field ``u(x) = A x + t`` thus gives ``det(I + A)`` at every voxel, the border included, whatever
        the grid's orientation and spacing. (SimpleITK's ``DisplacementFieldJacobianDeterminantFilter`` ignores the
        direction, taking ``G diag(spacing)^-1``, and halves the difference at the border.)

    Example:
        >>> import torch
        >>> from lossfit.registration import Image
        >>> grid = Image(torch.zeros(4, 5), spacing=(2.0, 0.5), direction=((0.0, 1.0), (1.0, 0.0)))
        >>> u = 0.1 * grid.world_grid(torch.float64)  # phi(x) = 1.1 x: a uniform 10 % stretch
        >>> det = jacobian_determinant(u, grid)
        >>> det.shape, round(det[0, 0].item(), 12), round(det[3, 4].item(), 12)
        (torch.Size([4, 5]), 1.21, 1.21)
    """
    _grid(grid, "grid")
    u = _field(displacement, grid, "displacement", batch=True)
    d = grid.ndim
    to_index = torch.linalg.inv(grid.affine[:d, :d]).to(u.device, u.dtype)  # M^-1: world -> index (linear part)
    eye = torch.eye(d, dtype=u.dtype, device=u.device)
    j = eye + _index_derivatives(u, d) @ to_index  # (..., d, d): [c, b] = delta_cb + du_c / dx_b
    if d == 2:
        return j[..., 0, 0] * j[..., 1, 1] - j[..., 0, 1] * j[..., 1, 0]
    return (
        j[..., 0, 0] * (j[..., 1, 1] * j[..., 2, 2] - j[..., 1, 2] * j[..., 2, 1])
        - j[..., 0, 1] * (j[..., 1, 0] * j[..., 2, 2] - j[..., 1, 2] * j[..., 2, 0])
        + j[..., 0, 2] * (j[..., 1, 0] * j[..., 2, 1] - j[..., 1, 1] * j[..., 2, 0])
    )


def folded_fraction(displacement: torch.Tensor, grid: Image, mask: Image | torch.Tensor | None = None) -> float:
    """The fraction of the voxels of ``grid`` (those inside ``mask``) where the field folds: Jacobian determinant
    (see :func:`jacobian_determinant`) ``<= 0``.

    Args:
        displacement: ``u``, ``(*grid.shape, d)``, world components in LPS mm.
        grid: the grid the field lives on.
        mask: ``grid.shape``, a tensor or an Image on ``grid``'s grid; its non-zero voxels count. Default all.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: a shape that does not fit ``grid``; a field holding NaN or infinity; a mask selecting no voxel.

    Example:
        >>> import torch
        >>> from lossfit.registration import Image
        >>> grid = Image(torch.zeros(8, 8))
        >>> x = grid.world_grid(torch.float64)
        >>> folded_fraction(-2.0 * x * torch.tensor([1.0, 0.0], dtype=torch.float64), grid)  # x -> -x: a mirror
        1.0
    """
    _grid(grid, "grid")
    u = _finite(_field(displacement, grid, "displacement"), "displacement")
    det = jacobian_determinant(u, grid)
    keep = _mask(mask, grid)
    values = det if keep is None else det[keep.to(det.device)]
    return float((values <= 0).sum()) / values.numel()


def end_point_error(
    displacement: torch.Tensor, truth: torch.Tensor, grid: Image, mask: Image | torch.Tensor | None = None
) -> dict[str, float]:
    """How far a field's end points are from the true ones (mm): ``|u(x) - truth(x)|`` at the voxels of ``grid``
    (those inside ``mask``), summarised as ``mean``, ``median``, ``p95`` (95th percentile) and ``max``.

    Args:
        displacement: ``u``, ``(*grid.shape, d)``, world components in LPS mm.
        truth: the true field, same shape and convention.
        grid: the grid both fields live on.
        mask: ``grid.shape``, a tensor or an Image on ``grid``'s grid; its non-zero voxels count. Default all.

    Percentiles interpolate linearly between order statistics (as ``numpy.percentile``); computed in float64.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: a shape that does not fit ``grid``; a field holding NaN or infinity; a mask selecting no voxel.

    Example:
        >>> import torch
        >>> from lossfit.registration import Image
        >>> grid = Image(torch.zeros(4, 4))
        >>> u = torch.zeros(4, 4, 2)
        >>> end_point_error(u, u + torch.tensor([3.0, 4.0]), grid)
        {'mean': 5.0, 'median': 5.0, 'p95': 5.0, 'max': 5.0}
    """
    _grid(grid, "grid")
    u = _finite(_field(displacement, grid, "displacement"), "displacement")
    t = _finite(_field(truth, grid, "truth"), "truth")
    error = (u.detach().double() - t.detach().double().to(u.device)).norm(dim=-1)
    keep = _mask(mask, grid)
    values = error.reshape(-1) if keep is None else error[keep.to(error.device)]
    return {
        "mean": float(values.mean()),
        "median": _quantile(values, 0.5),
        "p95": _quantile(values, 0.95),
        "max": float(values.max()),
    }


def inverse_consistency(
    forward: torch.Tensor,
    forward_grid: Image,
    inverse: torch.Tensor,
    inverse_grid: Image,
    mask: Image | torch.Tensor | None = None,
) -> dict[str, float]:
    """How far a field and its supposed inverse are from undoing each other (mm).

    Each voxel centre ``x`` of ``forward_grid`` goes to ``y = x + forward(x)``, then back to
    ``y + inverse(y)``, with ``inverse`` (a field on ``inverse_grid``, the moving grid) interpolated linearly at
    ``y``; the distance ``|y + inverse(y) - x|`` is summarised over the voxels (inside ``mask``) whose ``y`` lies on
    ``inverse_grid``.

    Args:
        forward: ``(*forward_grid.shape, d)``, world components in LPS mm.
        forward_grid: the grid of ``forward`` (the fixed grid).
        inverse: ``(*inverse_grid.shape, d)``, world components in LPS mm.
        inverse_grid: the grid of ``inverse`` (the moving grid).
        mask: ``forward_grid.shape``, a tensor or an Image on ``forward_grid``; its non-zero voxels count.

    Returns:
        ``mean``, ``p95`` (95th percentile) and ``max`` of the distance over the voxels counted, and ``outside``:
        the fraction of the voxels in ``mask`` whose ``y`` falls outside ``inverse_grid`` (left out of the
        others). When every ``y`` falls outside, ``outside`` is 1 and the others NaN.

    Convention:
        ``y`` is inside ``inverse_grid`` when its continuous index lies within ``[0, n-1]`` on every axis, as in
        :func:`lossfit.registration.resample` (an axis of one voxel takes the half voxel either side). Computed in
        float64.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: a shape that does not fit its grid; grids of different dimension; a field holding NaN or
            infinity; a mask selecting no voxel.

    Example:
        >>> import torch
        >>> from lossfit.registration import Image
        >>> grid = Image(torch.zeros(4, 4))
        >>> shift = torch.zeros(4, 4, 2, dtype=torch.float64)
        >>> shift[..., 0] = 1.0  # 1 mm along x: the last column of voxels moves off the grid
        >>> inverse_consistency(shift, grid, -shift, grid)
        {'mean': 0.0, 'p95': 0.0, 'max': 0.0, 'outside': 0.25}
    """
    _grid(forward_grid, "forward_grid")
    _grid(inverse_grid, "inverse_grid")
    if forward_grid.ndim != inverse_grid.ndim:
        raise ValueError(
            f"`forward_grid` and `inverse_grid` must have the same dimension; got {forward_grid.ndim}-D and "
            f"{inverse_grid.ndim}-D"
        )
    f = _finite(_field(forward, forward_grid, "forward"), "forward").detach().double()
    v = _finite(_field(inverse, inverse_grid, "inverse"), "inverse").detach().double().to(f.device)
    d = forward_grid.ndim
    x = forward_grid.world_grid(torch.float64).to(f.device).reshape(-1, d)
    keep = _mask(mask, forward_grid, "mask")
    if keep is not None:
        selected = keep.reshape(-1).to(f.device)
        x, f = x[selected], f.reshape(-1, d)[selected]
    y = x + f.reshape(-1, d)
    normalized = T.apply(world_to_normalized(inverse_grid).to(f.device), y)
    landed = (normalized.abs() <= 1 + _INSIDE_TOL).all(dim=-1)
    outside = 1.0 - float(landed.sum()) / landed.numel()
    if not bool(landed.any()):
        return {"mean": math.nan, "p95": math.nan, "max": math.nan, "outside": 1.0}
    volume = v.movedim(-1, 0).unsqueeze(0)  # (1, d, *inverse_grid.shape)
    back = sample(volume, normalized[landed].unsqueeze(0), "linear", padding="border")[0].T  # (N, d)
    dist = (y[landed] + back - x[landed]).norm(dim=-1)
    return {"mean": float(dist.mean()), "p95": _quantile(dist, 0.95), "max": float(dist.max()), "outside": outside}


# --- label maps --------------------------------------------------------------------------------------------------
def dice(a: Image, b: Image, labels: Iterable[int] | None = None) -> dict[int, float]:
    """The Dice overlap ``2 |A ∩ B| / (|A| + |B|)`` of each label of two label maps on the same grid.

    Args:
        a: a label map (integer values).
        b: a label map on the same grid as ``a`` (shape, spacing, origin, direction).
        labels: the labels to compare; default every non-zero label present in ``a`` or ``b``.

    Returns:
        ``{label: dice}`` in the order of ``labels`` (ascending by default). A label absent from both maps gets
        NaN (its overlap is undefined).

    Raises:
        TypeError: ``a`` or ``b`` is not an Image; ``labels`` does not hold integers.
        ValueError: the grids differ (geometry compared to ITK's tolerance, 1e-6 of a voxel); a map holds values
            that are not integers.

    Example:
        >>> import torch
        >>> from lossfit.registration import Image
        >>> a = Image(torch.tensor([[0, 1, 1, 2]]))
        >>> b = Image(torch.tensor([[1, 1, 0, 2]]))
        >>> dice(a, b)
        {1: 0.5, 2: 1.0}
    """
    _grid(a, "a")
    _grid(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"`a` and `b` must be on the same grid; got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    difference = _geometry_difference(a, b)
    if difference:
        raise ValueError(f"`a` and `b` must be on the same grid; their {difference}")
    la, lb = _label_values(a, "a"), _label_values(b, "b").to(a.device)
    wanted = _label_list(labels, la, lb)
    count_a, count_b = _counts(la), _counts(lb)
    count_both = _counts(la[la == lb])
    out = {}
    for label in wanted:
        total = count_a.get(label, 0) + count_b.get(label, 0)
        out[label] = 2.0 * count_both.get(label, 0) / total if total else math.nan
    return out


def warp_labels(labels: Image, reference: Image, displacement: torch.Tensor | None, matrix: Any = None) -> Image:
    """A label map moved onto ``reference``'s grid through a displacement field, by nearest-neighbour lookup (so the
    labels stay the integers they were; no new label appears).

    The output at a voxel of ``reference`` with world point ``x`` is the label of ``labels`` nearest to
    ``matrix @ (x + u(x))`` (0 outside ``labels``): :func:`lossfit.registration.resample` with
    ``interpolation="nearest"``.

    Args:
        labels: the label map (integer values) on the moving grid.
        reference: the output grid (the fixed grid, that of the field).
        displacement: ``u``, ``(*reference.shape, d)``, world components in LPS mm; None for none.
        matrix: ``(d+1, d+1)``, applied after the field (reference world -> labels world); the identity when None.

    Returns:
        An Image on ``reference``'s grid with ``labels``'s dtype.

    Raises:
        TypeError: ``labels`` or ``reference`` is not an Image; ``displacement`` is not a floating tensor.
        ValueError: ``labels`` holds values that are not integers; shapes that do not fit.

    Example:
        >>> import torch
        >>> from lossfit.registration import Image
        >>> labels = Image(torch.tensor([[0, 1, 2, 3]]))
        >>> u = torch.zeros(1, 4, 2)
        >>> u[..., 0] = 1.2  # each voxel takes the label 1.2 mm to its right: the nearest is 1 voxel on
        >>> warp_labels(labels, labels, u).data
        tensor([[1., 2., 3., 0.]])
    """
    _grid(labels, "labels")
    _grid(reference, "reference")
    _label_values(labels, "labels")
    if labels.ndim != reference.ndim:
        raise ValueError(f"`labels` is {labels.ndim}-D but `reference` is {reference.ndim}-D")
    u = None if displacement is None else _field(displacement, reference, "displacement")
    return cast(Image, resample(labels, reference, matrix, interpolation="nearest", displacement=u))


# --- helpers -----------------------------------------------------------------------------------------------------
def _grid(value: Any, argument: str) -> None:
    if not isinstance(value, Image):
        raise TypeError(f"`{argument}` must be a lossfit.registration.Image; got {type(value).__name__}")


def _field(value: Any, grid: Image, argument: str, *, batch: bool = False) -> torch.Tensor:
    """``value`` checked to be a floating ``(*grid.shape, d)`` tensor (or ``(B, *grid.shape, d)`` with ``batch``)."""
    want = (*grid.shape, grid.ndim)
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        got = f"a {value.dtype} tensor" if isinstance(value, torch.Tensor) else type(value).__name__
        raise TypeError(f"`{argument}` must be a floating torch.Tensor of shape {want}; got {got}")
    shape = tuple(value.shape)
    if shape != want and not (batch and len(shape) == len(want) + 1 and shape[1:] == want):
        also = f" or (B, *{want})" if batch else ""
        raise ValueError(
            f"`{argument}` must have shape {want}{also} (the grid's shape {tuple(grid.shape)}, then {grid.ndim} "
            f"world components x, y[, z]); got {shape}"
        )
    return value


def _finite(u: torch.Tensor, argument: str) -> torch.Tensor:
    if not bool(torch.isfinite(u).all()):
        raise ValueError(f"`{argument}` must be finite; it holds NaN or infinity")
    return u


def _mask(mask: Any, grid: Image, argument: str = "mask") -> torch.Tensor | None:
    """``mask`` (None, a tensor or array of ``grid.shape``, or an Image on ``grid``) as a boolean tensor, non-zero
    inside; ``ValueError`` when it selects no voxel."""
    if mask is None:
        return None
    if isinstance(mask, Image):
        if mask.shape == grid.shape:
            difference = _geometry_difference(mask, grid)
            if difference:
                raise ValueError(f"`{argument}` must lie on the grid it masks; their {difference}")
        values = mask.data
    else:
        try:
            values = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
        except Exception:
            raise TypeError(f"`{argument}` must be a tensor or an Image; got {type(mask).__name__}") from None
        if values.is_complex():
            raise TypeError(f"`{argument}` must hold booleans or real numbers; got {values.dtype}")
    if values.shape != grid.shape:
        raise ValueError(f"`{argument}` must have the image's shape {tuple(grid.shape)}; got {tuple(values.shape)}")
    keep = values if values.dtype == torch.bool else values != 0
    if not bool(keep.any()):
        raise ValueError(f"`{argument}` selects no voxel")
    return keep


def _geometry_difference(a: Image, b: Image) -> str:
    """What differs between the geometry of two grids of the same shape ("" when they agree to ITK's tolerance)."""
    spacing_a, spacing_b = np.array(a.spacing), np.array(b.spacing)
    if np.abs(spacing_a - spacing_b).max() > _GEOMETRY_TOL * spacing_a.min():
        return f"spacings differ: {a.spacing} and {b.spacing}"
    if np.abs(np.array(a.origin) - np.array(b.origin)).max() > _GEOMETRY_TOL * spacing_a.min():
        return f"origins differ: {a.origin} and {b.origin}"
    if np.abs(np.array(a.direction) - np.array(b.direction)).max() > _GEOMETRY_TOL:
        return f"directions differ: {a.direction} and {b.direction}"
    if a.ndim == 2 and abs(a.slice_z - b.slice_z) > _GEOMETRY_TOL * spacing_a.min():
        return f"planes differ: slice_z {a.slice_z} and {b.slice_z}"
    return ""


def _label_values(image: Image, argument: str) -> torch.Tensor:
    """The labels of ``image`` as an int64 tensor; ``ValueError`` when a value is not an integer."""
    data = image.data.detach()
    if not bool((torch.isfinite(data) & (data == torch.round(data))).all()):
        raise ValueError(f"`{argument}` must hold integer labels; it holds non-integer values (or NaN)")
    return data.to(torch.int64)


def _label_list(labels: Iterable[int] | None, a: torch.Tensor, b: torch.Tensor) -> list[int]:
    if labels is None:
        present = torch.unique(torch.cat([a.reshape(-1), b.reshape(-1)]))
        return [int(label) for label in present.tolist() if label != 0]
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable):
        raise TypeError(f"`labels` must be a sequence of integers or None; got {type(labels).__name__}")
    out = []
    for label in labels:
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
            raise TypeError(f"`labels` must hold integers; got {label!r} ({type(label).__name__})")
        out.append(int(label))
    return out


def _counts(values: torch.Tensor) -> dict[int, int]:
    unique, counts = torch.unique(values, return_counts=True)
    return dict(zip(unique.tolist(), counts.tolist(), strict=True))


def _index_derivatives(u: torch.Tensor, d: int) -> torch.Tensor:
    """``(..., *spatial, d)`` -> ``(..., *spatial, d, d)``: ``[..., c, a] = du_c / d index_a`` (index axis a is data
    axis d - 1 - a); central differences inside, one-sided at the ends, 0 along an axis of one voxel."""
    columns = []
    for a in range(d):
        dim = u.dim() - 2 - a
        n = u.shape[dim]
        if n == 1:
            columns.append(torch.zeros_like(u))
            continue
        first = u.narrow(dim, 1, 1) - u.narrow(dim, 0, 1)
        inner = (u.narrow(dim, 2, n - 2) - u.narrow(dim, 0, n - 2)) * 0.5
        last = u.narrow(dim, n - 1, 1) - u.narrow(dim, n - 2, 1)
        columns.append(torch.cat([first, inner, last], dim=dim))
    return torch.stack(columns, dim=-1)


def _quantile(values: torch.Tensor, q: float) -> float:
    """The ``q`` quantile of a 1-D tensor, interpolating linearly between order statistics (``numpy.percentile``'s
    default); exact at any size (``torch.quantile`` refuses more than 2**24 values)."""
    ordered = values.reshape(-1).sort().values
    position = q * (ordered.numel() - 1)
    low = math.floor(position)
    high = min(low + 1, ordered.numel() - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))
