"""Slices of a volume named by the world plane they show, laid out radiologically and drawn to scale."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from lossfit.plotting import _unit, checkerboard, plot_deformation, plot_registration, pyplot, world_slices
from lossfit.registration import Image

SHAPE = (5, 6, 7)  # (nz, ny, nx): every axis a different length, one of them even
SPACING = (0.5, 1.0, 3.0)  # (sx, sy, sz)


def volume(seed: int, **geometry: object) -> Image:
    generator = torch.Generator().manual_seed(seed)
    return Image(torch.rand(SHAPE, generator=generator), **geometry)  # type: ignore[arg-type]


def restored(image: Image, axes: tuple[int, int, int], flips: tuple[bool, bool, bool]) -> Image:
    """The same world object stored another way: new index axis a is old index axis ``axes[a]``, reversed where
    ``flips[a]``; direction columns, spacing and origin follow, so both images put every value at the same point."""
    old = torch.tensor(image.direction, dtype=torch.float64)
    size = image.size
    direction = torch.stack([old[:, axes[a]] * (-1 if flips[a] else 1) for a in range(3)], dim=1)
    corner = torch.tensor([size[a] - 1 if flips[axes.index(a)] else 0 for a in range(3)], dtype=torch.float64)
    data = image.data.permute(*(2 - axes[a] for a in (2, 1, 0)))
    data = data.flip([2 - a for a in range(3) if flips[a]])
    new = Image(
        data.contiguous(),
        spacing=tuple(image.spacing[axes[a]] for a in range(3)),
        origin=tuple(image.index_to_world(corner).tolist()),
        direction=direction,
    )
    # The premise of the tests that use it: every voxel of the new image holds the old image's value at its point.
    index = image.world_to_index(new.world_grid(torch.float64)).round().long()
    assert torch.equal(image.data[index[..., 2], index[..., 1], index[..., 0]], new.data)
    return new


def rotation_z(degrees: float) -> torch.Tensor:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def test_identity_volume_names_shapes_and_slices() -> None:
    image = volume(0)
    nz, ny, nx = SHAPE
    slices = world_slices(image)
    assert [s.name for s in slices] == ["axial", "coronal", "sagittal"]
    assert [tuple(s.data.shape) for s in slices] == [(ny, nx), (nz, nx), (nz, ny)]
    data = image.data
    assert torch.equal(slices[0].data, data[nz // 2])
    assert torch.equal(slices[1].data, data[:, ny // 2].flip(0))
    assert torch.equal(slices[2].data, data[:, :, nx // 2].flip(0))


def test_display_convention_puts_patient_sides_where_the_docstring_says() -> None:
    """Radiological: axial anterior top, patient right on the left; coronal superior top, right on the left;
    sagittal superior top, anterior on the left. LPS: small x is right, small y anterior, large z superior."""
    nz, ny, nx = SHAPE
    data = torch.zeros(SHAPE)
    data[nz // 2, 0, 0] = 1  # right, anterior, middle height
    data[nz - 1, ny // 2, 0] = 2  # right, middle, superior
    data[nz - 1, 0, nx // 2] = 3  # middle, anterior, superior
    axial, coronal, sagittal = world_slices(Image(data))
    assert axial.data[0, 0] == 1
    assert coronal.data[0, 0] == 2
    assert sagittal.data[0, 0] == 3


def test_sagittal_acquisition_shows_the_same_world_content() -> None:
    """A sagittal scan: i runs posterior, j inferior, k to the left. The same voxels, so the same panels."""
    image = volume(1, spacing=SPACING, origin=(-3.0, 4.0, 10.0))
    sagittal_scan = restored(image, axes=(1, 2, 0), flips=(False, True, False))
    assert sagittal_scan.shape != image.shape
    for ours, theirs in zip(world_slices(image), world_slices(sagittal_scan), strict=True):
        assert ours.name == theirs.name
        assert ours.aspect == pytest.approx(theirs.aspect)
        assert torch.equal(ours.data, theirs.data)


def test_flipped_axes_show_the_same_world_content() -> None:
    image = volume(2, spacing=SPACING)
    flipped = restored(image, axes=(0, 1, 2), flips=(True, True, True))  # e.g. a NIfTI whose affine reverses all
    assert [d[c] for c, d in enumerate(flipped.direction)] == [-1.0, -1.0, -1.0]
    for ours, theirs in zip(world_slices(image), world_slices(flipped), strict=True):
        assert ours.name == theirs.name
        assert torch.equal(ours.data, theirs.data)


@pytest.mark.parametrize("flips", list(itertools.product((False, True), repeat=3)))
@pytest.mark.parametrize("axes", list(itertools.permutations(range(3))))
def test_every_storage_order_shows_the_same_world_content(
    axes: tuple[int, int, int], flips: tuple[bool, bool, bool]
) -> None:
    image = volume(3, spacing=SPACING)
    other = restored(image, axes, flips)
    expected = world_slices(image)
    got = world_slices(other)
    assert [s.name for s in got] == ["axial", "coronal", "sagittal"]
    for ours, theirs in zip(expected, got, strict=True):
        assert ours.aspect == pytest.approx(theirs.aspect)
        assert torch.equal(ours.data, theirs.data)


def test_aspect_is_the_spacing_ratio_of_the_displayed_axes() -> None:
    sx, sy, sz = SPACING
    axial, coronal, sagittal = world_slices(volume(4, spacing=SPACING))
    assert axial.aspect == pytest.approx(sy / sx)  # rows along y, columns along x
    assert coronal.aspect == pytest.approx(sz / sx)  # rows along z, columns along x
    assert sagittal.aspect == pytest.approx(sz / sy)  # rows along z, columns along y
    (plane,) = world_slices(Image(torch.zeros(3, 4), spacing=(0.5, 2.0)))
    assert plane.name == ""
    assert plane.aspect == pytest.approx(4.0)


def test_oblique_volume_says_so_with_its_angle() -> None:
    names = [s.name for s in world_slices(volume(5, direction=rotation_z(30.0)))]
    assert names == ["oblique axial, 30° off axis", "oblique coronal, 30° off axis", "oblique sagittal, 30° off axis"]
    names = [s.name for s in world_slices(volume(5, direction=rotation_z(10.0)))]
    assert names == ["axial, 10° off axis", "coronal, 10° off axis", "sagittal, 10° off axis"]
    tilted = world_slices(Image(torch.zeros(4, 5), direction=rotation_z(30.0)[:2, :2]))
    assert tilted[0].name == "oblique, 30° off axis"


def test_a_45_degree_tie_still_gives_three_panels() -> None:
    slices = world_slices(volume(6, spacing=SPACING, direction=rotation_z(45.0)))
    assert [s.name.split(", ")[0] for s in slices] == ["oblique axial", "oblique coronal", "oblique sagittal"]
    assert all(s.data.dim() == 2 and "45°" in s.name for s in slices)
    (plane,) = world_slices(Image(torch.zeros(4, 5), direction=rotation_z(-45.0)[:2, :2]))
    assert plane.data.shape == (4, 5)


def test_world_slices_rejects_a_bare_tensor() -> None:
    with pytest.raises(TypeError, match=r"`image` must be a lossfit\.registration\.Image"):
        world_slices(torch.zeros(3, 4, 5))  # type: ignore[arg-type]


def test_checkerboard_tiles_are_square_in_mm() -> None:
    generator = torch.Generator().manual_seed(8)
    a, b = torch.rand(16, 32, generator=generator), torch.rand(16, 32, generator=generator)
    board = checkerboard(a, b, tiles=4, aspect=2.0)  # rows 2 mm, columns 1 mm: 32 mm square, 8 mm tiles
    first = (torch.arange(16)[:, None] // 4 + torch.arange(32)[None, :] // 8) % 2 == 0  # 4 rows = 8 columns = 8 mm
    assert torch.equal(board, torch.where(first, _unit(a), _unit(b)))
    assert torch.equal(checkerboard(a, b, tiles=4), checkerboard(a, b, tiles=4, aspect=1.0))
    with pytest.raises(ValueError, match="`aspect` must be a positive"):
        checkerboard(a, b, aspect=0.0)


@pytest.mark.parametrize("dims", [2, 3])
def test_plot_registration_returns_a_figure(dims: int) -> None:
    generator = torch.Generator().manual_seed(7)
    shape, spacing = ((12, 16), (0.7, 1.4)) if dims == 2 else ((6, 8, 10), (1.0, 1.0, 2.5))
    fixed = Image(torch.rand(shape, generator=generator), spacing=spacing)
    moving = fixed.with_data(torch.rand(shape, generator=generator))
    warped = fixed.with_data(torch.rand(shape, generator=generator))
    plt = pyplot()
    figure = plot_registration(fixed, moving, warped, "title")
    try:
        axes = figure.axes
        assert len(axes) == 4 * (1 if dims == 2 else 3)
        if dims == 3:
            assert "(axial)" in axes[0].get_title() and "(sagittal)" in axes[8].get_title()
            assert axes[8].get_ylabel() == "top S, left A"
    finally:
        plt.close(figure)


def test_plot_registration_rejects_images_off_the_fixed_grid() -> None:
    fixed = Image(torch.zeros(4, 5, 6))
    with pytest.raises(ValueError, match="`warped` must be on the fixed grid"):
        plot_registration(fixed, fixed, Image(torch.zeros(4, 5, 7)))


def _panels(figure, head: str) -> list:  # type: ignore[no-untyped-def,type-arg]
    return [ax for ax in figure.axes if ax.get_title().startswith(head)]


def _affine_field(image: Image) -> torch.Tensor:
    """A field given by world points alone: the same world mapping whatever order the voxels are stored in."""
    x = image.world_grid(torch.float64)
    linear = torch.tensor([[0.04, -0.03, 0.01], [0.02, 0.05, -0.02], [0.0, 0.03, -0.04]], dtype=torch.float64)
    return (x - torch.tensor(image.center)) @ linear.T + torch.tensor([0.7, -0.4, 1.1], dtype=torch.float64)


def test_deformed_grid_moves_lines_by_the_field_in_display_pixels() -> None:
    """A shift of 3 mm along x (towards the patient's left) moves the axial panel's vertical lines 3 / sx pixels to
    the right of the screen (the patient's left is on the right, radiological) and leaves the rows where they were."""
    image = volume(4, spacing=SPACING)
    shift = torch.zeros(*SHAPE, 3, dtype=torch.float64)
    shift[..., 0] = 3.0
    plt = pyplot()
    figure = plot_deformation(image, shift)
    try:
        axial = _panels(figure, "deformed grid")[0]
        horizontal = axial.lines[0]  # the first row's line
        cols = torch.arange(SHAPE[2], dtype=torch.float64)
        assert torch.allclose(torch.as_tensor(horizontal.get_xdata()), cols + 3.0 / SPACING[0])
        assert torch.allclose(torch.as_tensor(horizontal.get_ydata()), torch.zeros(SHAPE[2], dtype=torch.float64))
    finally:
        plt.close(figure)


@pytest.mark.parametrize(("axes", "flips"), [((0, 1, 2), (True, True, True)), ((1, 2, 0), (False, True, False)),
                                             ((2, 0, 1), (True, False, True))])  # fmt: skip
def test_deformation_figure_is_the_same_for_every_storage_order(
    axes: tuple[int, int, int], flips: tuple[bool, bool, bool]
) -> None:
    image = volume(5, spacing=SPACING)
    other = restored(image, axes, flips)
    plt = pyplot()
    ours, theirs = plot_deformation(image, _affine_field(image)), plot_deformation(other, _affine_field(other))
    try:
        for head in ("deformed grid", "Jacobian determinant"):
            for a, b in zip(_panels(ours, head), _panels(theirs, head), strict=True):
                assert a.get_title() == b.get_title()
                for la, lb in zip(a.lines, b.lines, strict=True):
                    assert np.allclose(la.get_xydata(), lb.get_xydata(), atol=1e-9)
                assert np.allclose(a.images[0].get_array(), b.images[0].get_array(), atol=1e-9)
    finally:
        plt.close(ours)
        plt.close(theirs)


def test_jacobian_panel_shows_the_determinant_and_marks_folds() -> None:
    """``u = 0.1 x`` stretches by 1.1 along both axes (determinant 1.21 everywhere);
    ``u = (-2 x, 0)`` mirrors x (determinant -1): the fold is drawn black on top."""
    image = Image(torch.rand(12, 16, generator=torch.Generator().manual_seed(6)), spacing=(0.7, 1.4))
    x = image.world_grid(torch.float64)
    plt = pyplot()
    mirror = torch.stack([-2.0 * x[..., 0], torch.zeros_like(x[..., 1])], dim=-1)
    figure, folded = plot_deformation(image, 0.1 * x), plot_deformation(image, mirror)
    try:
        (panel,) = _panels(figure, "Jacobian determinant")
        assert np.allclose(panel.images[0].get_array(), 1.21, atol=1e-9)  # 2-D: 1.1 ** 2
        assert len(panel.images) == 1
        (panel,) = _panels(folded, "Jacobian determinant")
        assert len(panel.images) == 2 and np.all(panel.images[1].get_array() == 1)
    finally:
        plt.close(figure)
        plt.close(folded)


def test_plot_deformation_rejects_a_field_off_the_grid() -> None:
    with pytest.raises(ValueError, match=r"`displacement` must be of shape \(4, 5, 6, 3\)"):
        plot_deformation(Image(torch.zeros(4, 5, 6)), torch.zeros(4, 5, 6, 2))
