"""What a report shows of a fit: its summary, parameters, reference comparison and loss curve, as table rows and
a figure. Works on a :class:`lossfit.FitResult` or any object with its fields."""

from __future__ import annotations

import enum
import itertools
from collections.abc import Mapping
from typing import Any

import torch

MAX_ROWS = 50
MAX_BATCH_PARAMS = 8
MAX_CURVES = 20


def is_batch(result: Any) -> bool:
    """A batch result has a loss per problem (shape ``(B,)``); a single one has a 0-d loss."""
    return torch.as_tensor(result.loss).ndim >= 1


def message(result: Any) -> str:
    """The result's message, or its status's."""
    text = getattr(result, "message", None)
    if text is None:
        text = getattr(result.status, "message", "")
    return str(text)


def status_name(status: Any) -> str:
    return status.name.lower() if isinstance(status, enum.Enum) else str(status)


def summary_rows(result: Any) -> list[dict[str, Any]]:
    """One row: the solver, the loss (the largest for a batch), steps, evaluations and time."""
    loss = torch.as_tensor(result.loss).detach().cpu().double()
    solver = result.solver
    row: dict[str, Any] = {"solver": getattr(solver, "name", str(solver))}
    if is_batch(result):
        statuses = list(getattr(result, "statuses", ()))
        row["problems"] = int(loss.numel())
        if statuses:
            row["failed"] = sum(1 for s in statuses if not getattr(s, "success", True))
        row["largest loss"] = float(torch.nan_to_num(loss, nan=float("-inf")).max())
        row["most steps"] = int(result.num_steps)
    else:
        row["loss"] = float(loss)
        row["steps"] = int(result.num_steps)
    if getattr(result, "num_evals", None) is not None:
        row["evaluations"] = int(result.num_evals)
    if getattr(result, "time", None) is not None:
        row["time (s)"] = float(result.time)
    return [row]


def solver_reason(result: Any) -> str:
    """Why the solver was chosen, when the result says."""
    return str(getattr(result.solver, "reason", "") or "")


def parameter_rows(result: Any) -> tuple[list[dict[str, Any]], str]:
    """The parameters table's rows and a note ('' when everything is shown).

    A single problem has one row per parameter value (``parameter, value[, stderr]``); a batch has one row per
    problem (``problem, status, loss``, then each value and its stderr when there are at most 8 values).
    """
    batch = is_batch(result)
    names, values = _flatten(result.params, batch)
    stderr = getattr(result, "stderr", None)
    if stderr is not None:
        stderr = torch.as_tensor(stderr).detach().cpu().double()
        stderr = stderr.reshape(values.shape) if stderr.numel() == values.numel() else None
    custom = tuple(getattr(result, "names", ()) or ())
    if len(custom) == len(names):
        names = [str(n) for n in custom]
    if not batch:
        rows: list[dict[str, Any]] = []
        for i, (name, value) in enumerate(zip(names[:MAX_ROWS], values.tolist(), strict=False)):
            row: dict[str, Any] = {"parameter": name, "value": value}
            if stderr is not None:
                row["stderr"] = float(stderr[i])
            rows.append(row)
        note = f"Showing the first {MAX_ROWS} of {len(names)} parameter values." if len(names) > MAX_ROWS else ""
        return rows, note
    loss = torch.as_tensor(result.loss).detach().cpu().double().reshape(-1)
    statuses = list(getattr(result, "statuses", ()))
    show_values = len(names) <= MAX_BATCH_PARAMS
    rows = []
    for b in range(min(len(loss), MAX_ROWS)):
        batch_row: dict[str, Any] = {"problem": b}
        if len(statuses) == len(loss):
            batch_row["status"] = status_name(statuses[b])
        batch_row["loss"] = float(loss[b])
        if show_values:
            for j, name in enumerate(names):
                batch_row[name] = float(values[b, j])
                if stderr is not None:
                    batch_row[f"{name} stderr"] = float(stderr[b, j])
        rows.append(batch_row)
    notes = []
    if len(loss) > MAX_ROWS:
        notes.append(f"Showing the first {MAX_ROWS} of {len(loss)} problems.")
    if not show_values:
        notes.append(f"Each problem has {len(names)} parameter values; they are not listed.")
    return rows, " ".join(notes)


def reference_rows(reference: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``quantity, value`` rows from a result's reference dict."""
    return [{"quantity": str(key), "value": value} for key, value in reference.items()]


def loss_figure(result: Any) -> Any:
    """A matplotlib figure of the loss per step on a log scale (one line per problem, up to 20), or None when
    the result has no history or no positive finite loss. Steps where the loss is exactly 0 cannot be drawn on a log
    scale; the figure says so."""
    history = getattr(result, "history", None)
    if history is None or len(history) == 0:
        return None
    loss = torch.as_tensor(history.loss).detach().cpu().double()
    loss = loss.reshape(len(loss), -1)[:, :MAX_CURVES]
    drawable = torch.isfinite(loss) & (loss > 0)
    if not bool(drawable.any()):
        return None
    from matplotlib.ticker import MaxNLocator

    from lossfit.plotting import pyplot

    fig, ax = pyplot().subplots(figsize=(6, 3.6))
    steps = torch.arange(len(loss))
    for j in range(loss.shape[1]):
        keep = drawable[:, j]
        marker = "o" if int(keep.sum()) <= 30 else None
        ax.plot(steps[keep].numpy(), loss[keep, j].numpy(), marker=marker, ms=3, lw=1.5 if loss.shape[1] == 1 else 1)
    if bool((loss == 0).any()):
        ax.text(
            0.98,
            0.95,
            "the loss reached 0 (not drawn on a log scale)",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=8,
            color="0.35",
        )
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss")
    ax.set_title("loss per step" if loss.shape[1] == 1 else f"loss per step, {loss.shape[1]} problems")
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    return fig


def _flatten(params: Any, batch: bool) -> tuple[list[str], torch.Tensor]:
    """Names such as ``w[0,1]`` and the values, shape ``(n,)`` (or ``(B, n)`` for a batch), row-major."""
    items = params.items() if isinstance(params, Mapping) else [("p", params)]
    names: list[str] = []
    columns: list[torch.Tensor] = []
    for name, value in items:
        tensor = torch.as_tensor(value).detach().cpu().double()
        if batch:
            shape = tuple(tensor.shape[1:])
            columns.append(tensor.reshape(tensor.shape[0], -1))
        else:
            shape = tuple(tensor.shape)
            columns.append(tensor.reshape(-1))
        if not shape:
            names.append(str(name))
        else:
            names += [f"{name}[{','.join(map(str, index))}]" for index in itertools.product(*map(range, shape))]
    if not columns:
        return [], torch.zeros((0,), dtype=torch.float64)
    return names, torch.cat(columns, dim=-1)
