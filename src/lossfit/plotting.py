"""Convergence plots (matplotlib, drawn off-screen)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

if TYPE_CHECKING:
    from lossfit.registration.image import Image


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_history(result: Any, ax: Any = None, label: str | None = None) -> Any:
    """Draw a result's loss per step on a log scale; returns the axes. Batches draw their largest loss per step."""
    plt = pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    history = result.history
    if history is None or len(history) == 0:
        raise ValueError("this result has no history to plot (it was run with `history=False` or took no steps)")
    loss = history.loss if history.loss.ndim == 1 else torch.nan_to_num(history.loss, nan=0.0).amax(dim=1)
    steps = torch.arange(len(loss))
    positive = loss.clamp_min(torch.finfo(loss.dtype).tiny)
    ax.plot(steps.numpy(), positive.detach().cpu().numpy(), label=label or result.solver.name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, which="both", alpha=0.3)
    return ax


def plot_comparison(results: Mapping[str, Any], title: str = "") -> Any:
    """Loss against step and against time for several results, one line each; returns the figure."""
    plt = pyplot()
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, result in results.items():
        loss = result.history.loss.clamp_min(torch.finfo(result.history.loss.dtype).tiny).detach().cpu()
        steps = torch.arange(1, len(loss) + 1)
        by_step.plot(steps.numpy(), loss.numpy(), label=label)
        by_time.plot(result.history.time.numpy() * 1e3, loss.numpy(), label=label)
    by_step.set_xscale("log")
    by_step.set_xlabel("step")
    by_time.set_xscale("log")
    by_time.set_xlabel("time (ms)")
    for ax in (by_step, by_time):
        ax.set_yscale("log")
        ax.set_ylabel("loss")
        ax.grid(True, which="both", alpha=0.3)
    by_step.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_alignment(src: torch.Tensor, dst: torch.Tensor, mapped: torch.Tensor, inliers: Any, ax: Any) -> Any:
    """Destination points (inliers dots, outliers crosses) and the source points mapped by the fit (rings).

    3-D points are drawn by their first two coordinates (x, y)."""
    d, m = dst.detach().cpu().double(), mapped.detach().cpu().double()
    keep = torch.ones(len(d), dtype=torch.bool) if inliers is None else inliers.detach().cpu().reshape(-1).bool()
    ax.scatter(d[keep, 0].numpy(), d[keep, 1].numpy(), s=16, label="destination")
    if not bool(keep.all()):
        ax.scatter(d[~keep, 0].numpy(), d[~keep, 1].numpy(), s=22, marker="x", label="treated as outliers")
    ax.scatter(m[:, 0].numpy(), m[:, 1].numpy(), s=40, facecolors="none", edgecolors="k", label="source, mapped")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x" if src.shape[1] == 2 else "x (3-D points: first two coordinates)")
    ax.set_ylabel("y")
    ax.legend(fontsize=7)
    return ax


def plot_data_fit(x: torch.Tensor | None, y: torch.Tensor, fitted: torch.Tensor, ax: Any) -> Any:
    """The data and the fitted values: against ``x`` for one explanatory column (the fit as a line), otherwise
    fitted against observed with the identity line."""
    yy, ff = y.detach().cpu().double().reshape(-1), fitted.detach().cpu().double().reshape(-1)
    if x is not None and x.numel() == yy.numel():
        xx = x.detach().cpu().double().reshape(-1)
        order = torch.argsort(xx)
        ax.plot(xx.numpy(), yy.numpy(), "o", ms=3, label="data")
        ax.plot(xx[order].numpy(), ff[order].numpy(), "-", label="fit")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    else:
        ax.plot(yy.numpy(), ff.numpy(), "o", ms=3, label="samples")
        low, high = float(torch.minimum(yy.min(), ff.min())), float(torch.maximum(yy.max(), ff.max()))
        ax.plot([low, high], [low, high], "k--", lw=1, label="fitted = observed")
        ax.set_xlabel("observed")
        ax.set_ylabel("fitted")
    ax.legend(fontsize=7)
    return ax


def save_figure(fig: Any, path: str) -> None:
    """Save a figure atomically (a temporary file renamed into place) and close it."""
    from lossfit.io import atomic_path

    plt = pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=str(path).rsplit(".", 1)[-1].lower())
    plt.close(fig)


def checkerboard(a: torch.Tensor, b: torch.Tensor, tiles: int = 8, *, aspect: float = 1.0) -> torch.Tensor:
    """Alternate tiles of two same-shaped 2-D images (each scaled to 0..1 by its own robust range).

    Args:
        a, b: ``(rows, cols)`` images.
        tiles: about how many tiles fit along the shorter physical side.
        aspect: a pixel's height over its width (row spacing / column spacing, as :func:`world_slices` gives), so
            that the tiles are square in millimetres; 1 for square pixels.
    """
    if isinstance(aspect, bool) or not isinstance(aspect, (int, float)) or not math.isfinite(aspect) or aspect <= 0:
        raise ValueError(f"`aspect` must be a positive finite number (row spacing / column spacing); got {aspect!r}")
    ny, nx = a.shape
    cols = max(1, int(min(ny * aspect, nx) // tiles))  # tile side in column widths
    rows = max(1, round(cols / aspect))
    yy = torch.arange(ny).unsqueeze(1) // rows
    xx = torch.arange(nx).unsqueeze(0) // cols
    return torch.where((yy + xx) % 2 == 0, _unit(a), _unit(b))


def _unit(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().cpu().double()
    flat = x.reshape(-1)[:: max(1, x.numel() // 200_000)]
    low, high = torch.quantile(flat, 0.01), torch.quantile(flat, 0.99)
    return ((x - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)


# --- slices named and laid out by the world (LPS) planes they show ------------------------------------------------
# Each panel: the world axis its plane is perpendicular to (None for a 2-D image), then the world axis and direction
# (+1: the world coordinate grows) along the rows downwards and along the columns to the right, and the patient
# sides at the top and the left of the screen. World axes: 0 = x (to Left), 1 = y (to Posterior), 2 = z (Superior).
_LAYOUTS = {
    "axial": (2, (1, +1), (0, +1), "top A, left R"),
    "coronal": (1, (2, -1), (0, +1), "top S, left R"),
    "sagittal": (0, (2, -1), (1, +1), "top S, left A"),
}
_PLANE_2D = (None, (1, +1), (0, +1), "top A, left R")  # a 2-D image lies in an axial plane (z = slice_z)
_OBLIQUE_COS = 0.9  # a panel whose axes are further than arccos(0.9) ~ 25.8 degrees from the world's is "oblique"
_OFF_AXIS_DEG = 1.0  # below this the angle is not named


class Slice(NamedTuple):
    """One panel of :func:`world_slices`: its name, the 2-D array as displayed (rows top to bottom, columns left to
    right) and the aspect (a pixel's height over its width in mm) to give ``imshow``."""

    name: str
    data: torch.Tensor
    aspect: float


class _Cut(NamedTuple):
    """How to take one panel out of a data array of the image's grid."""

    name: str
    dims: tuple[int, ...]  # data dims in the order (normal,) rows, cols
    position: int | None  # the slice along the normal (3-D)
    flips: tuple[int, ...]  # dims of the cut 2-D array to reverse
    aspect: float
    edges: str  # the patient sides at the top and the left of the screen


def _assign(direction: np.ndarray) -> tuple[int, ...]:
    """``axis[w]``: the index axis shown as world axis w, the permutation whose direction columns lie closest to
    the world axes (largest sum of |cosines|; on a tie, such as 45 degrees, the first in ``itertools`` order)."""
    d = len(direction)
    best, best_score = tuple(range(d)), -1.0
    for perm in itertools.permutations(range(d)):
        score = sum(abs(direction[w, perm[w]]) for w in range(d))
        if score > best_score + 1e-9:
            best, best_score = perm, score
    return best


def _angle(u: np.ndarray, world: int) -> float:
    """Degrees between the line along ``u`` and world axis ``world`` (0..90)."""
    cosine = abs(u[world]) / float(np.linalg.norm(u))
    return math.degrees(math.acos(min(1.0, cosine)))


def _label(name: str, angle: float) -> str:
    if angle < _OFF_AXIS_DEG:
        return name
    off = f"{angle:.0f}° off axis"
    if math.cos(math.radians(angle)) < _OBLIQUE_COS:
        name = f"oblique {name}" if name else "oblique"
    return f"{name}, {off}" if name else off


def _cuts(image: Image) -> list[_Cut]:
    """The panels of ``image``'s grid, computed from its direction and spacing only (see :func:`world_slices`)."""
    from lossfit.registration.image import Image  # here: plotting a loss curve needs no registration

    if not isinstance(image, Image):
        raise TypeError(f"`image` must be a lossfit.registration.Image; got {type(image).__name__}")
    m, d, size = np.array(image.direction), image.ndim, image.size
    axis = _assign(m)
    layouts = list(_LAYOUTS.items()) if d == 3 else [("", _PLANE_2D)]
    cuts = []
    for name, (normal, (row_w, row_sign), (col_w, col_sign), edges) in layouts:
        r, c = axis[row_w], axis[col_w]
        angles = [_angle(m[:, r], row_w), _angle(m[:, c], col_w)]
        dims: tuple[int, ...] = (d - 1 - r, d - 1 - c)
        position = None
        if normal is not None:
            n = axis[normal]
            angles.append(_angle(np.cross(m[:, r], m[:, c]), normal))  # the plane's normal
            dims = (d - 1 - n, *dims)
            # The middle voxel; for an even count the one on the world's + side, whichever way the axis is stored.
            position = size[n] // 2 if m[normal, n] >= 0 else (size[n] - 1) // 2
        shown = ((row_w, row_sign, r), (col_w, col_sign, c))
        flips = tuple(k for k, (w, sign, a) in enumerate(shown) if m[w, a] * sign < 0)
        aspect = image.spacing[r] / image.spacing[c]
        cuts.append(_Cut(_label(name, max(angles)), dims, position, flips, aspect, edges))
    return cuts


def _take(data: torch.Tensor, cut: _Cut) -> torch.Tensor:
    plane = data.permute(*cut.dims)
    if cut.position is not None:
        plane = plane[cut.position]
    return plane.flip(cut.flips) if cut.flips else plane


def world_slices(image: Image) -> list[Slice]:
    """The panels that show ``image``: the 2-D image itself, or three slices through the centre of a 3-D volume, each
    named by the world plane it shows and laid out in the radiological convention.

    Convention:
        - Planes: for each world axis (LPS: x to the patient's Left, y Posterior, z Superior) the index axis whose
          direction column lies closest to it is found (the permutation with the largest sum of |cosines|; ties,
          such as 45 degrees, go to the first permutation). "axial" is the slice across the index axis closest to
          z, "coronal" across the one closest to y, "sagittal" across the one closest to x. The slice is the middle
          voxel along that axis (for an even count, the one on the world's + side, so a flipped copy of a volume
          gives the same slice). Panels in the order axial, coronal, sagittal.
        - Display (radiological, as on a scanner console, whatever order and sign the index axes are stored in):
          axial with anterior at the top and the patient's right on the left of the screen (seen from the feet);
          coronal with superior at the top and the patient's right on the left (seen from the front); sagittal
          with superior at the top and anterior on the left. A 2-D image lies in an axial plane and is shown like
          an axial slice. The slice array is transposed and flipped as the signs of the direction require.
        - Oblique grids: the name gives the largest angle between a panel's rows, columns or plane normal and the
          world axes they are shown as, when it is 1 degree or more ("axial, 10° off axis"), and says "oblique"
          when that angle's cosine is below 0.9 (about 26 degrees; "oblique axial, 30° off axis"). Oblique data are
          shown as stored, not resampled onto world planes.
        - Aspect: a pixel's height over its width in mm (the spacing of the index axis along the rows over that of
          the one along the columns), for ``imshow(..., aspect=aspect)``.

    Args:
        image: a 2-D or 3-D :class:`lossfit.registration.Image`.

    Returns:
        One :class:`Slice` (name, 2-D array (rows, cols), aspect) for a 2-D image (named "" unless off axis), three
        for a 3-D volume. The arrays are views of (or flipped copies of) ``image.data``, on its device.

    Raises:
        TypeError: ``image`` is not an ``Image``.

    Example:
        >>> from lossfit.registration import Image
        >>> volume = Image(torch.zeros(4, 5, 6), spacing=(1.0, 1.0, 3.0))
        >>> [(s.name, tuple(s.data.shape), s.aspect) for s in world_slices(volume)]
        [('axial', (5, 6), 1.0), ('coronal', (4, 6), 3.0), ('sagittal', (4, 5), 3.0)]
    """
    return [Slice(cut.name, _take(image.data, cut), cut.aspect) for cut in _cuts(image)]


def plot_registration(fixed: Any, moving_before: Any, warped: Any, title: str = "") -> Any:
    """Before/after figure: checkerboards of fixed against moving (before) and against the warped moving image
    (after), and the absolute differences; one row per slice (three orthogonal slices for 3-D).

    The three images share the fixed grid (``moving_before`` is the moving image resampled onto it); the slices,
    their names, orientation and aspect come from ``fixed``'s geometry as :func:`world_slices` describes
    (radiological display, pixels drawn to scale, checkerboard tiles square in mm).

    Raises:
        TypeError: ``fixed`` is not an ``Image``.
        ValueError: ``moving_before`` or ``warped`` does not have ``fixed``'s shape.
    """
    cuts = _cuts(fixed)
    for argument, image in (("moving_before", moving_before), ("warped", warped)):
        if tuple(image.data.shape) != tuple(fixed.data.shape):
            raise ValueError(
                f"`{argument}` must be on the fixed grid, of shape {tuple(fixed.data.shape)}; "
                f"got {tuple(image.data.shape)}"
            )
    plt = pyplot()
    fig, axes = plt.subplots(len(cuts), 4, figsize=(13, 3.4 * len(cuts)), squeeze=False)
    heads = ("checkerboard before", "checkerboard after", "|difference| before", "|difference| after")
    for r, cut in enumerate(cuts):
        f, m, w = (_take(image.data, cut) for image in (fixed, moving_before, warped))
        fu, mu, wu = _unit(f), _unit(m), _unit(w)
        boards = (checkerboard(f, m, aspect=cut.aspect), checkerboard(f, w, aspect=cut.aspect))
        for c, panel in enumerate((*boards, (fu - mu).abs(), (fu - wu).abs())):
            ax = axes[r][c]
            ax.imshow(
                panel.numpy(), cmap="gray" if c < 2 else "magma", vmin=0, vmax=1, origin="upper", aspect=cut.aspect
            )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{heads[c]}{' (' + cut.name + ')' if cut.name else ''}", fontsize=9)
        axes[r][0].set_ylabel(cut.edges, fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_deformation(fixed: Any, displacement: torch.Tensor, title: str = "", lines: int = 24) -> Any:
    """The deformation of a field ``u`` on ``fixed``'s grid (``phi(x) = x + u(x)``, world mm): per slice (three
    orthogonal slices for 3-D, laid out as :func:`world_slices` describes), the Jacobian determinant map and the
    deformed grid.

    - Jacobian determinant: ``det(I + du/dx)`` (:func:`lossfit.registration.evaluate.jacobian_determinant`) on a
      diverging scale centred at 1 (blue compresses, red expands, from 0 to 2); folded voxels (``det <= 0``) black.
    - Deformed grid: about ``lines`` lines along each axis of the slice, at the in-plane positions ``phi`` moves
      their points to, over the fixed image; displacements out of the plane are not shown. The lines are drawn in
      the slice's voxels, so an oblique grid's are bent as its own axes are.

    Args:
        fixed: the :class:`~lossfit.registration.Image` the field lives on.
        displacement: ``(*fixed.shape, d)`` world displacements in mm (for a registration's field part alone, see
            :meth:`~lossfit.registration.deformable.DeformableRegistration.local_displacement`).

    Raises:
        TypeError: ``fixed`` is not an ``Image``.
        ValueError: ``displacement`` is not of shape ``(*fixed.shape, d)``.
    """
    from lossfit.registration.evaluate import jacobian_determinant

    cuts = _cuts(fixed)
    d = fixed.ndim
    expected = (*fixed.data.shape, d)
    if tuple(displacement.shape) != expected:
        raise ValueError(f"`displacement` must be of shape {expected} (the fixed grid, then d); got "
                         f"{tuple(displacement.shape)}")  # fmt: skip
    u = displacement.detach().to("cpu", torch.float64)
    det = jacobian_determinant(u, fixed)
    # World displacements in voxels of each index axis: M^-1 u, with M = direction @ diag(spacing).
    linear = torch.tensor(np.array(fixed.direction) * np.array(fixed.spacing)[None, :], dtype=torch.float64)
    voxels = torch.linalg.solve(linear, u.reshape(-1, d).T).T.reshape(u.shape)
    plt = pyplot()
    from matplotlib.colors import TwoSlopeNorm

    fig, axes = plt.subplots(len(cuts), 2, figsize=(8.5, 3.8 * len(cuts)), squeeze=False)
    norm = TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=2.0)
    for r, cut in enumerate(cuts):
        jac = _take(det, cut)
        ax = axes[r][0]
        shown = ax.imshow(jac.clamp(0, 2).numpy(), cmap="RdBu_r", norm=norm, origin="upper", aspect=cut.aspect)
        folded = (jac <= 0).double()
        if bool(folded.any()):
            ax.imshow(np.ma.masked_equal(folded.numpy(), 0), cmap="gray_r", vmin=0, vmax=1, origin="upper",
                      aspect=cut.aspect)  # fmt: skip
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
        ax.set_title(f"Jacobian determinant{' (' + cut.name + ')' if cut.name else ''}", fontsize=9)
        ax = axes[r][1]
        ax.imshow(_unit(_take(fixed.data, cut)).numpy(), cmap="gray", vmin=0, vmax=2, origin="upper",
                  aspect=cut.aspect)  # fmt: skip
        row_axis, col_axis = d - 1 - cut.dims[-2], d - 1 - cut.dims[-1]
        rows = _take(voxels[..., row_axis], cut) * (-1.0 if 0 in cut.flips else 1.0)
        cols = _take(voxels[..., col_axis], cut) * (-1.0 if 1 in cut.flips else 1.0)
        height, width = rows.shape
        every = max(1, round(max(height, width) / lines))
        ii, jj = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                                indexing="ij")  # fmt: skip
        y, x = (ii + rows).numpy(), (jj + cols).numpy()
        for i in range(0, height, every):
            ax.plot(x[i, :], y[i, :], color="tab:orange", linewidth=0.7)
        for j in range(0, width, every):
            ax.plot(x[:, j], y[:, j], color="tab:orange", linewidth=0.7)
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
        ax.set_title(f"deformed grid{' (' + cut.name + ')' if cut.name else ''}", fontsize=9)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(cut.edges, fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_motion(result: Any, title: str = "") -> Any:
    """The motion of a series (a :class:`~lossfit.registration.motion.MotionCorrection`): rotations (degrees) and
    translations (mm) per volume, and the framewise displacement (mm), one panel each."""
    plt = pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(9, 7.5), sharex=True)
    volumes = list(range(len(result.statuses)))
    for column, axis in enumerate("xyz"):
        axes[0].plot(volumes, result.rotations_deg[:, column].tolist(), label=f"about {axis}")
        axes[1].plot(volumes, result.translations_mm[:, column].tolist(), label=f"along {axis}")
    axes[2].plot(volumes, result.framewise_displacement.tolist(), color="black")
    for ax, label in zip(axes, ("rotation (degrees)", "translation (mm)", "framewise displacement (mm)"), strict=True):
        ax.set_ylabel(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, ncol=3)
    axes[1].legend(fontsize=8, ncol=3)
    axes[2].set_xlabel("volume")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
