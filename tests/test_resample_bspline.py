"""Cubic B-spline resampling (``interpolation="bspline"``): it interpolates, reproduces polynomials, agrees with a
direct 4-taps-per-axis evaluation and with SimpleITK's ``sitkBSpline``, has checked gradients, rejects bad names."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from lossfit.registration import Image, resample
from lossfit.registration.resample import bspline_coefficients
from lossfit.transforms import apply as map_points

Z = math.sqrt(3) - 2  # the prefilter's pole: the mirror boundary's effect shrinks by |Z| a voxel inwards


def smooth_random(shape: tuple[int, ...], rng: np.random.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Normal noise averaged over 3 voxels along every axis: smooth-ish, with structure at every voxel."""
    data = torch.from_numpy(rng.standard_normal(shape))
    if min(shape) < 3:
        return data.to(dtype)
    pool = torch.nn.functional.avg_pool2d if len(shape) == 2 else torch.nn.functional.avg_pool3d
    return pool(data[None, None], 3, 1, 1, count_include_pad=False)[0, 0].to(dtype)


def rotation(rng: np.random.Generator, d: int, size: float) -> np.ndarray:
    """A random rotation, each angle up to ``size`` radians."""
    if d == 2:
        a = rng.uniform(-size, size)
        return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    r = np.eye(3)
    for axis, a in enumerate(rng.uniform(-size, size, size=3)):
        i, j = [k for k in range(3) if k != axis]
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = math.cos(a), -math.sin(a), math.sin(a), math.cos(a)
        r = m @ r
    return r


def random_image(
    rng: np.random.Generator, shape: tuple[int, ...], dtype: torch.dtype = torch.float64, spacing: float = 1.0
) -> Image:
    """Smooth-ish random data on a grid with anisotropic spacing, an origin and an oblique direction (one axis
    flipped)."""
    d = len(shape)
    direction = rotation(rng, d, 0.45) @ np.diag([1.0] * (d - 1) + [-1.0])
    return Image(
        smooth_random(shape, rng, dtype),
        spacing=tuple(spacing * rng.uniform(0.6, 2.0, size=d)),
        origin=tuple(rng.uniform(-40, 40, size=d)),
        direction=direction,
    )


def centred_grid(rng: np.random.Generator, image: Image, shape: tuple[int, ...], fraction: float) -> Image:
    """An empty grid of ``shape`` with an oblique direction of its own, centred on ``image``'s centre, each of its
    sides ``fraction`` of ``image``'s shortest side (mm)."""
    side = min(s * (n - 1) for s, n in zip(image.spacing, image.size, strict=True))
    size = tuple(reversed(shape))  # (nx, ny[, nz])
    spacing = tuple(fraction * side / (n - 1) for n in size)
    direction = rotation(rng, image.ndim, 0.45)
    grid = Image(torch.zeros(shape, dtype=image.dtype), spacing=spacing, direction=direction)
    return Image(
        grid.data, spacing=spacing, origin=tuple(np.array(image.center) - np.array(grid.center)), direction=direction
    )


def about(image: Image, linear: np.ndarray, shift: np.ndarray) -> torch.Tensor:
    """The world matrix ``y = A (x - c) + c + t`` about ``image``'s centre ``c``."""
    d = image.ndim
    c = np.array(image.center)
    m = np.eye(d + 1)
    m[:d, :d] = linear
    m[:d, d] = c - linear @ c + shift
    return torch.from_numpy(m)


def random_affine(rng: np.random.Generator, image: Image, scale: float = 1.0, shift: float = 3.0) -> torch.Tensor:
    """Turning about ``image``'s centre by up to ~8 degrees an axis, scaling and shearing by up to 6% (then by
    ``scale``), shifting by up to ``shift`` mm along each axis."""
    d = image.ndim
    linear = rotation(rng, d, 0.14) @ (np.eye(d) + rng.uniform(-0.06, 0.06, size=(d, d))) * scale
    return about(image, linear, rng.uniform(-shift, shift, size=d))


def source_index(image: Image, reference: Image, matrix: torch.Tensor) -> torch.Tensor:
    """The continuous index (i, j[, k]) in ``image`` that each reference voxel samples: ``reference.shape + (d,)``."""
    points = reference.world_grid(torch.float64).reshape(-1, reference.ndim)
    index = image.world_to_index(map_points(matrix.to(torch.float64), points))
    return index.reshape(*reference.shape, reference.ndim)


def depth(image: Image, index: torch.Tensor) -> np.ndarray:
    """How far (voxels) each continuous index lies inside ``[0, n-1]``, the nearest edge deciding (< 0 outside)."""
    last = torch.tensor(image.size, dtype=torch.float64) - 1
    return torch.minimum(index, last - index).amin(dim=-1).numpy()


def lookup_atol(image: Image) -> float:
    """What rounding costs a B-spline lookup: a point's position in ``grid_sample``'s normalised coordinates is
    rounded to the dtype's epsilon, ``(n + 3) / 2`` voxels of the padded coefficients, times the largest step
    between neighbouring coefficients (at most twice their largest size, which is at most 3 times the data's: the
    prefilter's gain, ``sqrt(3) (1 + |Z|) / (1 - |Z|) = 3``); a few such roundings add up (factor 2)."""
    eps = torch.finfo(image.dtype).eps
    return eps * (max(image.size) + 3) / 2 * 6 * 2 * float(image.data.abs().max())


def assert_mask(valid: torch.Tensor, depth_inside: np.ndarray) -> None:
    """``valid`` is ``depth >= 0``, wherever a point is not within 1e-6 voxel of the edge (where the mask's own
    tolerance for rounding decides)."""
    decided = np.abs(depth_inside) > 1e-6
    np.testing.assert_array_equal(valid.numpy()[decided], depth_inside[decided] >= 0)


def mirror(k: np.ndarray, n: int) -> np.ndarray:
    """Indices folded into ``[0, n-1]`` by the whole-sample mirror (``f[-k] = f[k]``, ``f[n-1+k] = f[n-1-k]``)."""
    if n == 1:
        return np.zeros_like(k)
    k = np.mod(k, 2 * (n - 1))
    return np.where(k > n - 1, 2 * (n - 1) - k, k)


def direct_bspline(data: torch.Tensor, index: np.ndarray) -> np.ndarray:
    """The cubic B-spline interpolant of ``data`` at continuous indices ``(N, d)`` (i, j[, k]), written out: the
    4 weights and 4 mirrored coefficients per axis, every one of the 4 ** d products summed."""
    c = bspline_coefficients(data.to(torch.float64)).numpy()
    d = c.ndim
    sizes = list(reversed(c.shape))  # (nx, ny[, nz])
    weights, taps = [], []
    for axis in range(d):
        base = np.floor(index[:, axis])
        t = index[:, axis] - base
        weights.append(
            [(1 - t) ** 3 / 6, (3 * t**3 - 6 * t**2 + 4) / 6, (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6, t**3 / 6]
        )
        taps.append([mirror(base.astype(int) + o, sizes[axis]) for o in (-1, 0, 1, 2)])
    out = np.zeros(len(index))
    for combination in itertools.product(range(4), repeat=d):
        w = np.prod([weights[axis][o] for axis, o in enumerate(combination)], axis=0)
        at = tuple(taps[axis][o] for axis, o in reversed(list(enumerate(combination))))  # data order: last axis first
        out += w * c[at]
    return out


def to_sitk(image: Image):  # type: ignore[no-untyped-def]
    import SimpleITK as sitk

    s = sitk.GetImageFromArray(image.numpy())
    s.SetSpacing(image.spacing)
    s.SetOrigin(image.origin)
    s.SetDirection(tuple(v for row in image.direction for v in row))
    return s


# ---------------------------------------------------------------------------------------------------------------
# The spline


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(13, 17), (7, 9, 11), (1, 6), (2, 5, 3)])
def test_the_spline_passes_through_the_voxel_values(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    rng = np.random.default_rng(10)
    image = random_image(rng, shape, dtype)
    out = resample(image, image, interpolation="bspline")
    assert isinstance(out, Image)
    assert out.dtype == dtype
    torch.testing.assert_close(out.data, image.data, rtol=0, atol=lookup_atol(image))


@pytest.mark.parametrize("n", [1, 2, 3, 8, 41])
def test_the_coefficients_solve_the_mirrored_system(n: int) -> None:
    rng = np.random.default_rng(11 + n)
    f = torch.from_numpy(rng.standard_normal((n, 4)))
    c = bspline_coefficients(f)
    assert c.shape == f.shape
    rows = torch.from_numpy(mirror(np.arange(-1, n + 1), n))
    mirrored = c[rows]  # c[-1] = c[1], c[n] = c[n-2]
    along_rows = (mirrored[:-2] + 4 * mirrored[1:-1] + mirrored[2:]) / 6 if n > 1 else c
    cols = torch.from_numpy(mirror(np.arange(-1, 5), 4))
    mirrored = along_rows[:, cols]
    spline = (mirrored[:, :-2] + 4 * mirrored[:, 1:-1] + mirrored[:, 2:]) / 6
    torch.testing.assert_close(spline, f, rtol=0, atol=1e-13 * float(f.abs().max()))
    # with margins: the mirrored coefficients themselves
    padded = bspline_coefficients(f, 2)
    assert padded.shape == (n + 4, 8)
    expected = c[torch.from_numpy(mirror(np.arange(-2, n + 2), n))][:, torch.from_numpy(mirror(np.arange(-2, 6), 4))]
    torch.testing.assert_close(padded, expected, rtol=0, atol=1e-13 * float(c.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("projective", [False, True])
@pytest.mark.parametrize("shape", [(23, 19), (9, 12, 10)])
def test_the_merged_lookups_equal_the_written_out_spline(
    shape: tuple[int, ...], projective: bool, dtype: torch.dtype
) -> None:
    """Every output voxel inside the image, the border included, against :func:`direct_bspline`; the output grid
    differs from the input's (finer, turned), so the points fall anywhere within the voxels."""
    rng = np.random.default_rng(20 + len(shape) + 2 * projective)
    image = random_image(rng, shape, dtype)
    reference = centred_grid(rng, image, tuple(int(1.3 * n) for n in shape), 1.1)
    matrix = random_affine(rng, image)
    if projective:
        d = image.ndim
        matrix[d, :d] = torch.from_numpy(rng.uniform(-3e-3, 3e-3, size=d))
        matrix[d, d] = 1 - float(matrix[d, :d] @ torch.tensor(image.center, dtype=torch.float64))
    out, valid = resample(image, reference, matrix, interpolation="bspline", mask=True)
    assert isinstance(out, Image)
    index = source_index(image, reference, matrix)
    assert_mask(valid, depth(image, index))
    inside = valid.numpy()
    assert 0.2 * inside.size < inside.sum() < inside.size  # inside points, and some outside
    expected = direct_bspline(image.data, index.reshape(-1, image.ndim).numpy()).reshape(reference.shape)
    np.testing.assert_allclose(out.data.numpy()[inside], expected[inside], rtol=0, atol=lookup_atol(image))
    assert (out.data.numpy()[~inside] == 0).all()


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_polynomials_up_to_cubic_are_reproduced_away_from_the_border(degree: int) -> None:
    """On an unbounded grid a cubic B-spline interpolant reproduces polynomials of degree <= 3. The mirror breaks
    this near the edges (a mirrored ramp is a triangle wave), by an amount shrinking as ``|Z| ** k`` ``k`` voxels
    in: checked at least 14 voxels in, where ``|Z| ** 14 = 1e-8``."""
    rng = np.random.default_rng(30 + degree)
    coefficients = rng.uniform(-1, 1, size=(3, degree + 1))  # a polynomial along each world axis

    def poly(points: torch.Tensor) -> torch.Tensor:  # world points (..., 3)
        u = (points - torch.tensor([5.0, -3.0, 2.0], dtype=torch.float64)) / 30.0  # of order 1 over the image
        terms = (float(a) * u[..., axis] ** p for axis in range(3) for p, a in enumerate(coefficients[axis]))
        return sum(terms, torch.zeros(points.shape[:-1], dtype=torch.float64))

    grid = Image(torch.zeros(44, 48, 46, dtype=torch.float64), spacing=(1.2, 0.9, 1.1), origin=(5.0, -3.0, 2.0))
    image = grid.with_data(poly(grid.world_grid()))
    reference = centred_grid(rng, image, (6, 7, 8), 0.15)  # a small oblique grid at the image's centre
    matrix = random_affine(rng, image, shift=1.0)
    out = resample(image, reference, matrix, interpolation="bspline")
    assert isinstance(out, Image)
    index = source_index(image, reference, matrix)
    assert depth(image, index).min() >= 14
    points = image.index_to_world(index)
    scale = float(image.data.abs().max())
    torch.testing.assert_close(out.data, poly(points), rtol=0, atol=10 * abs(Z) ** 14 * scale)


# ---------------------------------------------------------------------------------------------------------------
# Against SimpleITK


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(40, 47), (21, 26, 30)])
def test_bspline_resampling_agrees_with_simpleitk(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """ITK approximates the prefilter's boundary sums (to 1e-10); beyond that the two agree at every point inside,
    the border voxels included. ITK also samples the half voxel beyond the first and last voxel centres (with the
    same mirrored spline); lossfit gives ``default`` there, as for its other interpolations."""
    sitk = pytest.importorskip("SimpleITK")
    rng = np.random.default_rng(40 + len(shape))
    image = random_image(rng, shape, dtype)
    reference = centred_grid(rng, image, tuple(int(1.1 * n) for n in shape), 0.9)
    matrix = random_affine(rng, image)
    d = image.ndim
    ours, valid = resample(image, reference, matrix, interpolation="bspline", default=-9.0, mask=True)
    assert isinstance(ours, Image)

    transform = sitk.AffineTransform(d)  # also output world -> input world
    transform.SetMatrix(matrix[:d, :d].reshape(-1).tolist())
    transform.SetTranslation(matrix[:d, d].tolist())
    theirs = sitk.GetArrayFromImage(sitk.Resample(to_sitk(image), to_sitk(reference), transform, sitk.sitkBSpline))

    inside = depth(image, source_index(image, reference, matrix))
    got = ours.data.numpy()
    scale = float(image.data.abs().max())
    atol = max(lookup_atol(image), 1e-9 * scale)  # ITK truncates its prefilter's boundary sums at 1e-10
    interior, border, beyond = inside >= 2, (inside >= 0) & (inside < 2), (inside < 0) & (inside >= -0.5)
    assert interior.sum() > 0.3 * interior.size and border.sum() > 50 and beyond.sum() >= 5
    np.testing.assert_allclose(got[interior], theirs[interior], rtol=0, atol=atol)
    np.testing.assert_allclose(got[border], theirs[border], rtol=0, atol=atol)
    assert_mask(valid, inside)
    assert (got[beyond] == -9.0).all()


# ---------------------------------------------------------------------------------------------------------------
# Gradients, outside points, errors


@pytest.mark.parametrize("projective", [False, True])
def test_bspline_gradients_in_the_data_and_the_matrix(projective: bool) -> None:
    rng = np.random.default_rng(50 + projective)
    image = random_image(rng, (8, 9))
    reference = centred_grid(rng, image, (6, 7), 0.5)
    matrix = random_affine(rng, image, scale=0.7)
    if projective:
        matrix[2, :2] = torch.from_numpy(rng.uniform(-5e-3, 5e-3, size=2))
        matrix[2, 2] = 1 - float(matrix[2, :2] @ torch.tensor(image.center, dtype=torch.float64))
    assert depth(image, source_index(image, reference, matrix)).min() > 0.2  # no sample crosses the image's edge

    def of_data(data: torch.Tensor) -> torch.Tensor:
        out = resample(image.with_data(data), reference, matrix, interpolation="bspline")
        assert isinstance(out, Image)
        return out.data

    # an affine matrix takes the affine path, which reads only the top rows: perturb those (all of a projective one)
    rows = 3 if projective else 2

    def of_matrix(top: torch.Tensor) -> torch.Tensor:
        out = resample(image, reference, torch.cat([top, matrix[rows:]]), interpolation="bspline")
        assert isinstance(out, Image)
        return out.data

    assert torch.autograd.gradcheck(of_data, (image.data.clone().requires_grad_(True),), eps=1e-6, atol=1e-7)
    top = matrix[:rows].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(of_matrix, (top,), eps=1e-6, atol=1e-6)


def test_bspline_gradient_in_a_3d_matrix_and_in_float32() -> None:
    rng = np.random.default_rng(52)
    image = random_image(rng, (6, 7, 8))
    reference = centred_grid(rng, image, (3, 4, 5), 0.5)  # 60 outputs: a backward pass each
    matrix = random_affine(rng, image, scale=0.6)
    assert depth(image, source_index(image, reference, matrix)).min() > 0.2

    def of_matrix(top: torch.Tensor) -> torch.Tensor:
        out = resample(image, reference, torch.cat([top, matrix[3:]]), interpolation="bspline")
        assert isinstance(out, Image)
        return out.data

    assert torch.autograd.gradcheck(of_matrix, (matrix[:3].clone().requires_grad_(True),), eps=1e-6, atol=1e-6)

    # float32 data: the gradients reach the data and the matrix, and agree with float64's to float32 precision
    grads = []
    for dtype in (torch.float32, torch.float64):
        data = image.data.to(dtype).requires_grad_(True)
        m = matrix.clone().requires_grad_(True)
        out = resample(image.with_data(data), reference, m, interpolation="bspline")
        assert isinstance(out, Image)
        out.data.square().sum().backward()
        assert data.grad is not None and m.grad is not None
        grads.append((data.grad.double(), m.grad))
    for got, expected in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4 * float(expected.abs().max()))


def test_points_outside_get_the_default_and_the_mask_says_so() -> None:
    rng = np.random.default_rng(60)
    image = random_image(rng, (10, 12))
    matrix = random_affine(rng, image, scale=1.6)  # a larger field of view: many points fall outside
    out, valid = resample(image, image, matrix, interpolation="bspline", default=float("nan"), mask=True)
    assert isinstance(out, Image)
    assert_mask(valid, depth(image, source_index(image, image, matrix)))
    assert 0.2 * valid.numel() < int(valid.sum()) < 0.8 * valid.numel()
    assert bool(torch.isnan(out.data[~valid]).all()) and bool(torch.isfinite(out.data[valid]).all())


def test_a_bad_interpolation_name_is_rejected_naming_the_choices() -> None:
    image = Image(torch.zeros(4, 5))
    with pytest.raises(
        ValueError, match=r"`interpolation` must be one of \('linear', 'nearest', 'bspline'\); got 'cubic'"
    ):
        resample(image, image, interpolation="cubic")
