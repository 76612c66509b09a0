"""The HTML report: escaping, structure, embedded figures, fit results, atomic saving and determinism."""

from __future__ import annotations

import base64
import io
import math
import os
import re
from html.parser import HTMLParser
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import lossfit
from lossfit import InputFileError, Status
from lossfit.plotting import pyplot
from lossfit.report import Report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "link", "img", "br", "hr", "input"}


def model(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return p[0] * (1 - torch.exp(-p[1] * x))


@pytest.fixture(scope="module")
def curve() -> Any:
    x = torch.linspace(0, 4, 30, dtype=torch.float64)
    y = model(x, torch.tensor([2.5, 1.3], dtype=torch.float64)) + 0.01 * torch.sin(7 * x)
    return lossfit.curve_fit(model, x, y, torch.ones(2, dtype=torch.float64))


@pytest.fixture(scope="module")
def minimized() -> Any:
    """A dict of parameters, one named like an HTML tag and one a matrix."""
    params = {"<b>": torch.zeros((), dtype=torch.float64), "w": torch.zeros(2, 2, dtype=torch.float64)}
    return lossfit.minimize(lambda p: (p["<b>"] - 1) ** 2 + ((p["w"] - 3) ** 2).sum(), params)


@pytest.fixture(scope="module")
def batch() -> Any:
    x = torch.linspace(0, 4, 30, dtype=torch.float64).expand(3, -1)
    y = torch.stack([model(x[0], torch.tensor([a, 1.3], dtype=torch.float64)) for a in (1.0, 2.0, 3.0)])
    return lossfit.curve_fit(model, x, y, torch.ones(3, 2, dtype=torch.float64), batch=True)


class History:
    """Only what a report reads of a history: the loss per step and the length."""

    def __init__(self, loss: torch.Tensor) -> None:
        self.loss = loss

    def __len__(self) -> int:
        return len(self.loss)


class Tags(HTMLParser):
    """Collects start tags with their attributes and checks that every element is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> Tags:
    tags = Tags()
    tags.feed(html)
    tags.close()
    assert tags.stack == [], f"unclosed elements: {tags.stack}"
    return tags


def images(html: str) -> list[tuple[bytes, dict[str, str | None]]]:
    """The decoded PNG of each <img>, with the tag's attributes."""
    found = []
    for tag, attrs in parse(html).tags:
        if tag == "img":
            src = attrs["src"] or ""
            assert src.startswith("data:image/png;base64,")
            found.append((base64.b64decode(src.split(",", 1)[1], validate=True), attrs))
    return found


def cells(html: str) -> list[str]:
    return re.findall(r"<td[^>]*>(.*?)</td>", html)


def test_every_user_string_is_escaped(minimized: Any) -> None:
    evil = "<script>alert(1)</script>"
    report = Report(title=evil, generated=f"made by {evil}")
    section = report.section(f"section {evil}", note=f'note "{evil}"')
    section.status(success=False, status=evil, message=evil)
    section.table([{evil: evil, "x": f"<i>{evil}</i>"}], caption=evil)
    section.text(evil)
    section.code(f"lossfit fit '{evil}' && echo <done>")
    fig, _ = pyplot().subplots(figsize=(2, 2))
    section.figure(fig, caption=f'{evil} "quoted"')
    report.section("fit").result(minimized)
    html = report.render()

    assert "<script" not in html and "<i>" not in html and "<b>" not in html and "<done>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<title>&lt;script&gt;alert(1)&lt;/script&gt;</title>" in html
    assert "<td>&lt;b&gt;</td>" in html  # the parameter named <b>
    assert 'alt="&lt;script&gt;alert(1)&lt;/script&gt; &quot;quoted&quot;"' in html
    # Parsed back, the text is exactly what was given, and no element came from the user's text.
    tags = parse(html)
    assert evil in "".join(tags.text)
    assert {tag for tag, _ in tags.tags} <= {
        *("html", "head", "meta", "link", "title", "style", "body", "main", "header", "h1", "h2", "p", "nav", "ol"),
        *("li", "a", "span", "section", "div", "table", "caption", "thead", "tbody", "tr", "th", "td", "figure"),
        *("img", "figcaption", "pre", "code", "footer"),
    }


def test_structure_sections_contents_and_badges() -> None:
    report = Report(title="structure")
    report.section("First", note="a note").status(success=True, status="converged_gtol", message="small gradient")
    second = report.section("Second").status(success=True, status=Status.CONVERGED_FTOL, message="ok")
    second.status(success=False, status=Status.MAX_STEPS, message=Status.MAX_STEPS.message)
    report.section("Plain").text("no status here")
    html = report.render()

    assert [s.title for s in report.sections] == ["First", "Second", "Plain"]
    assert [s.success for s in report.sections] == [True, False, None]
    tags = parse(html)
    assert [a["id"] for t, a in tags.tags if t == "section"] == ["section-1", "section-2", "section-3"]
    links = [a["href"] for t, a in tags.tags if t == "a"]
    assert links == ["#section-1", "#section-2", "#section-3"]
    toc = html[html.index('<nav class="toc">') : html.index("</nav>")]
    items = re.findall(r"<li>(.*?)</li>", toc)
    assert 'class="badge ok"' in items[0] and "converged_gtol" in items[0]
    # a section with a failure shows it in the contents, whatever came first
    assert 'class="badge fail"' in items[1] and "max_steps" in items[1] and "converged_ftol" not in items[1]
    assert "badge" not in items[2]
    body = html[html.index('<section id="section-2">') :]
    assert body.count('class="badge ok"') == 1 and body.count('class="badge fail"') == 1
    assert "maximum number of steps reached; increase `max_steps`" in body
    assert '<p class="note">a note</p>' in html
    assert html.startswith("<!DOCTYPE html>") and html.endswith("</html>\n")


def test_table_formats_values_and_columns() -> None:
    rows = [
        {"name": "pi", "value": math.pi, "count": 3},
        {"name": "big", "value": 1234567.891, "flag": True, "note": None},
        {"name": "tensor", "value": torch.tensor(0.000123456789), "count": np.int64(7)},
        {"name": "numpy", "value": np.float32(2.5), "flag": False},
        {"name": "bad", "value": float("nan"), "count": float("-inf"), "status": Status.CONVERGED_GTOL},
    ]
    report = Report()
    report.section("t").table(rows, caption="Numbers")
    html = report.render()
    heads = re.findall(r'<th scope="col">(.*?)</th>', html)
    assert heads == ["name", "value", "count", "flag", "note", "status"]  # the order keys first appear
    got = [cells(html)[i : i + 6] for i in range(0, 30, 6)]
    assert got[0] == ["pi", "3.14159", "3", "", "", ""]
    assert got[1] == ["big", "1.23457e+06", "", "yes", "", ""]
    assert got[2] == ["tensor", "0.000123457", "7", "", "", ""]
    assert got[3] == ["numpy", "2.5", "", "no", "", ""]
    assert got[4] == ["bad", "nan", "-inf", "", "", "converged_gtol"]
    assert '<td class="num">3.14159</td>' in html  # numbers are right-aligned
    assert "<caption>Numbers</caption>" in html

    empty = Report()
    empty.section("e").table([])
    assert "no rows" in empty.render()
    with pytest.raises(TypeError, match="`rows` must be a list of dicts"):
        Report().section("e").table({"a": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="row 1"):
        Report().section("e").table([{"a": 1}, [1, 2]])  # type: ignore[list-item]


def test_figures_are_embedded_as_png() -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1, 2], [1, 0.1, 0.01])
    number = fig.number
    report = Report()
    section = report.section("figures").figure(fig, caption="a line")
    assert not plt.fignum_exists(number)  # the figure was closed

    buffer = io.BytesIO()
    Image.new("RGB", (30, 20), (200, 10, 10)).save(buffer, format="PNG")
    section.figure(buffer.getvalue())
    found = images(report.render())
    assert len(found) == 2
    for data, attrs in found:
        assert data.startswith(PNG_SIGNATURE)
        with Image.open(io.BytesIO(data)) as image:
            assert (str(image.width), str(image.height)) == (attrs["width"], attrs["height"])
    with Image.open(io.BytesIO(found[0][0])) as image:
        assert round(image.info["dpi"][0]) == 110
        assert 300 < image.width <= 4 * 110 and 200 < image.height <= 3 * 110
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 20  # a drawing, not a blank
    assert found[1][0] == buffer.getvalue()  # PNG bytes go in unchanged
    assert "<figcaption>a line</figcaption>" in report.render()

    with pytest.raises(ValueError, match="PNG"):
        section.figure(b"GIF89a not a png at all")
    with pytest.raises(TypeError, match="matplotlib Figure or PNG bytes"):
        section.figure("plot.png")


def test_result_of_curve_fit(curve: Any) -> None:
    report = Report()
    report.section("Curve fit", note="y = a (1 - exp(-b x))").result(curve)
    html = report.render()
    assert curve.success and curve.stderr is not None
    assert f"&#10003; {curve.status.name.lower()}</span>" in html
    assert html.count('class="badge ok"') == 2  # in the contents and in the section
    assert curve.message in html
    table = html[html.index("<caption>Parameters</caption>") :]
    table = table[: table.index("</table>")]
    assert re.findall(r'<th scope="col">(.*?)</th>', table) == ["parameter", "value", "stderr"]
    a, b = curve.params.tolist()
    sa, sb = curve.stderr.tolist()
    assert cells(table) == ["p[0]", f"{a:.6g}", f"{sa:.6g}", "p[1]", f"{b:.6g}", f"{sb:.6g}"]
    assert "Solver chosen because: " in html and curve.solver.name in html
    summary = html[html.index("<caption>Summary</caption>") :]
    assert cells(summary)[:3] == [curve.solver.name, f"{float(curve.loss):.6g}", str(curve.num_steps)]
    ((png, _),) = images(html)
    with Image.open(io.BytesIO(png)) as image:
        assert image.width > 300 and image.height > 200


def test_result_of_minimize_with_named_and_matrix_parameters(minimized: Any) -> None:
    report = Report()
    report.section("minimize").result(minimized)
    html = report.render()
    table = html[html.index("<caption>Parameters</caption>") :]
    table = table[: table.index("</table>")]
    assert re.findall(r'<th scope="col">(.*?)</th>', table) == ["parameter", "value"]  # no stderr for minimize
    assert cells(table)[::2] == ["&lt;b&gt;", "w[0,0]", "w[0,1]", "w[1,0]", "w[1,1]"]
    assert cells(table)[1::2] == ["1", "3", "3", "3", "3"]
    assert "Comparison with the reference" not in html
    assert len(images(html)) == 1


def test_result_of_a_batch(batch: Any) -> None:
    report = Report()
    report.section("batch").result(batch)
    html = report.render()
    assert "<caption>Parameters per problem</caption>" in html
    table = html[html.index("<caption>Parameters per problem</caption>") :]
    table = table[: table.index("</table>")]
    heads = re.findall(r'<th scope="col">(.*?)</th>', table)
    assert heads == ["problem", "status", "loss", "p[0]", "p[0] stderr", "p[1]", "p[1] stderr"]
    rows = re.findall(r"<tr>(.*?)</tr>", table)[1:]
    assert len(rows) == 3
    for b, row in enumerate(rows):
        got = cells(row)
        assert got[0] == str(b) and got[1] == batch.statuses[b].name.lower()
        assert got[3] == f"{batch.params[b, 0].item():.6g}"
    summary = html[html.index("<caption>Summary</caption>") :]
    assert re.findall(r'<th scope="col">(.*?)</th>', summary[: summary.index("</table>")])[:4] == [
        "solver",
        "problems",
        "failed",
        "largest loss",
    ]
    assert len(images(html)) == 1


def test_result_with_a_reference_and_without_a_history() -> None:
    matrix = torch.tensor([[4.0, 1.0], [2.0, 3.0]], dtype=torch.float64)
    inverse = lossfit.matrices.inverse(matrix)
    assert inverse.reference
    quiet = lossfit.minimize(lambda p: ((p - 2) ** 2).sum(), torch.zeros(3, dtype=torch.float64), history=False)
    report = Report()
    report.section("inverse").result(inverse)
    report.section("no history").result(quiet)
    html = report.render()
    table = html[html.index("<caption>Comparison with the reference</caption>") :]
    reference = cells(table[: table.index("</table>")])
    assert reference[::2] == list(inverse.reference)
    assert reference[1] == f"{inverse.reference[next(iter(inverse.reference))]:.6g}"
    assert len(images(html)) == 1  # only the inverse has a loss curve
    assert html.count("<caption>Parameters</caption>") == 2


def test_result_accepts_any_object_with_the_fields() -> None:
    """A duck-typed result: string status, no stderr attribute, no time, a failure."""
    result = SimpleNamespace(
        status="max_steps",
        success=False,
        message="ran out of steps",
        loss=torch.tensor(0.5),
        num_steps=3,
        history=History(torch.tensor([4.0, 2.0, 1.0, 0.5])),
        solver=SimpleNamespace(name="gd"),
        params={"scale": torch.tensor(1.5)},
        reference=None,
    )
    report = Report()
    report.section("custom").result(result)
    html = report.render()
    assert '<span class="badge fail" title="failed">&#10007; max_steps</span>' in html
    assert "ran out of steps" in html and "Solver chosen because" not in html
    assert cells(html[html.index("<caption>Parameters</caption>") :])[:2] == ["scale", "1.5"]
    assert len(images(html)) == 1


def test_many_parameters_are_cut_short_with_a_note() -> None:
    big = lossfit.minimize(lambda p: ((p - 1) ** 2).sum(), torch.zeros(60, dtype=torch.float64))
    report = Report()
    report.section("big").result(big)
    html = report.render()
    table = html[html.index("<caption>Parameters</caption>") :]
    assert len(re.findall(r"<tr>", table[: table.index("</table>")])) == 1 + 50
    assert "Showing the first 50 of 60 parameter values." in html


def test_no_external_resources_and_no_scripts(curve: Any) -> None:
    report = Report(title="offline")
    report.section("fit").result(curve)
    html = report.render()
    for tag, attrs in parse(html).tags:
        for name in ("src", "href"):
            if name in attrs:
                value = attrs[name] or ""
                assert value.startswith(("#", "data:")), f"<{tag} {name}={value!r}> points outside the file"
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower() and "url(" not in html and "@import" not in html


def test_render_is_deterministic(curve: Any, batch: Any) -> None:
    def build(generated: str | None = None) -> str:
        report = Report(title="same", generated=generated)
        report.section("curve", note="n").result(curve)
        report.section("batch").result(batch)
        report.section("table").table([{"a": 1.0, "b": "x"}], caption="c")
        return report.render()

    first = build()
    assert first == build()
    assert "generated" not in first.split("</style>")[1]  # no date or time unless given
    stamped = build(generated="Generated on 2024-01-02 at 03:04")
    assert '<p class="generated">Generated on 2024-01-02 at 03:04</p>' in stamped
    report = Report()
    report.section("s").text("t")
    assert report.render() == report.render()


def test_save_writes_the_rendered_text(tmp_path: Any, curve: Any) -> None:
    report = Report(title="saved")
    report.section("fit").result(curve)
    path = report.save(tmp_path / "report.html")
    assert path == tmp_path / "report.html"
    assert path.read_text(encoding="utf-8") == report.render()
    assert os.listdir(tmp_path) == ["report.html"]


def test_a_failed_save_leaves_no_file_and_keeps_an_existing_one(tmp_path: Any, monkeypatch: Any) -> None:
    report = Report(title="new")
    report.section("s").text("new text " * 1000)
    existing = tmp_path / "existing.html"
    existing.write_text("old report", encoding="utf-8")
    fresh = tmp_path / "fresh.html"

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", refuse)
        for target in (existing, fresh):
            with pytest.raises(OSError, match="disk full"):
                report.save(target)

    real_open = open

    class Breaks:
        """A file that takes half of what is written, then fails."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.handle = real_open(*args, **kwargs)

        def __enter__(self) -> Breaks:
            return self

        def __exit__(self, *exc: Any) -> None:
            self.handle.close()

        def write(self, text: str) -> int:
            self.handle.write(text[: len(text) // 2])
            self.handle.flush()
            raise OSError("device removed")

    with monkeypatch.context() as patch:
        patch.setattr("lossfit.io.open", Breaks, raising=False)
        for target in (existing, fresh):
            with pytest.raises(OSError, match="device removed"):
                report.save(target)

    assert existing.read_text(encoding="utf-8") == "old report"
    assert not fresh.exists()
    assert sorted(os.listdir(tmp_path)) == ["existing.html"]  # no temporary file left behind
    with pytest.raises(InputFileError, match="does not exist"):
        report.save(tmp_path / "missing" / "report.html")
    assert sorted(os.listdir(tmp_path)) == ["existing.html"]


def test_bad_arguments_raise_type_errors() -> None:
    with pytest.raises(TypeError, match="`title` must be a str"):
        Report(title=3)  # type: ignore[arg-type]
    section = Report().section("s")
    with pytest.raises(TypeError, match="`success` must be a bool"):
        section.status(success="yes", status="ok")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`note` must be a str"):
        Report().section("s", note=1)  # type: ignore[arg-type]
