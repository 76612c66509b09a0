"""``--report DIR`` and ``--json`` on every command: the report's sections and embedded images, escaping of what
the user typed, the exit codes kept (1 still writes the report), and a bad DIR refused before any work."""

from __future__ import annotations

import base64
import html
import json
import math
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner, Result

from lossfit.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")

PNG = "data:image/png;base64,"
DEMO_PICTURES = (
    "inverse-sgd.png",
    "inverse-solvers.png",
    "align.png",
    "curve.png",
    "registration.png",
    "deformable.png",
    "deformation.png",
)


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with a matrix, a decay curve and point pairs with outliers."""
    monkeypatch.chdir(tmp_path)
    np.savetxt(tmp_path / "m.csv", [[4.0, 1.0, 0.5], [2.0, 3.0, -1.0], [0.0, 1.0, 2.0]], delimiter=",")
    x = np.linspace(0, 4, 30)
    y = 3 * np.exp(-0.7 * x) + 0.5 + 0.01 * np.sin(9 * x)
    np.savetxt(tmp_path / "decay.csv", np.c_[x, y], delimiter=",", header="x,y", comments="")
    rng = np.random.default_rng(0)
    src = 10 * rng.random((40, 2))
    angle = 0.3
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    dst = src @ rotation.T + [1.0, -2.0] + 0.01 * rng.standard_normal((40, 2))
    dst[:8] += 5 * rng.standard_normal((8, 2))
    np.savetxt(tmp_path / "src.csv", src, delimiter=",")
    np.savetxt(tmp_path / "dst.csv", dst, delimiter=",")
    return tmp_path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """pydicom's CT slice and the same slice shifted by (3, -2) mm, as NIfTI files."""
    pydicom = pytest.importorskip("pydicom")
    from lossfit.registration import Image, load_image, resample, save_image

    where = tmp_path_factory.mktemp("images")
    fixed = load_image(str(pydicom.data.get_testdata_file("CT_small.dcm")))
    shift = torch.eye(3, dtype=torch.float64)
    shift[:2, 2] = torch.tensor([3.0, -2.0], dtype=torch.float64)
    moving = resample(fixed, fixed, shift)
    assert isinstance(moving, Image)
    save_image(fixed, where / "fixed.nii.gz")
    save_image(moving, where / "moving.nii.gz")
    return where / "fixed.nii.gz", where / "moving.nii.gz"


def read_report(folder: Path, images: int) -> str:
    """The report's text, after checking that it is one self-contained page with at least ``images`` PNGs."""
    page = folder / "report.html"
    assert page.is_file(), sorted(p.name for p in folder.iterdir()) if folder.exists() else f"no {folder}"
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    pictures = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(pictures) >= images, f"{len(pictures)} images, expected at least {images}"
    for picture in pictures:
        assert base64.b64decode(picture)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<script" not in text and 'src="http' not in text and 'href="http' not in text
    return text


def headings(text: str) -> list[str]:
    return [html.unescape(h) for h in re.findall(r"<h2>(.*?)</h2>", text)]


def captions(text: str) -> list[str]:
    return [html.unescape(c) for c in re.findall(r"<(?:caption|figcaption)>(.*?)</(?:caption|figcaption)>", text)]


def command_block(text: str) -> str:
    blocks = re.findall(r"<pre><code>(.*?)</code></pre>", text, re.DOTALL)
    assert blocks, "no command line in the report"
    return html.unescape(blocks[-1])


def assert_bad_input(result: Result) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lossfit: error: "), result.stderr
    assert "Traceback" not in result.output


# -- each command's report -------------------------------------------------------------------------------------------


def test_matrix_report(folder: Path) -> None:
    result = run("matrix", "inverse", "m.csv", "--out", "x.npy", "--json", "--report", "rep")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["success"] is True and summary["report"] == str(Path("rep") / "report.html")
    text = read_report(folder / "rep", images=1)
    assert headings(text)[1:] == ["inverse of m.csv"]  # after "Contents"
    assert "Summary" in captions(text) and "Parameters" in captions(text)
    assert "Comparison with the reference" in captions(text) and "error_vs_torch" in text
    assert "Loss per step (log scale)" in captions(text)
    assert 'class="badge ok"' in text and summary["status"] in text and html.escape(summary["message"]) in text
    assert command_block(text) == "lossfit matrix inverse m.csv --out x.npy --json --report rep"


def test_a_fit_that_does_not_converge_exits_1_and_still_writes_its_report(folder: Path) -> None:
    result = run("matrix", "inverse", "m.csv", "--solver", "gd", "--max-steps", "3", "--report", "rep", "--json")
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["status"] == "max_steps"
    text = read_report(folder / "rep", images=1)
    assert 'class="badge fail"' in text and "max_steps" in text and "increase `max_steps`" in text


def test_fit_report_has_uncertainties_and_the_data_figure(folder: Path) -> None:
    args = ("fit", "decay.csv", "--model", "a*exp(-b*x)+c", "--start", "a=1,b=0.1,c=0")
    result = run(*args, "--report", "rep", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["success"] is True and len(summary["stderr"]) == 3
    text = read_report(folder / "rep", images=2)
    assert headings(text)[1:] == ["a*exp(-b*x)+c fitted to decay.csv"]
    assert any(c.startswith("95% confidence intervals (Student's t, 27 degrees of freedom)") for c in captions(text))
    assert "The data and the fit" in captions(text) and "Loss per step (log scale)" in captions(text)
    for name in ("a", "b", "c"):
        assert f"<td>{name}</td>" in text
    expected = "lossfit fit decay.csv --model 'a*exp(-b*x)+c' --start a=1,b=0.1,c=0 --json --report rep"
    assert command_block(text) == expected


def test_fit_report_for_a_named_model(folder: Path) -> None:
    result = run("fit", "decay.csv", "--model", "linear", "--report", "rep", "--json")
    assert result.exit_code in (0, 1), result.output
    assert json.loads(result.stdout)["report"].endswith("report.html")
    text = read_report(folder / "rep", images=2)
    assert "linear fitted to decay.csv" in headings(text) and "The data and the fit" in captions(text)


def test_align_report(folder: Path) -> None:
    result = run("align", "src.csv", "dst.csv", "--model", "rigid", "--loss", "cauchy", "--report", "rep", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    matrix = np.array(summary["matrix"])
    assert np.abs(matrix[:2, 2] - [1.0, -2.0]).max() < 0.05
    text = read_report(folder / "rep", images=2)
    assert headings(text)[1:] == ["rigid transform from src.csv onto dst.csv"]
    assert "Fitted matrix" in " ".join(captions(text)) and "Comparison with the reference" in captions(text)
    assert re.search(r"\d+ of 40 points were treated as inliers", text)
    assert "Destination points and the source points mapped by the fit" in captions(text)


def test_inverse_solvers_report_and_json(folder: Path) -> None:
    result = run("inverse-solvers", "--compare", "gd,auto", "--steps", "300", "--report", "rep", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 4 and {"success", "message", "error_vs_torch", "status"} <= set(rows[0])
    text = read_report(folder / "rep", images=5)  # the comparison, then each run's loss curve
    assert headings(text)[1] == "Matrix inverse by optimisation: the solvers compared"
    assert {"random 4x4, gd", "random 4x4, newton-schulz", "diag(1,2,3,4), gd"} <= set(headings(text))
    assert "Relative residual ||X M - I|| / ||I|| by solver" in captions(text)
    assert "Why each run stopped:" in text and "increase `max_steps`" in text
    assert command_block(text) == "lossfit inverse-solvers --compare gd,auto --steps 300 --json --report rep"


def test_register_report(folder: Path, images: tuple[Path, Path]) -> None:
    fixed, moving = images
    result = run("register", str(fixed), str(moving), "--transform", "rigid", "--report", "rep", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["success"] is True and summary["report"].endswith("report.html")
    assert np.abs(np.array(summary["matrix"])[:2, 2] - [-3.0, 2.0]).max() < 0.2
    text = read_report(folder / "rep", images=2)
    assert "moving.nii.gz registered to" in headings(text)[1]
    names = captions(text)
    assert "Matrix: fixed world -> moving world (homogeneous, LPS, mm)" in names
    assert "fixed world -&gt; moving world" in text  # the arrow is escaped
    assert "Pyramid levels, coarse to fine" in names
    assert "Loss per step at each pyramid level (log scale)" in names
    assert any(c.startswith("Before and after") for c in names)
    levels = re.search(r"<caption>Pyramid levels.*?</table>", text, re.DOTALL)
    assert levels is not None
    for column in ("shrink", "samples", "steps", "status", "time (s)"):
        assert f'<th scope="col">{column}</th>' in levels.group(0)
    assert command_block(text).startswith("lossfit register ") and "--transform rigid" in command_block(text)


def test_demo_report_json_and_pictures(tmp_path: Path) -> None:
    result = run("demo", "--out", str(tmp_path / "demo"), "--report", str(tmp_path / "rep"), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # progress and details go to stderr
    assert summary["success"] is True
    assert set(summary["parts"]) == {"inverse", "align", "curve", "registration", "deformable"}
    assert summary["parts"]["registration"]["mean_error_mm"] < 0.5
    deformable = summary["parts"]["deformable"]
    assert deformable["mean_error_mm"] < 0.15 * deformable["initial_error_mm"]
    assert deformable["mean_error_mm"] < 0.5 * deformable["affine_error_mm"] and deformable["folded_fraction"] == 0
    assert summary["parts"]["align"]["points_classified_right"] >= 55
    assert set(summary["parts"]["curve"]["ci95"]) == {"a", "b"}
    assert summary["files"]["report"] == str(tmp_path / "rep" / "report.html")
    for name in DEMO_PICTURES:
        picture = tmp_path / "demo" / name
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 10_000
        assert str(picture) in summary["files"].values()
    assert "registration of CT_small.dcm" in result.stderr and "classified right" in result.stderr
    assert "deformable registration of CT_small.dcm" in result.stderr
    text = read_report(tmp_path / "rep", images=11)
    assert headings(text)[1:] == [
        "Summary",
        "Matrix inverse by gradient descent, as published",
        "Matrix inverse: five solvers on the same loss",
        "Point alignment with 40% outliers",
        "Curve fit with uncertainties",
        "CT registration from a known warp",
        "CT deformable registration from a known smooth warp",
    ]
    assert "Matrix: fixed world -> moving world (homogeneous, LPS, mm)" in captions(text)
    assert "<td>true</td>" in text and "<td>recovered</td>" in text
    assert not (tmp_path / "demo" / "report.html").exists()


# -- escaping ---------------------------------------------------------------------------------------------------------


def test_user_text_is_escaped(folder: Path) -> None:
    name = "dose<b>&'x'.csv"
    (folder / name).write_bytes((folder / "decay.csv").read_bytes())
    result = run("fit", name, "--model", "a*exp(-b*x)+c", "--start", "a=1,b=0.1,c=0", "--report", "rep")
    assert result.exit_code == 0, result.output
    text = read_report(folder / "rep", images=2)
    assert "<b>" not in text and "dose&lt;b&gt;&amp;&#x27;x&#x27;.csv" in text
    assert headings(text)[1] == f"a*exp(-b*x)+c fitted to {name}"
    assert shlex.split(command_block(text))[2] == name  # shell-quoted, then escaped


def test_a_formula_with_a_comparison_is_bad_input_and_writes_no_report(folder: Path) -> None:
    result = run("fit", "decay.csv", "--model", "a*x<b", "--start", "a=1,b=0", "--report", "rep")
    assert_bad_input(result)
    assert not (folder / "rep").exists()


# -- a bad DIR: exit 2 before any work, nothing written ---------------------------------------------------------------

COMMANDS = {
    "matrix": ["matrix", "inverse", "m.csv", "--out", "x.npy"],
    "fit": ["fit", "decay.csv", "--model", "a*exp(-b*x)+c", "--start", "a=1,b=0.1,c=0", "--out", "p.npz"],
    "align": ["align", "src.csv", "dst.csv", "--out", "a.npy"],
    "inverse-solvers": ["inverse-solvers", "--plot", "p.png"],
    "register": ["register", "{fixed}", "{moving}", "--out", "out"],
    "demo": ["demo", "--out", "out"],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("bad", ["missing-parent", "a-file"])
def test_bad_report_folder_is_refused_before_any_work(
    folder: Path, images: tuple[Path, Path], command: str, bad: str
) -> None:
    (folder / "taken").write_text("a file\n")
    report = "nowhere/rep" if bad == "missing-parent" else "taken"
    before = sorted(p.name for p in folder.iterdir())
    args = [a.format(fixed=images[0], moving=images[1]) for a in COMMANDS[command]]
    result = run(*args, "--report", report, "--json")
    assert_bad_input(result)
    assert ("does not exist" if bad == "missing-parent" else "must be a folder") in result.stderr
    assert result.stdout == ""
    assert sorted(p.name for p in folder.iterdir()) == before
    assert (folder / "taken").read_text() == "a file\n"


def test_bad_input_with_a_report_writes_nothing(folder: Path) -> None:
    result = run("matrix", "inverse", "nowhere.csv", "--report", "rep")
    assert_bad_input(result)
    assert not (folder / "rep").exists()


def test_report_into_an_existing_folder_replaces_only_the_report(folder: Path) -> None:
    (folder / "rep").mkdir()
    (folder / "rep" / "keep.txt").write_text("kept\n")
    (folder / "rep" / "report.html").write_text("old\n")
    result = run("matrix", "inverse", "m.csv", "--report", "rep")
    assert result.exit_code == 0, result.output
    assert (folder / "rep" / "keep.txt").read_text() == "kept\n"
    read_report(folder / "rep", images=1)
    assert sorted(p.name for p in (folder / "rep").iterdir()) == ["keep.txt", "report.html"]


def test_demo_refuses_a_bad_out_folder(folder: Path) -> None:
    result = run("demo", "--out", "nowhere/demo")
    assert_bad_input(result)
    assert not (folder / "nowhere").exists()


# -- exit codes are documented -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], *([name] for name in COMMANDS)])
def test_help_documents_the_exit_codes_and_the_options(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.exit_code == 0, result.output
    words = " ".join(result.stdout.split())
    assert "Exit codes: 0 converged" in words and "1 ran but did not converge" in words and "2 bad input" in words
    if command:
        assert "--report" in words and "--json" in words
