"""Convergence plots (matplotlib, drawn off-screen)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_history(result: Any, ax: Any = None, label: str | None = None) -> Any:
    """Draw a result's loss per step on a log scale; returns the axes. Batches draw their largest loss per step."""
    plt = _pyplot()
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
    plt = _pyplot()
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

    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=str(path).rsplit(".", 1)[-1].lower())
    plt.close(fig)


def checkerboard(a: torch.Tensor, b: torch.Tensor, tiles: int = 8) -> torch.Tensor:
    """Alternate square tiles of two same-shaped 2-D images (each scaled to 0..1 by its own robust range)."""
    ny, nx = a.shape
    size = max(1, min(ny, nx) // tiles)
    yy = torch.arange(ny).unsqueeze(1) // size
    xx = torch.arange(nx).unsqueeze(0) // size
    return torch.where((yy + xx) % 2 == 0, _unit(a), _unit(b))


def _unit(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().cpu().double()
    flat = x.reshape(-1)[:: max(1, x.numel() // 200_000)]
    low, high = torch.quantile(flat, 0.01), torch.quantile(flat, 0.99)
    return ((x - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)


def _slices(data: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The 2-D image itself, or three orthogonal slices through the centre of a 3-D volume (z, y, x order)."""
    if data.dim() == 2:
        return [("", data)]
    nz, ny, nx = data.shape
    return [("axial", data[nz // 2]), ("coronal", data[:, ny // 2].flip(0)), ("sagittal", data[:, :, nx // 2].flip(0))]


def plot_registration(fixed: Any, moving_before: Any, warped: Any, title: str = "") -> Any:
    """Before/after figure: checkerboards of fixed against moving (before) and against the warped moving image
    (after), and the absolute differences; one row per slice (three orthogonal slices for 3-D)."""
    plt = _pyplot()
    rows = list(zip(_slices(fixed.data), _slices(moving_before.data), _slices(warped.data), strict=True))
    fig, axes = plt.subplots(len(rows), 4, figsize=(13, 3.4 * len(rows)), squeeze=False)
    heads = ("checkerboard before", "checkerboard after", "|difference| before", "|difference| after")
    for r, ((name, f), (_, m), (_, w)) in enumerate(rows):
        fu, mu, wu = _unit(f), _unit(m), _unit(w)
        panels = (checkerboard(f, m), checkerboard(f, w), (fu - mu).abs(), (fu - wu).abs())
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(panel.numpy(), cmap="gray" if c < 2 else "magma", vmin=0, vmax=1, origin="upper")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{heads[c]}{' (' + name + ')' if name else ''}", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
