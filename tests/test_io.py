"""lossfit.io: reading matrices from .npy, .csv and text; writing results atomically; output suffixes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import lossfit
from lossfit import InputFileError
from lossfit.io import atomic_path, atomic_write_text, check_output_suffix, read_matrix, write_arrays

F64 = torch.float64
MATRIX = np.array([[1.5, -2.0, 3.25], [4.0, 5.0, -6.125]])


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    """Names in ``folder`` other than ``keep`` (temporary files would show up here)."""
    return sorted(name for name in os.listdir(folder) if name not in keep)


# -- reading ----------------------------------------------------------------------------------------------------------


def test_read_npy(tmp_path: Path) -> None:
    path = tmp_path / "m.npy"
    np.save(path, MATRIX)
    t = read_matrix(path)
    assert t.dtype == F64 and t.shape == (2, 3)
    assert torch.equal(t, torch.from_numpy(MATRIX))


def test_read_csv(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("1.5,-2,3.25\n4,5,-6.125\n")
    t = read_matrix(path)
    assert t.dtype == F64
    assert torch.equal(t, torch.from_numpy(MATRIX))


@pytest.mark.parametrize(
    "text", ["1.5 -2 3.25\n4 5 -6.125\n", "1.5\t-2\t3.25\n4\t5\t-6.125\n", "  1.5  -2 3.25\n4 5   -6.125"]
)
def test_read_whitespace_text(tmp_path: Path, text: str) -> None:
    path = tmp_path / "m.txt"
    path.write_text(text)
    assert torch.equal(read_matrix(str(path)), torch.from_numpy(MATRIX))


def test_read_one_row_and_one_column_stay_two_dimensional(tmp_path: Path) -> None:
    row = tmp_path / "row.csv"
    row.write_text("1,2,3\n")
    assert read_matrix(row).shape == (1, 3)
    column = tmp_path / "column.txt"
    column.write_text("1\n2\n3\n")
    assert read_matrix(column).shape == (3, 1)
    vector = tmp_path / "vector.npy"
    np.save(vector, np.array([1.0, 2.0, 3.0]))
    assert read_matrix(vector).shape == (3, 1)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint16])
def test_integer_npy_becomes_float64(tmp_path: Path, dtype: type) -> None:
    path = tmp_path / "ints.npy"
    np.save(path, np.array([[1, 2], [3, 4]], dtype=dtype))
    t = read_matrix(path)
    assert t.dtype == F64
    assert torch.equal(t, torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64))


def test_integer_text_becomes_float64(tmp_path: Path) -> None:
    path = tmp_path / "ints.csv"
    path.write_text("1,2\n3,4\n")
    t = read_matrix(path)
    assert t.dtype == F64 and torch.equal(t, torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64))


def test_float32_npy_keeps_its_precision(tmp_path: Path) -> None:
    path = tmp_path / "f32.npy"
    np.save(path, MATRIX.astype(np.float32))
    assert read_matrix(path).dtype == torch.float32


def write_file(folder: Path, name: str, content: str | bytes | None) -> Path:
    path = folder / name
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


BAD_FILES = [
    ("ragged.csv", "1,2\n3\n"),
    ("ragged.txt", "1 2 3\n4 5\n"),
    ("text-in-number-column.csv", "1,x\n3,4\n"),
    ("header.csv", "a,b\n1,2\n"),
    ("trailing-comma.csv", "1,2,\n3,4,\n"),
    ("garbage.npy", b"this is not a numpy file"),
    ("folder.csv", None),
]


@pytest.mark.parametrize(("name", "content"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_unreadable_files_raise_input_file_error_naming_the_file(tmp_path: Path, name: str, content: object) -> None:
    path = write_file(tmp_path, name, content)  # type: ignore[arg-type]
    with pytest.raises(InputFileError) as info:
        read_matrix(path)
    assert name in str(info.value)
    assert isinstance(info.value, lossfit.LossfitError)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match=r"nowhere\.csv.*no such file"):
        read_matrix(tmp_path / "nowhere.csv")


@pytest.mark.parametrize(
    ("name", "array"),
    [
        ("strings.npy", np.array([["a", "b"]])),
        ("complex.npy", np.ones((2, 2), dtype=complex)),
        ("empty.npy", np.zeros((0, 3))),
    ],
)
def test_npy_that_does_not_hold_real_numbers(tmp_path: Path, name: str, array: np.ndarray) -> None:
    path = tmp_path / name
    np.save(path, array)
    with pytest.raises(InputFileError, match=name.replace(".", r"\.")):
        read_matrix(path)


def test_object_npy_is_refused_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "objects.npy"
    np.save(path, np.array([[1, None]], dtype=object), allow_pickle=True)
    with pytest.raises(InputFileError, match=r"objects\.npy"):
        read_matrix(path)


@pytest.mark.parametrize("name", ["empty.csv", "empty.txt", "blank-lines.csv"])
def test_empty_text_file_is_an_input_file_error_and_nothing_else(tmp_path: Path, name: str) -> None:
    # pytest turns warnings into errors here, so a warning on the way escapes as the exception instead.
    path = tmp_path / name
    path.write_text("\n\n" if name.startswith("blank") else "")
    with pytest.raises(InputFileError, match=name.replace(".", r"\.")):
        read_matrix(path)


# -- writing ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".txt"])
def test_write_one_array_round_trips_exactly(tmp_path: Path, suffix: str) -> None:
    data = torch.tensor([[1.0 / 3.0, -2.5e-300, 7.0], [1e17, 0.1, -0.0]], dtype=F64)
    path = tmp_path / f"out{suffix}"
    write_arrays(path, data)
    assert torch.equal(read_matrix(path), data)
    assert leftovers(tmp_path, {path.name}) == []


def test_write_a_vector_as_text_gives_one_row(tmp_path: Path) -> None:
    path = tmp_path / "v.csv"
    write_arrays(path, torch.tensor([1.0, 2.0, 3.0], dtype=F64))
    assert read_matrix(path).shape == (1, 3)


def test_write_several_arrays_to_npz(tmp_path: Path) -> None:
    arrays = {"U": torch.eye(2, dtype=F64), "S": torch.tensor([2.0, 1.0], dtype=F64)}
    path = tmp_path / "out.npz"
    write_arrays(path, arrays)
    with np.load(path) as loaded:
        assert sorted(loaded.files) == ["S", "U"]
        assert np.array_equal(loaded["U"], np.eye(2)) and np.array_equal(loaded["S"], [2.0, 1.0])
    assert leftovers(tmp_path, {"out.npz"}) == []


def test_write_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "out.npy"
    write_arrays(path, torch.zeros(2, 2, dtype=F64))
    write_arrays(path, torch.ones(2, 2, dtype=F64))
    assert torch.equal(read_matrix(path), torch.ones(2, 2, dtype=F64))
    assert leftovers(tmp_path, {"out.npy"}) == []


class Boom(RuntimeError):
    pass


def test_a_failed_write_leaves_no_temporary_file_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.npy"
    write_arrays(path, torch.zeros(2, 2, dtype=F64))

    def fail(handle: object, data: object) -> None:
        handle.write(b"half")  # type: ignore[attr-defined]
        raise Boom("disk full")

    monkeypatch.setattr(np, "save", fail)
    with pytest.raises(Boom):
        write_arrays(path, torch.ones(2, 2, dtype=F64))
    assert leftovers(tmp_path, {"out.npy"}) == []
    monkeypatch.undo()
    assert torch.equal(read_matrix(path), torch.zeros(2, 2, dtype=F64))


def test_a_failed_first_write_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise Boom("no")

    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(Boom):
        write_arrays(tmp_path / "out.npz", {"A": torch.eye(2, dtype=F64)})
    assert leftovers(tmp_path, set()) == []


def test_atomic_path_on_success_and_failure(tmp_path: Path) -> None:
    target = tmp_path / "t.txt"
    with atomic_path(target) as tmp:
        assert Path(tmp).parent == tmp_path and Path(tmp) != target
        Path(tmp).write_text("done")
        assert not target.exists()
    assert target.read_text() == "done"
    with pytest.raises(Boom), atomic_path(target) as tmp:
        Path(tmp).write_text("partial")
        raise Boom
    assert target.read_text() == "done"
    assert leftovers(tmp_path, {"t.txt"}) == []
    atomic_write_text(target, "again")
    assert target.read_text() == "again"
    assert leftovers(tmp_path, {"t.txt"}) == []


def test_write_into_a_missing_folder_is_an_input_file_error(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="does not exist"):
        write_arrays(tmp_path / "no" / "such" / "out.npy", torch.eye(2))
    assert leftovers(tmp_path, set()) == []


def test_write_with_a_wrong_suffix_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match=r"\.npz"):
        write_arrays(tmp_path / "several.npy", {"U": torch.eye(2)})
    with pytest.raises(InputFileError, match=r"\.npy"):
        write_arrays(tmp_path / "one.npz", torch.eye(2))
    assert leftovers(tmp_path, set()) == []


# -- output suffixes --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x.npy", "x.csv", "x.txt", "X.NPY", "dir.d/x.CSV"])
def test_single_array_suffixes_are_accepted(name: str) -> None:
    check_output_suffix(name, several=False)
    with pytest.raises(InputFileError, match=r"\.npz"):
        check_output_suffix(name, several=True)


@pytest.mark.parametrize("name", ["x.npz", "X.NPZ"])
def test_several_arrays_need_npz(name: str) -> None:
    check_output_suffix(Path(name), several=True)
    with pytest.raises(InputFileError, match=r"\.npy or \.csv or \.txt"):
        check_output_suffix(Path(name), several=False)


@pytest.mark.parametrize("name", ["x", "x.json", "x.png", "x.npy.bak"])
def test_other_suffixes_are_refused_naming_the_file(name: str) -> None:
    for several in (False, True):
        with pytest.raises(InputFileError) as info:
            check_output_suffix(name, several=several)
        assert name in str(info.value)
    with pytest.raises(InputFileError, match="no suffix"):
        check_output_suffix("x", several=False)


def test_written_files_get_ordinary_permissions(tmp_path: Path) -> None:
    import os

    from lossfit.io import write_arrays

    target = tmp_path / "x.npy"
    write_arrays(target, torch.zeros(2, 2))
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
