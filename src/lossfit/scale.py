"""Many registrations: a cohort of image pairs, one Dask task per pair, each pair's run folder written as a whole.

:func:`register_many` runs every pair of a cohort (a list of ``(id, fixed, moving)`` or a manifest read by
:func:`read_manifest`) as one task on a ``distributed.Client``: a local cluster started for the run by default, or
any scheduler by its address. Each task loads its two images, registers them with
:func:`lossfit.registration.register` and writes ``out/<id>/`` with the writer of ``lossfit register --out``
(transform.tfm, transform.json, the warped image, registration.png; staged beside and swapped in as a whole).
``out/summary.csv`` and ``out/summary.json`` hold one row per pair.

Convention:
    A pair that fails (an unreadable file, images that do not overlap) is a row with status ``"error"`` and its
    one-line reason; the other pairs go on. A pair's options are the run's keyword options, overridden by the
    pair's own (a manifest's option columns). Each task uses one torch thread, so a pair gives bit-identical
    matrices in a task and in :func:`register_pair` called in-process with one thread.

Example:
    >>> from lossfit.scale import read_manifest, register_many  # doctest: +SKIP
    >>> cohort = register_many(read_manifest("cohort.csv"), "out", workers=2, transform="rigid")  # doctest: +SKIP
    >>> cohort.success, cohort.counts  # doctest: +SKIP
    (True, {'converged': 40})
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lossfit.errors import InputFileError, OutputError
from lossfit.io import atomic_write_text, first_line

# Per-pair options (manifest columns and keyword options) and how a manifest's text becomes a value.
OPTION_TYPES: dict[str, Callable[[str], Any]] = {
    "transform": str,
    "metric": str,
    "init": str,
    "loss": str,
    "sampling": str,
    "solver": str,
    "samples": int,
    "seed": int,
    "max_steps": int,
    "bins": int,
    "window": int,
    "smoothing": float,
    "ftol": float,
    "xtol": float,
    "gtol": float,
}
SUMMARY_COLUMNS = (
    "id", "status", "success", "metric_start", "metric_answer", "time_s", "worker", "resumed", "message",
    "fixed", "moving",
)  # fmt: skip
CONNECT_TIMEOUT_S = 5.0
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_RESERVED = ("summary.csv", "summary.json")


@dataclass(frozen=True)
class Pair:
    """One pair of a cohort: its id (the name of its folder in ``out``), two image paths (absolute) and its own
    options (empty for the run's)."""

    id: str
    fixed: Path
    moving: Path
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CohortResult:
    """What :func:`register_many` returns.

    Attributes:
        rows: one summary dict per pair, in the cohort's order (keys :data:`SUMMARY_COLUMNS`).
        success: every pair succeeded.
        counts: the number of pairs per status (``"converged"``, ``"error"``, ...).
        time: seconds for the whole run (cluster start included).
        out: the output folder.
    """

    rows: tuple[dict[str, Any], ...]
    success: bool
    counts: dict[str, int]
    time: float
    out: Path

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe summary (NaN and infinity as None)."""
        rows = [
            {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in r.items()} for r in self.rows
        ]
        return {"success": self.success, "counts": self.counts, "time_s": self.time, "out": str(self.out), "rows": rows}


def read_manifest(path: str | os.PathLike[str]) -> list[Pair]:
    """Read a cohort from a CSV file with columns ``id``, ``fixed``, ``moving`` and optional option columns
    (``transform``, ``metric``, ``samples``, ``seed``, ... see :data:`OPTION_TYPES`; a blank cell is the run's
    default). Relative image paths are resolved against the manifest's folder, not the working directory.

    Raises:
        InputFileError: an unreadable manifest, or an image file that does not exist (naming the row).
        ValueError: a missing or unknown column, a bad option value, a duplicate id or an id that is not a safe
            folder name (naming the row; rows are counted as lines of the file, the header being line 1).
    """
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"{p}: no such file" if not p.exists() else f"{p}: not a file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{p}: cannot be read ({first_line(exc)})") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in ("id", "fixed", "moving") if c not in columns]
    if missing:
        raise ValueError(f"{p}: the manifest lacks the column(s) {', '.join(missing)}; it needs id, fixed, moving")
    unknown = [c for c in columns if c not in ("id", "fixed", "moving") and c not in OPTION_TYPES]
    if unknown:
        raise ValueError(f"{p}: unknown column {unknown[0]!r}; option columns are {', '.join(OPTION_TYPES)}")
    rows = []
    for line, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        where = f"{p}: row {line}"
        options = {}
        for name in columns:
            if name in OPTION_TYPES and row.get(name):
                try:
                    options[name] = OPTION_TYPES[name](row[name])
                except ValueError:
                    raise ValueError(
                        f"{where}: {name} must be {OPTION_TYPES[name].__name__}; got {row[name]!r}"
                    ) from None
        images = {}
        for name in ("fixed", "moving"):
            if not row.get(name):
                raise ValueError(f"{where}: the {name} cell is blank")
            image = Path(row[name]).expanduser()
            images[name] = image if image.is_absolute() else p.parent / image
        rows.append((where, {"id": row.get("id", ""), **images, "options": options}))
    if not rows:
        raise ValueError(f"{p}: the manifest has no rows")
    return _check_pairs(rows)


def as_pairs(pairs: Iterable[Any]) -> list[Pair]:
    """Pairs from :class:`Pair` objects, ``(id, fixed, moving)`` tuples or dicts with those keys (and option
    keys); relative paths are taken against the working directory. Checked as :func:`read_manifest` checks."""
    rows = []
    for index, item in enumerate(pairs):
        where = f"pairs[{index}]"
        if isinstance(item, Pair):
            entry = {"id": item.id, "fixed": item.fixed, "moving": item.moving, "options": dict(item.options)}
        elif isinstance(item, Mapping):
            if not {"id", "fixed", "moving"} <= set(item):
                raise ValueError(f"{where}: a pair needs the keys id, fixed, moving; got {sorted(item)}")
            extra = {k: v for k, v in item.items() if k not in ("id", "fixed", "moving")}
            entry = {"id": item["id"], "fixed": item["fixed"], "moving": item["moving"], "options": extra}
        elif isinstance(item, (tuple, list)) and len(item) == 3:
            entry = {"id": item[0], "fixed": item[1], "moving": item[2], "options": {}}
        else:
            raise TypeError(f"{where}: a pair must be (id, fixed, moving), a dict or a Pair; got {item!r}")
        rows.append((where, entry))
    if not rows:
        raise ValueError("`pairs` is empty")
    return _check_pairs(rows)


def _check_pairs(rows: list[tuple[str, dict[str, Any]]]) -> list[Pair]:
    seen: dict[str, str] = {}
    pairs = []
    for where, entry in rows:
        ident = str(entry["id"])
        if not _SAFE_ID.match(ident) or ident.lower() in _RESERVED:
            raise ValueError(
                f"{where}: id {ident!r} is not a safe folder name (letters, digits, '.', '_', '-'; starting with a "
                "letter or digit; at most 128 characters; not summary.csv/summary.json)"
            )
        if ident.lower() in seen:  # case-insensitive: two ids must not share a folder on macOS or Windows
            raise ValueError(f"{where}: id {ident!r} repeats the id of {seen[ident.lower()]}")
        seen[ident.lower()] = where
        check_options(entry["options"], f"{where}: ")
        images = {}
        for name in ("fixed", "moving"):
            image = Path(entry[name]).absolute()
            if not image.exists():
                raise InputFileError(f"{where} (id {ident}): the {name} image {image} does not exist")
            images[name] = image
        pairs.append(Pair(ident, images["fixed"], images["moving"], dict(entry["options"])))
    return pairs


def check_options(options: Mapping[str, Any], prefix: str = "") -> None:
    """Refuse, before any work, an option :func:`register` does not take or a transform/metric it does not know."""
    from lossfit.registration.metrics import METRICS
    from lossfit.registration.register import TRANSFORMS

    for name, value in options.items():
        if name not in OPTION_TYPES:
            raise ValueError(f"{prefix}unknown option {name!r}; the options are {', '.join(OPTION_TYPES)}")
        if name == "transform" and value not in TRANSFORMS:
            raise ValueError(f"{prefix}transform must be one of {', '.join(TRANSFORMS)}; got {value!r}")
        if name == "metric" and value not in METRICS:
            raise ValueError(f"{prefix}metric must be one of {', '.join(METRICS)}; got {value!r}")


def register_pair(
    pair: Pair, out: str | os.PathLike[str], options: Mapping[str, Any] | None = None, device: str | None = None
) -> dict[str, Any]:
    """Register one pair and write ``out/<id>/`` (the task :func:`register_many` runs; callable in-process).

    Uses one torch thread; the images are moved to ``device`` (a torch device name; None: where they load).
    Returns the pair's summary row (``time_s``: seconds loading and registering, before the writes); a failure is
    a row with status ``"error"`` and the one-line reason in ``message``, never an exception.
    """
    import torch

    from lossfit.registration import load_image, register
    from lossfit.registration.outputs import output_suffix, registration_summary, warped_name, write_registration

    torch.set_num_threads(1)
    began = time.perf_counter()
    row: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS)
    row.update(id=pair.id, fixed=str(pair.fixed), moving=str(pair.moving), resumed=False, worker=_worker())
    chosen = {**(options or {}), **pair.options}
    try:
        result = register(_on(load_image(pair.fixed), device), _on(load_image(pair.moving), device), **chosen)
        checks = result.checks if isinstance(result.checks, dict) else {}
        row.update(status=result.status.name.lower(), success=bool(result.success), message=result.message,
                   metric_start=checks.get("metric_start"), metric_answer=checks.get("metric_answer"))  # fmt: skip
        suffix = output_suffix(None, pair.fixed)
        summary = registration_summary(result, {"fixed": pair.fixed, "moving": pair.moving})
        row["time_s"] = time.perf_counter() - began
        summary["cohort"] = {"row": row, "options": chosen}
        Path(out).mkdir(exist_ok=True)
        write_registration(
            result, result.warped, warped_name(suffix, result.warped), Path(out) / pair.id, summary, None
        )
    except Exception as exc:  # a pair's failure is its row; the cohort goes on
        row.update(status="error", success=False, message=first_line(exc), time_s=time.perf_counter() - began)
    return row


def register_group(
    pairs: Sequence[Pair],
    out: str | os.PathLike[str],
    options: Mapping[str, Any] | None = None,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Register several pairs with the same options in batched calls (one per set of same-shaped images) and write
    each pair's ``out/<id>/``, as :func:`register_pair` does one; the task of ``register_many(..., batch=N)``.

    A batch that cannot be registered together (an image that will not load, a constant image) falls back to one
    call per pair, so each pair still gets its own row and reason. ``time_s`` is the batch's time shared evenly.
    """
    import torch

    from lossfit.registration import load_image, register

    torch.set_num_threads(1)
    chosen = {**(options or {}), **(pairs[0].options if pairs else {})}
    groups: dict[tuple[Any, ...], list[tuple[Pair, Any, Any]]] = {}
    rows: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        try:
            fixed, moving = _on(load_image(pair.fixed), device), _on(load_image(pair.moving), device)
        except Exception:
            rows[pair.id] = register_pair(pair, out, options, device)  # its own row, with the reason
            continue
        groups.setdefault((tuple(fixed.shape), tuple(moving.shape)), []).append((pair, fixed, moving))
    for members in groups.values():
        if len(members) == 1:
            rows[members[0][0].id] = register_pair(members[0][0], out, options, device)
            continue
        began = time.perf_counter()
        try:
            result = register([m[1] for m in members], [m[2] for m in members], **chosen)
        except Exception:
            for member in members:
                rows[member[0].id] = register_pair(member[0], out, options, device)
            continue
        share = (time.perf_counter() - began) / len(members)
        for i, (pair, _, _) in enumerate(members):
            rows[pair.id] = _write_pair(pair, result.pair(i), out, chosen, share)
    return [rows[pair.id] for pair in pairs]


def _on(image: Any, device: str | None) -> Any:
    return image if device is None else image.to(device=device)


def _write_pair(
    pair: Pair, result: Any, out: str | os.PathLike[str], chosen: Mapping[str, Any], seconds: float
) -> dict[str, Any]:
    """A registered pair's row, with its folder ``out/<id>/`` written as a whole."""
    from lossfit.registration.outputs import output_suffix, registration_summary, warped_name, write_registration

    row: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS)
    row.update(id=pair.id, fixed=str(pair.fixed), moving=str(pair.moving), resumed=False, worker=_worker())
    try:
        checks = result.checks if isinstance(result.checks, dict) else {}
        row.update(status=result.status.name.lower(), success=bool(result.success), message=result.message,
                   metric_start=checks.get("metric_start"), metric_answer=checks.get("metric_answer"),
                   time_s=seconds)  # fmt: skip
        summary = registration_summary(result, {"fixed": pair.fixed, "moving": pair.moving})
        summary["cohort"] = {"row": row, "options": dict(chosen)}
        Path(out).mkdir(exist_ok=True)
        suffix = output_suffix(None, pair.fixed)
        write_registration(
            result, result.warped, warped_name(suffix, result.warped), Path(out) / pair.id, summary, None
        )
    except Exception as exc:  # a pair's failure is its row; the cohort goes on
        row.update(status="error", success=False, message=first_line(exc))
    return row


def _worker() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return "local"


def recorded_row(pair: Pair, out: Path, options: Mapping[str, Any]) -> dict[str, Any] | None:
    """The summary row recorded in ``out/<id>/transform.json`` when it parses and was made from the same images
    and options; None otherwise (the pair is to be run)."""
    path = out / pair.id / "transform.json"
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
        cohort = recorded["cohort"]
        same = recorded["inputs"]["fixed"] == str(pair.fixed) and recorded["inputs"]["moving"] == str(pair.moving)
        same = same and cohort["options"] == {**options, **pair.options}
        row = dict(cohort["row"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {**row, "resumed": True} if same else None


def register_many(
    pairs: Sequence[Any],
    out: str | os.PathLike[str],
    *,
    client: Any = None,
    workers: int | None = None,
    resume: bool = False,
    progress: Callable[[int, int], None] | None = None,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    batch: int = 1,
    device: str | None = None,
    resources: Mapping[str, float] | None = None,
    **register_options: Any,
) -> CohortResult:
    """Register a cohort of pairs, one Dask task per pair, and write ``out/<id>/`` and ``out/summary.{csv,json}``.

    Args:
        pairs: :class:`Pair` objects (from :func:`read_manifest`), ``(id, fixed, moving)`` tuples or dicts with
            those keys plus option keys (see :func:`as_pairs`).
        out: the output folder (made when missing; its parent must exist).
        client: a ``distributed.Client``, a scheduler address (``"tcp://host:8786"``), or None to start a
            ``LocalCluster`` of ``workers`` processes (default 2, one thread each) for the run and close it after.
        workers: the local cluster's size (only when ``client`` is None).
        resume: skip the pairs whose ``out/<id>/transform.json`` parses and records the same images and options,
            reusing their recorded rows (``resumed=True``; a pair that ran but did not converge is not run again,
            a pair that failed has no transform.json and is); without it a folder holding a cohort's results is
            refused.
        progress: called as ``progress(done, total)`` as pairs finish (resumed ones count at the start).
        connect_timeout: seconds to wait for a scheduler given by address.
        batch: pairs per task, registered in batched calls where their images have the same shapes (one solver
            run, per-pair stopping and checks; see :func:`register_group`); 1 (the default): a task per pair.
            Batched answers agree with one-by-one ones to the solver's tolerance, not to the last bit.
        device: where each task registers (a torch device name, ``"cuda"``; None: the CPU). With a CUDA device
            every task asks for one unit of the workers' ``"GPU"`` resource unless ``resources`` says otherwise, so
            a worker runs one GPU task at a time; start GPU workers with ``dask worker ADDRESS --resources GPU=1``
            (a local cluster gets one worker per visible GPU, each with ``GPU=1``).
        resources: the Dask worker resources each task needs (``{"GPU": 1}``): tasks wait for workers that hold them.
        register_options: options for :func:`lossfit.registration.register` (see :data:`OPTION_TYPES`); a pair's
            own options override them.

    Returns:
        A :class:`CohortResult`. Pairs that fail are rows with status ``"error"``; the run goes on.

    Raises:
        ValueError, TypeError, InputFileError: bad pairs or options, before any work.
        OutputError: ``out`` holds a cohort's results and ``resume`` is False, or holds files that are not lossfit's.
        ConnectionError: no scheduler answered at the address within ``connect_timeout`` seconds.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"`batch` must be a whole number of pairs >= 1; got {batch!r}")
    device, resources, local_resources = _placement(device, resources, client)
    began = time.perf_counter()
    cohort = as_pairs(pairs)
    check_options(register_options)
    target = Path(out)
    check_cohort_folder(target, cohort, resume)
    rows: dict[str, dict[str, Any]] = {}
    if resume:
        for pair in cohort:
            row = recorded_row(pair, target, register_options)
            if row is not None:
                rows[pair.id] = row
    todo = [p for p in cohort if p.id not in rows]
    if progress is not None:
        progress(len(rows), len(cohort))
    if todo:
        with DaskClient(client, workers, connect_timeout, local_resources) as dask_client:
            target.mkdir(exist_ok=True)  # once a scheduler answered: a failed connection writes nothing
            placement = (device, resources)
            rows.update(
                _run(dask_client, todo, target, register_options, len(rows), len(cohort), progress, batch, placement)
            )
    _remove_stages(target, [p.id for p in cohort])  # a dead worker's half-written folder (its pair ran again)
    ordered = tuple(rows[p.id] for p in cohort)
    counts: dict[str, int] = {}
    for row in ordered:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    result = CohortResult(ordered, all(r["success"] for r in ordered), counts, time.perf_counter() - began, target)
    target.mkdir(exist_ok=True)
    atomic_write_text(target / "summary.json", json.dumps(result.to_dict(), indent=2) + "\n")
    atomic_write_text(target / "summary.csv", summary_csv(ordered))
    return result


def _run(
    client: Any,
    todo: list[Pair],
    out: Path,
    options: Mapping[str, Any],
    done: int,
    total: int,
    progress: Callable[[int, int], None] | None,
    batch: int = 1,
    placement: tuple[str | None, Mapping[str, float] | None] = (None, None),
) -> dict[str, dict[str, Any]]:
    from distributed import as_completed

    run_id = uuid.uuid4().hex[:8]  # unique keys: a scheduler shared by several runs never mixes their tasks
    groups = _groups(todo, batch)
    futures = {
        client.submit(
            register_group if len(group) > 1 else register_pair,
            group if len(group) > 1 else group[0],
            str(out),
            dict(options),
            placement[0],
            key=f"lossfit-{run_id}-{group[0].id}",
            pure=False,
            resources=None if placement[1] is None else dict(placement[1]),
        ): group
        for group in groups
    }
    rows = {}
    for future in as_completed(futures):
        group = futures[future]
        try:
            value = future.result()
            for answer in value if isinstance(value, list) else [value]:
                rows[answer["id"]] = answer
        except Exception as exc:  # the task itself was lost (a worker died too often): the pairs' rows say why
            for pair in group:
                lost: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS)
                lost.update(id=pair.id, fixed=str(pair.fixed), moving=str(pair.moving), status="error",
                            success=False, resumed=False, message=first_line(exc))  # fmt: skip
                rows[pair.id] = lost
        done += len(group)
        if progress is not None:
            progress(done, total)
    return rows


def _groups(pairs: list[Pair], batch: int) -> list[list[Pair]]:
    """Consecutive runs of up to ``batch`` pairs with the same own options (one task each; 1: a task per pair)."""
    groups: list[list[Pair]] = []
    for pair in pairs:
        last = groups[-1] if groups else None
        if last is not None and len(last) < batch and last[0].options == pair.options:
            last.append(pair)
        else:
            groups.append([pair])
    return groups


def _remove_stages(out: Path, ids: Iterable[str]) -> None:
    """Remove what a task left in ``out`` when its worker died while writing a pair's folder: the staged folder
    (``.<id>.<random>.lossfit``) or an old one set aside (``.<id>.<random>.old``; see :mod:`lossfit.run_folder`).
    Called once every task is done: the pair was run again elsewhere and its own folder is whole."""
    if not out.is_dir():
        return
    staged = re.compile(r"^\.(" + "|".join(re.escape(i) for i in ids) + r")\.[A-Za-z0-9_]+\.(lossfit|old)$")
    for entry in out.iterdir():
        if staged.match(entry.name) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


def _placement(
    device: str | None, resources: Mapping[str, float] | None, client: Any
) -> tuple[str | None, Mapping[str, float] | None, Mapping[str, float] | None]:
    """The device name, the resources each task asks for, and those a local cluster's workers get; checked."""
    import torch

    if device is not None:
        try:
            parsed = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(
                f"`device` must be a torch device name ('cpu', 'cuda', 'cuda:1'); got {device!r}"
            ) from None
        device = str(parsed)
        if parsed.type == "cuda":
            resources = {"GPU": 1} if resources is None else resources
            if client is None and not torch.cuda.is_available():
                raise ValueError(f"`device` is {device!r} but torch sees no CUDA device here for a local cluster")
    if resources is not None and not _amounts(resources):
        raise ValueError(f"`resources` must map resource names to positive amounts, as {{'GPU': 1}}; got {resources!r}")
    # A local cluster's workers hold what the tasks ask for (one unit each, at least what one task needs).
    local = None if resources is None else {k: max(1.0, float(v)) for k, v in resources.items()}
    return device, resources, local


def _amounts(resources: Any) -> bool:
    return isinstance(resources, Mapping) and all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
        for k, v in resources.items()
    )


class DaskClient:
    """A context manager giving a Client: the one given, one connected to an address, or a LocalCluster's (its
    workers holding ``resources``; with a CUDA device asked for, one worker per visible GPU by default)."""

    def __init__(
        self, client: Any, workers: int | None, timeout: float, resources: Mapping[str, float] | None = None
    ) -> None:
        self.given, self.workers, self.timeout, self.resources = client, workers, timeout, resources
        self.own: list[Any] = []

    def __enter__(self) -> Any:
        from distributed import Client, LocalCluster

        if self.given is not None and not isinstance(self.given, str):
            return self.given
        if isinstance(self.given, str):
            try:
                client = Client(self.given, timeout=self.timeout)
            except (OSError, TimeoutError) as exc:
                raise ConnectionError(
                    f"{self.given}: no Dask scheduler answered within {self.timeout:g} s ({first_line(exc)}); start "
                    "one (`dask scheduler`) or leave the address out to run on a local cluster"
                ) from None
            self.own.append(client)
            return client
        try:
            extra = {} if self.resources is None else {"resources": dict(self.resources)}
            cluster = LocalCluster(
                n_workers=self.workers or _local_workers(self.resources),
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                **extra,
            )
        except (OSError, RuntimeError) as exc:
            workers = self.workers or 2
            raise ConnectionError(f"a local cluster of {workers} workers failed to start ({first_line(exc)})") from None
        self.own.append(cluster)
        client = Client(cluster)
        self.own.append(client)
        return client

    def __exit__(self, *exc: object) -> None:
        for thing in reversed(self.own):
            thing.close()


def _local_workers(resources: Mapping[str, float] | None) -> int:
    """A local cluster's default size: 2, or one worker per visible GPU when the tasks ask for GPUs."""
    if resources is not None and "GPU" in resources:
        import torch

        return max(1, torch.cuda.device_count())
    return 2


def check_cohort_folder(out: Path, pairs: Sequence[Pair], resume: bool) -> None:
    """Refuse, before any work, an ``out`` that is a file, has no parent folder, holds a cohort's results
    (without ``resume``), or whose pair folders hold files lossfit did not write."""
    from lossfit.run_folder import check_run_folder

    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: the output must be a folder; a file of that name exists")
    if not out.exists():
        if not out.parent.is_dir():
            raise OutputError(f"{out}: the folder {out.parent} does not exist")
        return
    held = [n for n in _RESERVED if (out / n).exists()] + [p.id for p in pairs if (out / p.id).exists()]
    if held and not resume:
        raise OutputError(
            f"{out}: holds a cohort's results ({', '.join(held[:3])}{' ...' if len(held) > 3 else ''}); pass "
            "--resume (resume=True) to finish it, or choose a new folder"
        )
    for pair in pairs:
        check_run_folder(out / pair.id, overwrite=True, option=f"the folder of pair {pair.id!r}")


def summary_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """The rows as CSV text (columns :data:`SUMMARY_COLUMNS`; None as an empty cell)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in SUMMARY_COLUMNS})
    return buffer.getvalue()


__all__ = [
    "OPTION_TYPES",
    "SUMMARY_COLUMNS",
    "CohortResult",
    "Pair",
    "as_pairs",
    "check_cohort_folder",
    "check_options",
    "read_manifest",
    "recorded_row",
    "register_many",
    "register_pair",
    "summary_csv",
]
