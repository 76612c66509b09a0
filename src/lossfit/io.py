"""Reading matrices from files and writing results without ever leaving a half-written file."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from lossfit.errors import DiskFullError, InputFileError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT) if hasattr(errno, "EDQUOT") else (errno.ENOSPC,)  # an OSError saying no room
MATRIX_SUFFIXES = (".npy", ".csv", ".txt", ".dat", ".tsv")


def read_matrix(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read a 2-D array of numbers from ``.npy``, ``.csv`` (comma-separated) or whitespace-separated text.

    Integer data become float64; float data keep their precision. Raises :class:`InputFileError` naming the file
    for a missing or unreadable file, text where numbers should be, or ragged rows.
    """
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"{p}: no such file")
    if not p.is_file():
        raise InputFileError(f"{p}: not a file")
    try:
        if p.suffix.lower() == ".npy":
            array = np.load(p, allow_pickle=False)
        else:
            if not p.read_text(encoding="utf-8", errors="replace").strip():
                raise InputFileError(f"{p}: holds no numbers")
            delimiter = "," if p.suffix.lower() == ".csv" else None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                array = np.loadtxt(p, delimiter=delimiter, ndmin=2, dtype=np.float64)
    except ValueError as exc:
        raise InputFileError(f"{p}: not a table of numbers ({first_line(exc)})") from None
    except (OSError, EOFError) as exc:
        raise InputFileError(f"{p}: cannot be read ({first_line(exc)})") from None
    if array.dtype.kind not in "iuf":
        raise InputFileError(f"{p}: holds {array.dtype} data, not real numbers")
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.size == 0:
        raise InputFileError(f"{p}: holds no numbers")
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.to(torch.float64) if not tensor.is_floating_point() else tensor


def first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on failure removed."""
    target = Path(path)
    if target.parent and not target.parent.exists():
        raise InputFileError(f"{target}: the folder {target.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    os.close(fd)
    try:
        yield tmp
        # mkstemp makes the file private (0600); give it the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            raise DiskFullError(f"{target}: no space left on the device (nothing was written)") from None
        raise


def write_arrays(path: str | os.PathLike[str], arrays: dict[str, torch.Tensor] | torch.Tensor) -> None:
    """Write one array (``.npy``, ``.csv``, ``.txt``) or several (``.npz``), atomically."""
    target = Path(path)
    suffix = target.suffix.lower()
    check_output_suffix(target, several=isinstance(arrays, dict))
    with atomic_path(target) as tmp:
        if isinstance(arrays, dict):
            with open(tmp, "wb") as handle:
                named = {k: v.detach().cpu().numpy() for k, v in arrays.items()}
                np.savez(handle, **named)  # type: ignore[arg-type]
        else:
            data = arrays.detach().cpu().numpy()
            if suffix == ".npy":
                with open(tmp, "wb") as handle:
                    np.save(handle, data)
            else:
                np.savetxt(
                    tmp,
                    np.atleast_2d(data) if data.ndim < 2 else data,
                    delimiter="," if suffix == ".csv" else " ",
                    fmt="%.17g",
                )


def check_output_suffix(path: str | os.PathLike[str], several: bool) -> None:
    """Refuse an output name whose suffix cannot hold the result, before any work is done."""
    suffix = Path(path).suffix.lower()
    allowed = (".npz",) if several else (".npy", ".csv", ".txt")
    if suffix not in allowed:
        raise InputFileError(f"{path}: the output must end in {' or '.join(allowed)}; got {suffix or 'no suffix'!r}")


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)


def read_table(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a comma-separated table whose first line names the columns; every other cell must be a number.

    Raises :class:`InputFileError` naming the file, and the row and column of the first cell that is not a number.
    """
    import csv

    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"{p}: no such file" if not p.exists() else f"{p}: not a file")
    try:
        with open(p, newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputFileError(f"{p}: cannot be read ({first_line(exc)})") from None
    if len(rows) < 2:
        raise InputFileError(f"{p}: needs a header line of column names and at least one row of numbers")
    header = [name.strip() for name in rows[0]]
    if len(set(header)) != len(header) or not all(header):
        raise InputFileError(f"{p}: the column names in the header must be unique and non-empty")
    columns: list[list[float]] = [[] for _ in header]
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise InputFileError(f"{p}: line {number} has {len(row)} cells; the header has {len(header)}")
        for cells, name, cell in zip(columns, header, row, strict=True):
            try:
                cells.append(float(cell))
            except ValueError:
                raise InputFileError(f"{p}: line {number}, column {name!r}: {cell.strip()!r} is not a number") from None
    table = {name: torch.tensor(values, dtype=torch.float64) for name, values in zip(header, columns, strict=True)}
    for name, values in table.items():
        if not bool(torch.isfinite(values).all()):
            raise InputFileError(f"{p}: column {name!r} holds NaN or infinity")
    return table
