"""The ``lossfit`` command: answers written and checked, exit codes 0/1/2, one clean line on stderr for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner, Result

from lossfit.cli import app

F64 = torch.float64
M = np.array([[4.0, 1.0, 0.5], [2.0, 3.0, -1.0], [0.0, 1.0, 2.0]])
B = np.array([[1.0, 0.0], [2.0, 1.0], [3.0, -1.0]])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder holding M and B in every input format."""
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "m.npy", M)
    np.savetxt(tmp_path / "m.csv", M, delimiter=",")
    np.savetxt(tmp_path / "m.txt", M)
    np.savetxt(tmp_path / "b.csv", B, delimiter=",")
    return tmp_path


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def assert_bad_input(result: Result) -> None:
    """Exit 2 with exactly one line on stderr, 'lossfit: error: ...', and no traceback anywhere."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lossfit: error: "), lines[0]
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


# -- answers ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["m.npy", "m.csv", "m.txt"])
def test_matrix_inverse_writes_the_inverse_and_a_json_summary(folder: Path, source: str) -> None:
    result = run("matrix", "inverse", source, "--out", "x.npy", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["success"] is True
    assert summary["status"].startswith("converged")
    assert summary["reference"]["error_vs_torch"] < 1e-12
    x = np.load(folder / "x.npy")
    assert x.shape == (3, 3) and x.dtype == np.float64
    assert np.abs(x - torch.linalg.inv(torch.from_numpy(M)).numpy()).max() <= 1e-10
    assert np.allclose(np.array(summary["params"]), x, rtol=0, atol=1e-15)
    assert result.stderr == ""


@pytest.mark.parametrize("suffix", [".csv", ".txt"])
def test_matrix_inverse_writes_text_output(folder: Path, suffix: str) -> None:
    result = run("matrix", "inverse", "m.npy", "--out", f"x{suffix}")
    assert result.exit_code == 0, result.output
    assert "status:" in result.stdout and "success" in result.stdout
    x = np.loadtxt(folder / f"x{suffix}", delimiter="," if suffix == ".csv" else None)
    assert np.abs(x - np.linalg.inv(M)).max() <= 1e-10


def test_matrix_solve(folder: Path) -> None:
    result = run("matrix", "solve", "m.csv", "b.csv", "--out", "x.npy", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["success"] is True
    x = np.load(folder / "x.npy")
    assert np.abs(M @ x - B).max() <= 1e-10
    assert np.abs(x - np.linalg.solve(M, B)).max() <= 1e-10


def test_matrix_lstsq(folder: Path) -> None:
    np.savetxt(folder / "tall.csv", np.vstack([M, [[1.0, 1.0, 1.0]]]), delimiter=",")
    np.savetxt(folder / "rhs.csv", np.arange(4.0), delimiter=",")
    result = run("matrix", "lstsq", "tall.csv", "rhs.csv", "--out", "x.npy")
    assert result.exit_code == 0, result.output
    expected = np.linalg.lstsq(np.vstack([M, [[1.0, 1.0, 1.0]]]), np.arange(4.0).reshape(-1, 1), rcond=None)[0]
    assert np.abs(np.load(folder / "x.npy") - expected).max() <= 1e-10


def test_matrix_svd_writes_npz(folder: Path) -> None:
    result = run("matrix", "svd", "m.npy", "--out", "out.npz", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["success"] is True
    with np.load(folder / "out.npz") as out:
        assert sorted(out.files) == ["S", "U", "Vh"]
        assert np.abs(out["S"] - np.linalg.svd(M, compute_uv=False)).max() <= 1e-12
        assert np.abs((out["U"] * out["S"]) @ out["Vh"] - M).max() <= 1e-12


def test_matrix_svd_top_k(folder: Path) -> None:
    result = run("matrix", "svd", "m.npy", "--k", "2", "--out", "out.npz")
    assert result.exit_code == 0, result.output
    with np.load(folder / "out.npz") as out:
        assert out["U"].shape == (3, 2) and out["S"].shape == (2,) and out["Vh"].shape == (2, 3)


def test_matrix_low_rank(folder: Path) -> None:
    result = run("matrix", "low-rank", "m.csv", "--k", "2", "--out", "ab.npz", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["success"] is True
    with np.load(folder / "ab.npz") as out:
        a, b = out["A"], out["B"]
    assert a.shape == (3, 2) and b.shape == (3, 2)
    s = np.linalg.svd(M, compute_uv=False)
    assert np.linalg.norm(a @ b.T - M) == pytest.approx(s[2], rel=1e-8)


@pytest.mark.parametrize("op", ["eigh", "polar", "sqrtm", "pinv"])
def test_other_operations(folder: Path, op: str) -> None:
    spd = M @ M.T + np.eye(3)
    np.save(folder / "spd.npy", spd)
    several = op in ("eigh", "polar")
    out = "out.npz" if several else "out.npy"
    result = run("matrix", op, "spd.npy", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["success"] is True
    if op == "eigh":
        with np.load(folder / out) as data:
            assert np.abs(data["eigenvalues"] - np.linalg.eigvalsh(spd)).max() <= 1e-10
    elif op == "polar":
        with np.load(folder / out) as data:
            assert np.abs(data["U"] @ data["P"] - spd).max() <= 1e-10
    elif op == "sqrtm":
        x = np.load(folder / out)
        assert np.abs(x @ x - spd).max() <= 1e-10
    else:
        assert np.abs(np.load(folder / out) - np.linalg.pinv(spd)).max() <= 1e-10


def test_a_matrix_answer_is_printed_as_rows(folder: Path) -> None:
    result = run("matrix", "inverse", "m.csv")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("params:"))
    n = M.shape[0]
    assert lines[head] == f"params:  a {n} x {n} matrix, by rows:"
    rows = [[float(v) for v in line.strip().strip("[]").split()] for line in lines[head + 1 : head + 1 + n]]
    assert np.allclose(np.array(rows), np.linalg.inv(M), rtol=1e-6, atol=1e-9)
    assert "p[0]=" not in result.output


def test_plot_is_written(folder: Path) -> None:
    result = run("matrix", "inverse", "m.npy", "--plot", "conv.png")
    assert result.exit_code == 0, result.output
    assert (folder / "conv.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- a run that does not converge --------------------------------------------------------------------------------------


def test_not_converged_exits_1_but_writes_its_output(folder: Path) -> None:
    result = run("matrix", "inverse", "m.npy", "--solver", "gd", "--max-steps", "3", "--out", "x.npy", "--json")
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["success"] is False
    assert summary["status"] == "max_steps"
    assert summary["num_steps"] == 3
    x = np.load(folder / "x.npy")
    assert x.shape == (3, 3)
    assert np.allclose(np.array(summary["params"]), x, rtol=0, atol=1e-15)
    assert "Traceback" not in result.output


def test_not_converged_text_summary_says_failed(folder: Path) -> None:
    result = run("matrix", "inverse", "m.npy", "--solver", "gd", "--max-steps", "3")
    assert result.exit_code == 1
    assert "FAILED" in result.stdout and "max_steps" in result.stdout


# -- bad input: exit 2, one line on stderr, nothing written ------------------------------------------------------------


def test_missing_file(folder: Path) -> None:
    result = run("matrix", "inverse", "nowhere.csv", "--out", "x.npy")
    assert_bad_input(result)
    assert "nowhere.csv" in result.stderr
    assert not (folder / "x.npy").exists()


def test_text_in_a_csv(folder: Path) -> None:
    (folder / "bad.csv").write_text("1,2\n3,x\n")
    before = files(folder)
    result = run("matrix", "inverse", "bad.csv", "--out", "x.npy")
    assert_bad_input(result)
    assert "bad.csv" in result.stderr
    assert files(folder) == before


def test_ragged_rows(folder: Path) -> None:
    (folder / "ragged.txt").write_text("1 2\n3\n")
    result = run("matrix", "inverse", "ragged.txt", "--out", "x.npy")
    assert_bad_input(result)
    assert "ragged.txt" in result.stderr
    assert not (folder / "x.npy").exists()


def test_non_square_for_inverse(folder: Path) -> None:
    np.save(folder / "wide.npy", np.ones((2, 3)))
    before = files(folder)
    result = run("matrix", "inverse", "wide.npy", "--out", "x.npy")
    assert_bad_input(result)
    assert "square" in result.stderr
    assert files(folder) == before


def test_nan_in_the_file(folder: Path) -> None:
    (folder / "nan.csv").write_text("1,nan\n0,1\n")
    before = files(folder)
    result = run("matrix", "inverse", "nan.csv", "--out", "x.npy")
    assert_bad_input(result)
    assert "NaN" in result.stderr or "finite" in result.stderr
    assert files(folder) == before


def test_wrong_out_suffix_for_svd(folder: Path) -> None:
    before = files(folder)
    result = run("matrix", "svd", "m.npy", "--out", "out.npy")
    assert_bad_input(result)
    assert ".npz" in result.stderr
    assert files(folder) == before


def test_wrong_out_suffix_for_inverse(folder: Path) -> None:
    before = files(folder)
    result = run("matrix", "inverse", "m.npy", "--out", "out.npz")
    assert_bad_input(result)
    assert files(folder) == before


def test_wrong_plot_suffix(folder: Path) -> None:
    before = files(folder)
    result = run("matrix", "inverse", "m.npy", "--out", "x.npy", "--plot", "p.txt")
    assert_bad_input(result)
    assert files(folder) == before


def test_solve_without_b(folder: Path) -> None:
    before = files(folder)
    result = run("matrix", "solve", "m.csv", "--out", "x.npy")
    assert_bad_input(result)
    assert "right-hand side" in result.stderr
    assert files(folder) == before


def test_b_given_where_not_needed(folder: Path) -> None:
    result = run("matrix", "inverse", "m.csv", "b.csv")
    assert_bad_input(result)


def test_solve_with_mismatched_b(folder: Path) -> None:
    np.savetxt(folder / "b4.csv", np.ones(4), delimiter=",")
    before = files(folder)
    result = run("matrix", "solve", "m.csv", "b4.csv", "--out", "x.npy")
    assert_bad_input(result)
    assert "`b`" in result.stderr
    assert files(folder) == before


def test_low_rank_without_k(folder: Path) -> None:
    result = run("matrix", "low-rank", "m.csv")
    assert_bad_input(result)
    assert "--k" in result.stderr


def test_bad_k(folder: Path) -> None:
    result = run("matrix", "svd", "m.csv", "--k", "7", "--out", "out.npz")
    assert_bad_input(result)
    assert "`k`" in result.stderr
    assert not (folder / "out.npz").exists()


@pytest.mark.parametrize("op", ["inverse", "pinv", "svd", "eigh"])
def test_unknown_solver(folder: Path, op: str) -> None:
    before = files(folder)
    out = "out.npz" if op in ("svd", "eigh") else "out.npy"
    result = run("matrix", op, "m.npy", "--solver", "nonsense", "--out", out)
    assert_bad_input(result)
    assert "nonsense" in result.stderr
    assert files(folder) == before


def test_non_symmetric_for_eigh(folder: Path) -> None:
    result = run("matrix", "eigh", "m.npy", "--out", "out.npz")
    assert_bad_input(result)
    assert "symmetric" in result.stderr
    assert not (folder / "out.npz").exists()


# -- the inverse-solvers comparison ------------------------------------------------------------------------------------


def test_inverse_solvers_json(folder: Path) -> None:
    result = run("inverse-solvers", "--compare", "gd,auto", "--steps", "2000", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 4
    assert {r["matrix"] for r in rows} == {"random 4x4", "diag(1,2,3,4)"}
    gd = [r for r in rows if r["solver"] == "gd"]
    fast = [r for r in rows if r["solver"] != "gd"]
    assert len(gd) == 2 and len(fast) == 2
    for r in fast:
        assert r["steps_to_1e-6"] is not None and r["steps_to_1e-6"] < 30
    for r in gd:
        assert r["steps_to_1e-6"] is None or r["steps_to_1e-6"] > max(f["steps_to_1e-6"] for f in fast)
        assert r["steps"] <= 2000


def test_the_old_command_name_still_runs_but_is_not_listed(folder: Path) -> None:
    assert run("seed003", "--compare", "auto", "--steps", "50").exit_code == 0
    listing = run("--help").output
    assert "inverse-solvers" in listing and "seed003" not in listing


def test_inverse_solvers_plot(folder: Path) -> None:
    result = run("inverse-solvers", "--compare", "gd,auto", "--steps", "2000", "--plot", "p.png")
    assert result.exit_code == 0, result.output
    assert (folder / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "X M = I by optimisation" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("--compare", "nonsense"),
        ("--compare", "gd,nonsense"),
        ("--compare", ","),
        ("--steps", "0"),
        ("--plot", "p.txt"),
    ],
    ids=["unknown", "one-unknown", "empty", "zero-steps", "plot-suffix"],
)
def test_inverse_solvers_bad_options(folder: Path, args: tuple[str, str]) -> None:
    before = files(folder)
    result = run("inverse-solvers", *args)
    assert_bad_input(result)
    assert files(folder) == before


# -- the real console script ------------------------------------------------------------------------------------------


def console(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    return subprocess.run(
        [sys.executable, "-m", "lossfit.cli", *args], cwd=folder, capture_output=True, text=True, env=env, timeout=120
    )


def test_console_script_bad_input_has_no_traceback(folder: Path) -> None:
    (folder / "bad.csv").write_text("1,2\n3,x\n")
    done = console(folder, "matrix", "inverse", "bad.csv", "--out", "x.npy")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [done.stderr.strip()] and done.stderr.startswith("lossfit: error: bad.csv")
    assert "Traceback" not in done.stderr + done.stdout
    assert not (folder / "x.npy").exists()


def test_empty_file_gives_one_line_and_no_warning(folder: Path) -> None:
    (folder / "empty.csv").write_text("")
    # Outside pytest a warning is printed on stderr beside the error line; here it is recorded instead.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run("matrix", "inverse", "empty.csv", "--out", "x.npy")
    assert not (folder / "x.npy").exists()
    assert_bad_input(result)
    assert result.stderr == "lossfit: error: empty.csv: holds no numbers\n"
    assert [str(w.message) for w in caught] == []
