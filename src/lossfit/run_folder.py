"""An output folder written as a whole, which never touches an input and never mixes two runs.

A command that writes several files into a folder (``lossfit register --out DIR``) goes through three steps:

1. :func:`check_run_folder`, before any work: the folder is new, empty, or holds only the outputs of an earlier
   run (refused unless ``overwrite``); a folder holding anything else is refused, since replacing it would lose
   those files. :func:`check_space` refuses a disk without room for the expected size.
2. :class:`RunFolder` stages the files in a temporary folder beside the target; each file is written atomically.
3. On success :meth:`RunFolder.commit` swaps the staged folder in for the old one as a whole (the old outputs go,
   with any a different run left behind, such as a ``transform.tfm`` beside a projective run's JSON). On a failure
   after the first files are written (the transform, written first), those files are committed all the same and
   the error says which files were kept: a late failure never loses the transform, and never leaves a
   half-written file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from lossfit.errors import DiskFullError, OutputError
from lossfit.io import DISK_FULL, first_line

# The names lossfit writes in a run folder: a registration's (``warped`` with any image suffix, or a DICOM series
# folder) and a motion correction's (``corrected`` with any suffix, ``transforms/`` with one file per volume).
OWN_NAMES = (
    "transform.tfm",
    "affine.tfm",
    "warp.nii.gz",
    "inverse_warp.nii.gz",
    "transform.h5",
    "transform.json",
    "registration.png",
    "deformation.png",
    "report.html",
    "warped",
    "corrected",
    "transforms",
    "motion.tsv",
    "motion.json",
    "motion.png",
)
_OWN_PREFIXES = ("warped.", "corrected.")


def is_own(name: str) -> bool:
    """Whether a file name is one lossfit writes into a run folder."""
    return name in OWN_NAMES or name.startswith(_OWN_PREFIXES)


def check_run_folder(
    path: Path, overwrite: bool, option: str = "--out", own: Callable[[str], bool] | None = None
) -> None:
    """Refuse, before any work, a folder holding files other than lossfit's outputs (``own`` adds a command's own
    names to :func:`is_own`'s), or (without ``overwrite``) one holding the outputs of an earlier run."""
    if not path.is_dir():
        return
    entries = sorted(p.name for p in path.iterdir())
    foreign = [n for n in entries if not (is_own(n) or (own is not None and own(n)))]
    if foreign:
        listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputError(
            f"{path}: {option} holds files lossfit did not write ({listed}); choose a new or empty folder "
            "(a run's outputs replace the folder's contents as a whole)"
        )
    if entries and not overwrite:
        raise OutputError(
            f"{path}: {option} holds the outputs of an earlier run ({', '.join(entries)}); pass --overwrite to "
            "replace them, or choose a new folder"
        )


def check_space(path: Path, need: int) -> None:
    """Refuse, before any work, a disk with less free space than ``need`` bytes (and a 10% margin) at ``path``."""
    where = path if path.exists() else path.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return  # the free space cannot be known here (a network file system): the writes will tell
    if free < need * 1.1:
        raise OutputError(
            f"{path}: the outputs need about {_size(need)} but {where} has {_size(free)} free; free some space "
            "or choose another folder"
        )


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover - the loop returns


class RunFolder:
    """Files staged beside ``target`` and swapped in as a whole; see the module docstring.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> with RunFolder(root / "run") as run:
        ...     run.write("a.txt", lambda p: Path(p).write_text("hello"))
        >>> sorted(p.name for p in (root / "run").iterdir())
        ['a.txt']
    """

    def __init__(self, target: Path) -> None:
        self.target = target
        self.stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".lossfit", dir=target.parent))
        self.written: list[str] = []

    def path(self, name: str) -> Path:
        """Where ``name`` is staged."""
        return self.stage / name

    def write(self, name: str, writer: Callable[[Path], object]) -> None:
        """Stage ``name`` by calling ``writer(staged_path)``; a full disk is reported naming the file."""
        staged = self.stage / name
        try:
            writer(staged)
        except DiskFullError:
            _remove(staged)
            raise DiskFullError(f"{self.target / name}: no space left on the device") from None
        except OSError as exc:
            _remove(staged)
            if exc.errno in DISK_FULL:
                raise DiskFullError(f"{self.target / name}: no space left on the device") from None
            raise OutputError(f"{self.target / name}: cannot be written ({exc.strerror or exc})") from None
        except BaseException:
            _remove(staged)
            raise
        self.written.append(name)

    def commit(self) -> None:
        """Swap the staged folder in for the target (an old folder is renamed aside, then removed)."""
        self.stage.chmod(0o777 & ~_umask())
        old = None
        if self.target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", suffix=".old", dir=self.target.parent))
            os.rmdir(old)
            self.target.rename(old)
        try:
            self.stage.rename(self.target)
        except BaseException:
            if old is not None:
                old.rename(self.target)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if kind is None:
            self.commit()
            return
        if not self.written or not issubclass(kind, Exception):
            self.discard()
            return
        # A late failure: keep what was written (the transform first of all), and say so.
        try:
            self.commit()
        except OSError:
            self.discard()
            return
        kept = ", ".join(self.written)
        raise OutputError(
            f"{first_line(exc) if exc is not None else 'failed'}; kept in {self.target}: {kept}"
        ) from None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = ["OWN_NAMES", "OutputError", "RunFolder", "check_run_folder", "check_space", "is_own"]
