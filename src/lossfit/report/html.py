"""The HTML report: a :class:`Report` holds :class:`Section` objects, each a list of blocks, rendered to one file.

Convention: every string a user supplies is HTML-escaped when it is added; the file has inline CSS, no JavaScript,
and no external URL (images are ``data:image/png;base64,`` URIs). ``render()`` is deterministic: the same calls give
the same text (there is no timestamp unless one is passed as ``generated=``).
"""

from __future__ import annotations

import base64
import enum
import html
import io
import math
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lossfit.report import results
from lossfit.report.style import CSS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURE_DPI = 110


class Section:
    """One part of a report: a title, an optional note, then blocks in the order they are added.

    Sections are made by :meth:`Report.section`. Each method adds a block and returns the section, so calls chain.
    """

    def __init__(self, title: str, note: str | None = None) -> None:
        self.title = _text(title, "title")
        self.note = _text(note, "note") if note is not None else None
        self._blocks: list[str] = []
        self._badges: list[tuple[bool, str]] = []

    @property
    def success(self) -> bool | None:
        """False when any status added to the section failed, True when all succeeded, None when none was added."""
        if not self._badges:
            return None
        return all(ok for ok, _ in self._badges)

    def status(self, *, success: bool, status: str | enum.Enum, message: str = "") -> Section:
        """Add a coloured badge (green for success, red for failure) with the reason the solver stopped.

        Args:
            success: whether the fit succeeded.
            status: the status's name (``"converged_gtol"``) or an enum member (shown as its lower-case name).
            message: why the solver stopped, in words.
        """
        if not isinstance(success, bool):
            raise TypeError(f"`success` must be a bool; got {type(success).__name__}")
        name = status.name.lower() if isinstance(status, enum.Enum) else _text(status, "status")
        message = _text(message, "message")
        self._badges.append((success, name))
        reason = f' <span class="reason">{_esc(message)}</span>' if message else ""
        self._blocks.append(f'<p class="status">{_badge(success, name)}{reason}</p>')
        return self

    def table(self, rows: Sequence[Mapping[str, Any]], *, caption: str | None = None) -> Section:
        """Add a table with one row per mapping and one column per key (in the order the keys first appear).

        Floats are shown with 6 significant digits; one-element tensors and numpy scalars as their value; None and
        missing keys as empty cells.
        """
        if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Sequence):
            raise TypeError(f"`rows` must be a list of dicts; got {type(rows).__name__}")
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise TypeError(f"`rows` must be a list of dicts; row {i} is a {type(row).__name__}")
        columns: dict[str, None] = {}
        for row in rows:
            columns.update(dict.fromkeys(str(key) for key in row))
        head = "".join(f'<th scope="col">{_esc(c)}</th>' for c in columns)
        body = []
        for row in rows:
            cells = {str(key): value for key, value in row.items()}
            body.append("<tr>" + "".join(_cell(cells.get(c)) for c in columns) + "</tr>")
        if not rows:
            body.append(f'<tr><td class="empty" colspan="{max(len(columns), 1)}">no rows</td></tr>')
        cap = f"<caption>{_esc(_text(caption, 'caption'))}</caption>" if caption else ""
        self._blocks.append(
            f'<div class="table-wrap"><table>{cap}<thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>"
        )
        return self

    def figure(self, figure: Any, *, caption: str | None = None) -> Section:
        """Add a figure: a matplotlib ``Figure`` (drawn to PNG at dpi 110, then closed) or the bytes of a PNG.

        The image is embedded in the page as a ``data:image/png;base64,`` URI.
        """
        png = _png(figure)
        width, height = struct.unpack(">II", png[16:24])
        caption = _text(caption, "caption") if caption is not None else None
        alt = _esc(caption) if caption else "figure"
        data = base64.b64encode(png).decode("ascii")
        cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
        self._blocks.append(
            f'<figure><img src="data:image/png;base64,{data}" width="{width}" height="{height}" alt="{alt}">'
            f"{cap}</figure>"
        )
        return self

    def text(self, text: str) -> Section:
        """Add a paragraph of free text (line breaks are kept)."""
        self._blocks.append(f'<p class="text">{_esc(_text(text, "text"))}</p>')
        return self

    def code(self, code: str) -> Section:
        """Add preformatted text, such as the command that produced the result."""
        self._blocks.append(f"<pre><code>{_esc(_text(code, 'code'))}</code></pre>")
        return self

    def result(self, result: Any) -> Section:
        """Add what a fit's reader needs: its status badge and why it stopped, a summary (solver, loss, steps),
        the parameters (with standard errors when the result has them), the comparison with the reference when
        there is one, and the loss per step on a log scale (when the result has a history).

        ``result`` is a :class:`lossfit.FitResult` or any object with its fields (``status``, ``success``,
        ``loss``, ``num_steps``, ``history``, ``solver``, ``params``, ``reference``; ``stderr`` is optional). For a
        batch the parameters table has one row per problem, and the figure has one curve per problem.
        """
        self.status(success=bool(result.success), status=result.status, message=results.message(result))
        self.table(results.summary_rows(result), caption="Summary")
        reason = results.solver_reason(result)
        if reason:
            self.text(f"Solver chosen because: {reason}")
        rows, note = results.parameter_rows(result)
        if rows:
            self.table(rows, caption="Parameters" if not results.is_batch(result) else "Parameters per problem")
        if note:
            self.text(note)
        reference = getattr(result, "reference", None)
        if reference:
            self.table(results.reference_rows(reference), caption="Comparison with the reference")
        fig = results.loss_figure(result)
        if fig is not None:
            self.figure(fig, caption="Loss per step (log scale)")
        return self

    def _toc_badge(self) -> str:
        """The badge for the contents: the first failing status, else the first status ('' without one)."""
        if not self._badges:
            return ""
        failing = [name for ok, name in self._badges if not ok]
        return " " + _badge(not failing, failing[0] if failing else self._badges[0][1])

    def _render(self, anchor: str) -> str:
        note = f'<p class="note">{_esc(self.note)}</p>' if self.note else ""
        parts = [f'<section id="{anchor}">', f"<h2>{_esc(self.title)}</h2>", note, *self._blocks, "</section>"]
        return "\n".join(part for part in parts if part)


class Report:
    """A self-contained HTML report: a title, a table of contents with each section's status, then the sections.

    Args:
        title: the page's title.
        generated: a line saying when or how the report was made (shown under the title); nothing is added
            otherwise, so the same calls always render the same text.

    Example:
        >>> report = Report(title="<demo>")
        >>> _ = report.section("Fit").status(success=True, status="converged_gtol", message="small gradient")
        >>> "<title>&lt;demo&gt;</title>" in report.render()
        True
    """

    def __init__(self, title: str = "lossfit report", *, generated: str | None = None) -> None:
        self.title = _text(title, "title")
        self.generated = _text(generated, "generated") if generated is not None else None
        self._sections: list[Section] = []

    @property
    def sections(self) -> tuple[Section, ...]:
        """The sections, in order."""
        return tuple(self._sections)

    def section(self, title: str, *, note: str | None = None) -> Section:
        """Add a section and return it; fill it with its methods (``status``, ``table``, ``figure``, ...)."""
        section = Section(title, note)
        self._sections.append(section)
        return section

    def render(self) -> str:
        """The whole report as one HTML document."""
        from lossfit import __version__

        title = _esc(self.title)
        anchors = [f"section-{i}" for i in range(1, len(self._sections) + 1)]
        lines = [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<link rel="icon" href="data:,">',
            f"<title>{title}</title>",
            f"<style>\n{CSS}</style>",
            "</head>",
            "<body>",
            "<main>",
            "<header>",
            f"<h1>{title}</h1>",
            f'<p class="generated">{_esc(self.generated)}</p>' if self.generated else "",
            "</header>",
        ]
        if self._sections:
            lines += ['<nav class="toc">', "<h2>Contents</h2>", "<ol>"]
            for anchor, section in zip(anchors, self._sections, strict=True):
                lines.append(f'<li><a href="#{anchor}">{_esc(section.title)}</a>{section._toc_badge()}</li>')
            lines += ["</ol>", "</nav>"]
        lines += [section._render(anchor) for anchor, section in zip(anchors, self._sections, strict=True)]
        lines += [f"<footer>Made with lossfit {_esc(__version__)}.</footer>", "</main>", "</body>", "</html>"]
        return "\n".join(line for line in lines if line) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report to ``path`` atomically (a failed write leaves any existing file as it was) and return
        the path. The folder must exist."""
        from lossfit.io import atomic_write_text

        text = self.render()
        atomic_write_text(path, text)
        return Path(path)


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _text(value: Any, argument: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"`{argument}` must be a str; got {type(value).__name__}")
    return value


def _badge(success: bool, name: str) -> str:
    kind, mark, word = ("ok", "&#10003;", "success") if success else ("fail", "&#10007;", "failed")
    return f'<span class="badge {kind}" title="{word}">{mark} {_esc(name)}</span>'


def _cell(value: Any) -> str:
    """One ``<td>``: numbers right-aligned, floats with 6 significant digits."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.detach().cpu().item()
    elif isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return "<td></td>"
    if isinstance(value, enum.Enum):
        return f"<td>{_esc(value.name.lower())}</td>"
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    if isinstance(value, float):
        text = f"{value:.6g}" if math.isfinite(value) else str(value)
        return f'<td class="num">{_esc(text)}</td>'
    return f"<td>{_esc(str(value))}</td>"


def _png(figure: Any) -> bytes:
    """PNG bytes from a matplotlib figure (closed afterwards) or from bytes that must be a PNG."""
    if isinstance(figure, (bytes, bytearray, memoryview)):
        data = bytes(figure)
        if not data.startswith(PNG_SIGNATURE) or len(data) < 24 or data[12:16] != b"IHDR":
            raise ValueError("`figure` bytes must be a PNG image (they do not start with the PNG signature)")
        return data
    if not callable(getattr(figure, "savefig", None)):
        raise TypeError(f"`figure` must be a matplotlib Figure or PNG bytes; got {type(figure).__name__}")
    from lossfit.plotting import pyplot

    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    finally:
        pyplot().close(figure)
    return buffer.getvalue()
