"""Cohorts on Dask (:mod:`lossfit.scale`, ``lossfit register-many``): ground truth recovered on a two-worker local
cluster, bit-identical to in-process registration, resumed runs, failed pairs, bad manifests, the CLI."""

from __future__ import annotations

import csv
import json
import socket
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import registration_pairs as P
from lossfit.cli import app
from lossfit.errors import InputFileError, OutputError
from lossfit.registration import load_image, register
from lossfit.scale import Pair, read_manifest, register_many

pydicom = pytest.importorskip("pydicom")
distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
CT = Path(str(pydicom.data.get_testdata_file("CT_small.dcm")))
RUN_FILES = ["registration.png", "transform.json", "transform.tfm", "warped.nii.gz"]
# (rotation in degrees, shift in mm) of each pair's known warp
WARPS = [(4.0, (2.0, -1.5)), (-3.0, (-1.0, 2.5)), (6.0, (3.0, 1.0)), (-5.0, (0.5, -3.0))]


def _matrix(out: Path, ident: str) -> torch.Tensor:
    return torch.tensor(json.loads((out / ident / "transform.json").read_text())["matrix"], dtype=torch.float64)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[tuple[str, Path, Path]], dict[str, torch.Tensor]]:
    return P.ct_cohort(tmp_path_factory.mktemp("cohort"), WARPS)


def test_a_two_worker_cluster_recovers_each_warp_bit_identical_to_in_process(
    client: object, data: tuple[list[tuple[str, Path, Path]], dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    pairs, truth = data
    out = tmp_path / "out"
    result = register_many(pairs, out, client=client, transform="rigid")
    assert result.success, result.rows
    assert len({row["worker"] for row in result.rows}) == 2  # both workers took pairs
    with (out / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == ["s0", "s1", "s2", "s3"]
    assert all(r["success"] == "True" and float(r["metric_answer"]) < float(r["metric_start"]) for r in rows)
    assert json.loads((out / "summary.json").read_text())["counts"] == result.counts
    assert sorted(p.name for p in out.iterdir()) == ["s0", "s1", "s2", "s3", "summary.csv", "summary.json"]
    for ident, fixed, moving in pairs:
        assert sorted(p.name for p in (out / ident).iterdir()) == RUN_FILES
        matrix = _matrix(out, ident)
        assert float((matrix[:2, :2] - truth[ident][:2, :2]).abs().max()) < 2e-3
        centre = torch.tensor([*load_image(CT).center, 1.0], dtype=torch.float64)
        assert float((matrix @ centre - truth[ident] @ centre).norm()) < 0.25  # mm, where the image is
        # The same pair registered in-process, one thread: the same bits.
        alone = register(load_image(fixed), load_image(moving), "rigid")
        assert torch.equal(alone.matrix, matrix)
    assert not [p.name for p in out.rglob(".*")]  # no staging folders left behind


def test_a_resumed_run_skips_the_pairs_done_and_does_the_rest(
    client: object, data: tuple[list[tuple[str, Path, Path]], dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    pairs, _ = data
    out = tmp_path / "out"
    first = register_many(pairs[:2], out, client=client, transform="translation")
    assert first.success
    stamps = {i: (out / i / "transform.json").stat().st_mtime_ns for i in ("s0", "s1")}
    with pytest.raises(OutputError, match="--resume") as refused:
        register_many(pairs[:3], out, client=client, transform="translation")
    assert len(str(refused.value).splitlines()) == 1
    seen: list[tuple[int, int]] = []
    second = register_many(
        pairs[:3], out, client=client, resume=True, transform="translation", progress=lambda d, t: seen.append((d, t))
    )
    assert second.success and [r["resumed"] for r in second.rows] == [True, True, False]
    assert [r["time_s"] for r in second.rows[:2]] == [r["time_s"] for r in first.rows]
    assert {i: (out / i / "transform.json").stat().st_mtime_ns for i in ("s0", "s1")} == stamps
    assert seen[0] == (2, 3) and seen[-1] == (3, 3)
    assert sorted(p.name for p in (out / "s2").iterdir()) == RUN_FILES
    # Another transform: the recorded pairs do not match and are run again.
    third = register_many(pairs[:1], out, client=client, resume=True, transform="rigid")
    assert [r["resumed"] for r in third.rows] == [False]
    assert json.loads((out / "s0" / "transform.json").read_text())["transform"] == "rigid"


def test_a_pair_with_a_corrupt_file_is_recorded_with_its_reason_and_the_others_go_on(
    client: object, data: tuple[list[tuple[str, Path, Path]], dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    pairs, _ = data
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b not really gzip" * 10)
    cohort = [pairs[0], ("broken", pairs[1][1], corrupt)]
    result = register_many(cohort, tmp_path / "out", client=client, transform="translation")
    assert not result.success and result.counts.get("error") == 1
    good, bad = result.rows
    assert good["success"] and (tmp_path / "out" / "s0" / "transform.json").is_file()
    assert bad["status"] == "error" and bad["message"] and "\n" not in bad["message"]
    assert not (tmp_path / "out" / "broken").exists()
    with (tmp_path / "out" / "summary.csv").open() as handle:
        assert [r["status"] for r in csv.DictReader(handle)] == [good["status"], "error"]


def test_an_unreachable_scheduler_fails_clearly_within_seconds(
    data: tuple[list[tuple[str, Path, Path]], dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    began = time.perf_counter()
    with pytest.raises(ConnectionError, match=f"tcp://127.0.0.1:{port}: no Dask scheduler answered"):
        register_many(data[0][:1], tmp_path / "out", client=f"tcp://127.0.0.1:{port}", connect_timeout=1.0)
    assert time.perf_counter() - began < 10
    cli = runner.invoke(app, ["register-many", str(_manifest(tmp_path, data[0][:1])), "--out", str(tmp_path / "o")]
                        + ["--scheduler", f"tcp://127.0.0.1:{port}"])  # fmt: skip
    assert cli.exit_code == 2 and len(cli.stderr.strip().splitlines()) == 1
    assert "no Dask scheduler answered" in cli.stderr and not (tmp_path / "o").exists()


def _manifest(folder: Path, pairs: list[tuple[str, Path, Path]], extra: str = "") -> Path:
    path = folder / "manifest.csv"
    lines = ["id,fixed,moving" + (",transform" if extra else "")]
    lines += [f"{i},{f},{m}" + (f",{extra}" if extra else "") for i, f, m in pairs]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_manifest_resolves_paths_against_its_folder_and_reads_options(tmp_path: Path) -> None:
    (tmp_path / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "b.nii.gz").write_bytes(b"x")
    path = tmp_path / "m.csv"
    path.write_text("id,fixed,moving,transform,samples\np1,a.nii.gz,b.nii.gz,rigid,\np2,a.nii.gz,b.nii.gz,,500\n")
    assert read_manifest(path) == [
        Pair("p1", tmp_path / "a.nii.gz", tmp_path / "b.nii.gz", {"transform": "rigid"}),
        Pair("p2", tmp_path / "a.nii.gz", tmp_path / "b.nii.gz", {"samples": 500}),
    ]


@pytest.mark.parametrize(
    ("text", "error", "expected"),
    [
        ("id,fixed\np1,a.nii.gz\n", ValueError, "lacks the column(s) moving"),
        (
            "id,fixed,moving\np1,a.nii.gz,b.nii.gz\np2,a.nii.gz,gone.nii.gz\n",
            InputFileError,
            "row 3 (id p2): the moving",
        ),
        ("id,fixed,moving\np1,a.nii.gz,b.nii.gz\nP1,a.nii.gz,b.nii.gz\n", ValueError, "row 3: id 'P1' repeats"),
        ("id,fixed,moving\n../up,a.nii.gz,b.nii.gz\n", ValueError, "row 2: id '../up' is not a safe folder name"),
        ("id,fixed,moving,colour\np1,a.nii.gz,b.nii.gz,red\n", ValueError, "unknown column 'colour'"),
        ("id,fixed,moving,samples\np1,a.nii.gz,b.nii.gz,many\n", ValueError, "row 2: samples must be int"),
        ("id,fixed,moving,transform\np1,a.nii.gz,b.nii.gz,warp\n", ValueError, "row 2: transform must be one of"),
    ],
)
def test_a_bad_manifest_is_one_line_naming_the_row(
    tmp_path: Path, text: str, error: type[Exception], expected: str
) -> None:
    (tmp_path / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "b.nii.gz").write_bytes(b"x")
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(error) as caught:
        read_manifest(path)
    message = str(caught.value)
    assert expected in message and len(message.splitlines()) == 1
    cli = runner.invoke(app, ["register-many", str(path), "--out", str(tmp_path / "out")])
    assert cli.exit_code == 2 and cli.stderr.strip() == f"lossfit: error: {message}"
    assert not (tmp_path / "out").exists()


def test_the_command_registers_a_manifest_on_one_local_worker(
    data: tuple[list[tuple[str, Path, Path]], dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    manifest = _manifest(tmp_path, data[0][:2], extra="translation")
    out = tmp_path / "out"
    cli = runner.invoke(app, ["register-many", str(manifest), "--out", str(out), "--workers", "1", "--json"])
    assert cli.exit_code == 0, cli.output
    summary = json.loads(cli.stdout)
    assert summary["success"] and [r["id"] for r in summary["rows"]] == ["s0", "s1"]
    assert len({r["worker"] for r in summary["rows"]}) == 1
    assert sorted(p.name for p in out.iterdir()) == ["s0", "s1", "summary.csv", "summary.json"]
    assert json.loads((out / "s1" / "transform.json").read_text())["transform"] == "translation"
    again = runner.invoke(app, ["register-many", str(manifest), "--out", str(out)])
    assert again.exit_code == 2 and "--resume" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    inside = runner.invoke(app, ["register-many", str(manifest), "--out", str(tmp_path)])
    assert inside.exit_code == 2 and "holds the input" in inside.stderr


def test_pairs_registered_in_batched_tasks_agree_with_one_by_one(
    tmp_path: Path, data: tuple[list[tuple[str, Path, Path]], dict[str, torch.Tensor]], client: object
) -> None:
    """``batch=3``: same-shaped pairs go through one batched call per task (4 pairs: a task of 3, then 1); each
    pair's answer agrees with registering it alone to the solver's tolerance, and each folder is whole."""
    pairs, truth = data
    out = tmp_path / "batched"
    result = register_many(pairs, out, client=client, batch=3, transform="rigid")
    assert result.success, result.rows
    alone = register_many(pairs, tmp_path / "alone", client=client, transform="rigid")
    for ident in truth:
        assert sorted(p.name for p in (out / ident).iterdir()) == RUN_FILES
        torch.testing.assert_close(_matrix(out, ident), _matrix(tmp_path / "alone", ident), rtol=0, atol=1e-4)
        assert float((_matrix(out, ident)[:2, :2] - truth[ident][:2, :2]).abs().max()) < 2e-3
    assert [r["id"] for r in result.rows] == [r["id"] for r in alone.rows]
    with pytest.raises(ValueError, match="`batch` must be"):
        register_many(pairs, tmp_path / "bad", client=client, batch=0)


def test_tasks_that_ask_for_a_worker_resource_run_on_workers_that_hold_it(
    data: tuple[list[tuple[str, Path, Path]], dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    # GPU workers are Dask workers holding a "GPU" resource; each task asks for one unit. Here the local cluster's
    # two workers hold one each and the device is the CPU (no GPU on the machine that runs this suite): the tasks
    # must still be placed and give the in-process answers bit for bit.
    pairs, _ = data
    result = register_many(
        pairs[:2], tmp_path / "out", workers=2, resources={"GPU": 1}, device="cpu", transform="rigid"
    )
    assert result.success, result.rows
    for ident, fixed, moving in pairs[:2]:
        alone = register(load_image(fixed), load_image(moving), "rigid")
        assert torch.equal(alone.matrix, _matrix(tmp_path / "out", ident))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"device": "quantum"}, "`device` must be a torch device name"),
        ({"resources": {"GPU": 0}}, "`resources` must map resource names to positive amounts"),
        ({"resources": ["GPU"]}, "`resources` must map resource names to positive amounts"),
    ],
)
def test_bad_placement_is_refused_before_any_work(
    data: tuple[list[tuple[str, Path, Path]], dict[str, torch.Tensor]], tmp_path: Path, options: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        register_many(data[0][:1], tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_device_without_a_gpu_for_a_local_cluster_is_a_clear_error(
    data: tuple[list[tuple[str, Path, Path]], dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="no CUDA device"):
        register_many(data[0][:1], tmp_path / "out", device="cuda")
    result = runner.invoke(app, ["register-many", str(_manifest(tmp_path, data[0][:1])), "--out",
                                 str(tmp_path / "cli"), "--device", "cuda"])  # fmt: skip
    assert result.exit_code == 2 and "no CUDA device" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "cli").exists()
