"""Cohorts on a real cluster (:mod:`lossfit.scale`): a scheduler and workers started as separate processes on
localhost and reached by address, and a worker killed in the middle of a run (its pairs are run again elsewhere,
each pair's folder is still written once and whole)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import registration_pairs as P
from lossfit.registration import load_image
from lossfit.scale import as_pairs, register_many, register_pair

pydicom = pytest.importorskip("pydicom")
distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.usefixtures("one_thread")
CT = Path(str(pydicom.data.get_testdata_file("CT_small.dcm")))
RUN_FILES = ["registration.png", "transform.json", "transform.tfm", "warped.nii.gz"]
# (rotation in degrees, shift in mm) of each pair's known warp
WARPS = [(4.0, (2.0, -1.5)), (-3.0, (-1.0, 2.5)), (6.0, (3.0, 1.0)), (-5.0, (0.5, -3.0)), (2.0, (-2.0, -2.0))]
SCHEDULER_OPTIONS = ("--host", "127.0.0.1", "--port", "0", "--no-dashboard")
# No nanny: the process started is the worker, so a SIGKILL to it kills the worker (a nanny would restart it); a
# worker left without its scheduler exits by itself after --death-timeout.
WORKER_OPTIONS = ("--nthreads", "1", "--nworkers", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1",
                  "--death-timeout", "60")  # fmt: skip
START_S = 60.0  # a scheduler file, then the workers registered: seconds, on a loaded two-core machine


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[tuple[str, Path, Path]], dict[str, torch.Tensor]]:
    return P.ct_cohort(tmp_path_factory.mktemp("cohort"), WARPS)


class Cluster:
    """A scheduler and workers, each a process of its own: ``address``, the worker processes by name, and
    ``client``, the test's own connection (to watch the cluster; :func:`register_many` gets the address)."""

    def __init__(self, address: str, workers: dict[str, subprocess.Popen[bytes]], client: Any) -> None:
        self.address, self.workers, self.client = address, workers, client

    def pids(self) -> dict[str, int]:
        """The worker processes' ids by worker address, as the workers give them."""
        return dict(self.client.run(os.getpid))


def _log_tails(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted(logs.glob("*.log")))


@contextlib.contextmanager
def _cluster(folder: Path, n_workers: int) -> Iterator[Cluster]:
    """Start ``dask scheduler`` and ``n_workers`` ``dask worker`` processes on 127.0.0.1 (no nanny: the process
    started is the worker, so killing it kills the worker); stop them all on the way out, whatever happened."""
    logs = folder / "logs"
    logs.mkdir()
    scheduler_file = folder / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    processes: list[subprocess.Popen[bytes]] = []
    client = None

    def start(name: str, *args: str) -> subprocess.Popen[bytes]:
        with (logs / f"{name}.log").open("wb") as log:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(
                [sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        processes.append(process)
        return process

    try:
        start(
            "scheduler", "distributed.cli.dask_scheduler", *SCHEDULER_OPTIONS, "--scheduler-file", str(scheduler_file)
        )
        deadline = time.monotonic() + START_S
        address = None
        while address is None:
            assert processes[0].poll() is None, f"the scheduler exited\n{_log_tails(logs)}"
            assert time.monotonic() < deadline, f"no scheduler file after {START_S:g} s\n{_log_tails(logs)}"
            time.sleep(0.1)
            with contextlib.suppress(OSError, ValueError, KeyError):  # not there yet, or half written
                address = str(json.loads(scheduler_file.read_text())["address"])
        workers = {
            f"w{i}": start(f"w{i}", "distributed.cli.dask_worker", address, "--name", f"w{i}", *WORKER_OPTIONS)
            for i in range(n_workers)
        }
        client = distributed.Client(address, timeout=START_S)
        try:
            client.wait_for_workers(n_workers, timeout=START_S)
        except TimeoutError:
            pytest.fail(f"{n_workers} workers did not register within {START_S:g} s\n{_log_tails(logs)}")
        yield Cluster(address, workers, client)
    finally:
        if client is not None:
            client.close()
        for process in reversed(processes):  # each worker, then the scheduler (a worker stops faster with it)
            if process.poll() is None:  # not one the test killed and reaped
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=15)


def _summary_ids(out: Path) -> list[str]:
    with (out / "summary.csv").open() as handle:
        return [row["id"] for row in csv.DictReader(handle)]


def _check_folders(out: Path, ids: list[str]) -> None:
    """Every pair's folder complete, nothing else in ``out`` and no staging folder (``.<id>.*``) left behind."""
    assert sorted(p.name for p in out.iterdir()) == sorted([*ids, "summary.csv", "summary.json"])
    for ident in ids:
        assert sorted(p.name for p in (out / ident).iterdir()) == RUN_FILES, ident
        recorded = json.loads((out / ident / "transform.json").read_text())
        assert recorded["cohort"]["row"]["id"] == ident
    assert not [p.name for p in out.rglob(".*")]


def test_a_scheduler_and_workers_in_processes_of_their_own_are_reached_by_address(
    data: tuple[list[tuple[str, Path, Path]], dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    pairs, truth = data
    out = tmp_path / "out"
    with _cluster(tmp_path, n_workers=2) as cluster:
        result = register_many(pairs[:3], out, client=cluster.address, transform="rigid")
        assert result.success, result.rows
        assert {row["worker"] for row in result.rows} <= set(cluster.pids())  # the cluster's workers did the pairs
        # The run closed its own connection only: the scheduler and both workers are still there.
        assert all(process.poll() is None for process in cluster.workers.values())
        assert len(cluster.pids()) == 2
    assert [row["id"] for row in result.rows] == _summary_ids(out) == ["s0", "s1", "s2"]
    assert json.loads((out / "summary.json").read_text())["counts"] == result.counts
    _check_folders(out, ["s0", "s1", "s2"])
    centre = torch.tensor([*load_image(CT).center, 1.0], dtype=torch.float64)
    for ident in ("s0", "s1", "s2"):
        matrix = torch.tensor(json.loads((out / ident / "transform.json").read_text())["matrix"], dtype=torch.float64)
        assert float((matrix[:2, :2] - truth[ident][:2, :2]).abs().max()) < 2e-3
        assert float((matrix @ centre - truth[ident] @ centre).norm()) < 0.25  # mm, where the image is


def test_a_worker_killed_mid_run_leaves_every_pair_done_once_and_whole(
    data: tuple[list[tuple[str, Path, Path]], dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    pairs, _ = data
    out = tmp_path / "out"
    ids = [ident for ident, _, _ in pairs]
    killed: dict[str, object] = {}
    with _cluster(tmp_path, n_workers=2) as cluster:
        pids = cluster.pids()
        assert sorted(pids.values()) == sorted(p.pid for p in cluster.workers.values())

        def kill_a_busy_worker(done: int, total: int) -> None:
            """Once the first pair is in, kill (SIGKILL) a worker that is running a pair."""
            if done != 1 or killed:
                return
            busy: dict[str, list[str]] = {}
            deadline = time.monotonic() + 30
            while not busy and time.monotonic() < deadline:
                busy = {w: list(keys) for w, keys in cluster.client.processing().items() if keys}
                time.sleep(0.05)
            assert busy, "no worker was running a pair after the first one finished"
            victim = sorted(busy)[0]
            os.kill(pids[victim], signal.SIGKILL)
            killed.update(address=victim, lost=[key.split("-", 2)[2] for key in busy[victim]])

        result = register_many(pairs, out, client=cluster.address, transform="translation", progress=kill_a_busy_worker)
        process = next(p for p in cluster.workers.values() if p.pid == pids[str(killed["address"])])
        assert process.wait(timeout=10) == -signal.SIGKILL
        survivor = next(w for w in pids if w != killed["address"])
        assert list(cluster.pids()) == [survivor]
    assert result.success, result.rows
    assert [row["id"] for row in result.rows] == _summary_ids(out) == ids  # one row per pair, each once
    counts = json.loads((out / "summary.json").read_text())["counts"]
    assert counts == result.counts and sum(counts.values()) == len(ids)
    lost = killed["lost"]
    assert isinstance(lost, list) and lost
    for row in result.rows:
        if row["id"] in lost:  # the killed worker's pairs were run again by the other one
            assert row["worker"] == survivor, row
    _check_folders(out, ids)


def test_a_resumed_run_removes_what_a_dead_worker_left_half_written(
    data: tuple[list[tuple[str, Path, Path]], dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    """A worker killed while writing leaves its staged folder (or an old one set aside) beside the pair's; the
    run sweeps them once its tasks are done, here a resumed run with every pair recorded (no cluster needed)."""
    out = tmp_path / "out"
    out.mkdir()
    pairs = as_pairs(data[0][:2])
    for pair in pairs:  # the tasks, in-process: the folders a finished run leaves
        assert register_pair(pair, out, {"transform": "translation"})["success"]
    for name in (".s0.k3x9_a1b.lossfit", ".s1.q2w3e4r5.old"):
        (out / name).mkdir()
        (out / name / "transform.json").write_text("{")  # half written
    (out / ".s0.notes").write_text("the user's")  # not lossfit's: kept
    result = register_many(pairs, out, resume=True, transform="translation")
    assert [row["resumed"] for row in result.rows] == [True, True]
    assert sorted(p.name for p in out.iterdir()) == [".s0.notes", "s0", "s1", "summary.csv", "summary.json"]
