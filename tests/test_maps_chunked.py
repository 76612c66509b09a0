"""Parameter maps slab by slab on a Dask cluster: the same maps as in memory, from NIfTI (nibabel-written, gzipped or
not) and zarr, outputs that other tools read with the input's geometry, and nothing half-written on failure."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from lossfit import Status
from lossfit.errors import OutputError
from lossfit.maps import NOT_FITTED, fit_map, fit_map_chunked
from lossfit.registration.series import load_series

TE = [10.0, 20, 30, 40, 50, 60, 70, 80]


def t2_volume(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A multi-echo volume in nibabel's (x, y, z, echo) order with a known T2 per voxel, noise, and a background."""
    gen = np.random.default_rng(seed)
    t2 = gen.uniform(40, 120, size=shape)
    s0 = gen.uniform(800, 1200, size=shape)
    te = np.asarray(TE)
    signal = s0[..., None] * np.exp(-te / t2[..., None]) + gen.normal(0, 5, size=(*shape, 8))
    signal[0] = np.abs(gen.normal(0, 5, size=(shape[1], shape[2], 8)))  # a background plane (x = 0)
    return signal.astype(np.float32), t2


def write_nifti(path: Path, data: np.ndarray) -> np.ndarray:
    affine = np.array([[-2.0, 0, 0, 30], [0, 1.5, 0, -20], [0, 0, 3.0, 5], [0, 0, 0, 1]])
    nib.Nifti1Image(data, affine).to_filename(str(path))
    return affine


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_chunked_maps_equal_the_in_memory_maps(client: object, tmp_path: Path, suffix: str) -> None:
    data, _ = t2_volume((6, 7, 11), 0)
    source = tmp_path / f"echoes{suffix}"
    affine = write_nifti(source, data)
    series = load_series(source)
    mask = torch.ones(series.grid.shape, dtype=torch.bool)
    mask[:, :, 0] = False  # the background plane (x = 0 in the file)
    whole = fit_map(series, TE, "t2", mask=mask)
    chunked = fit_map_chunked(source, TE, "t2", out=tmp_path / "maps", slices=3, mask=mask, client=client)
    # Per voxel the same answer; which of two tests (ftol, xtol) fired first may differ in the last bits of a
    # voxel's arithmetic with the batch it is vectorised in, so statuses are compared as success or not.
    assert sum(chunked.counts.values()) == sum(whole.counts.values())
    success = torch.tensor([Status(c).success for c in range(max(Status) + 1)])
    assert torch.equal(success[chunked.status.data.long()], success[whole.status.data.long()])
    for name in whole.parameters:
        ours, ref = chunked.maps[name].data.double(), whole.maps[name].data
        fitted = ~torch.isnan(ref)
        assert torch.equal(torch.isnan(ours), ~fitted)
        assert torch.allclose(ours[fitted], ref[fitted], rtol=2e-7)  # the float32 of the file
    # The files carry the input's geometry, read by nibabel.
    written = nib.load(str(tmp_path / "maps" / "T2.nii"))
    assert np.allclose(written.affine, affine)
    assert np.allclose(np.asarray(written.dataobj), whole.maps["T2"].data.numpy().T, rtol=2e-7, equal_nan=True)
    status = np.asarray(nib.load(str(tmp_path / "maps" / "status.nii")).dataobj)
    assert (status[0] == NOT_FITTED).all()
    assert (tmp_path / "maps" / "summary.json").exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_zarr_in_and_zarr_out(client: object, tmp_path: Path) -> None:
    import zarr

    data, _ = t2_volume((5, 6, 9), 1)
    series = np.ascontiguousarray(data.transpose(3, 2, 1, 0))  # (echo, z, y, x)
    store = zarr.create_array(str(tmp_path / "echoes.zarr"), shape=series.shape, chunks=(8, 2, 6, 5), dtype="f4")
    store[:] = series
    store.attrs.update({"spacing": [3.0, 1.5, 2.0], "origin": [0.0, 0.0, 0.0]})
    result = fit_map_chunked(tmp_path / "echoes.zarr", TE, "t2", out=tmp_path / "out", slices=4, client=client,
                             out_format="zarr")  # fmt: skip
    whole = fit_map(torch.from_numpy(np.moveaxis(series, 0, -1)), TE, "t2")
    assert result.maps["T2"].spacing == (3.0, 1.5, 2.0)
    # Background voxels fit by running T2 off to 1e100 and more (flagged: suspect or singular); compare the rest.
    success = torch.tensor([Status(c).success for c in range(max(Status) + 1)])
    good = success[whole.status.long()]
    assert torch.equal(success[result.status.data.long()], good)
    assert torch.allclose(result.maps["T2"].data.double()[good], whole.maps["T2"][good], rtol=2e-7)
    group = zarr.open_group(str(tmp_path / "out" / "maps.zarr"), mode="r")
    assert set(group.array_keys()) >= {"S0", "T2", "T2_stderr", "status", "rms"}


def test_the_default_local_cluster_runs_the_map(tmp_path: Path) -> None:
    data, _ = t2_volume((4, 4, 5), 2)
    source = tmp_path / "echoes.nii"
    write_nifti(source, data)
    result = fit_map_chunked(source, TE, "t2", out=tmp_path / "maps", slices=2, workers=1)
    assert result.fitted == 4 * 4 * 5


def test_the_output_is_checked_before_any_work(client: object, tmp_path: Path) -> None:
    data, _ = t2_volume((4, 4, 4), 3)
    source = tmp_path / "in" / "echoes.nii.gz"
    source.parent.mkdir()
    write_nifti(source, data)
    with pytest.raises(OutputError, match="must not be, hold or lie inside the input"):
        fit_map_chunked(source, TE, "t2", out=source, client=client)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="is not empty"):
        fit_map_chunked(source, TE, "t2", out=busy, client=client)
    assert (busy / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="`x`"):
        fit_map_chunked(source, TE[:5], "t2", out=tmp_path / "m", client=client)
    with pytest.raises(ValueError, match="`sigma`"):
        fit_map_chunked(source, TE, "t2", out=tmp_path / "m", client=client, noise="rician")


def failing_model(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    if p.shape[0] > 20:  # every slab but a small last one
        raise RuntimeError("model failure")
    return p[:, :1] * torch.exp(-x / p[:, 1:2])


def test_a_failure_leaves_nothing_half_written(client: object, tmp_path: Path) -> None:
    data, _ = t2_volume((4, 4, 9), 4)
    source = tmp_path / "echoes.nii"
    write_nifti(source, data)
    with pytest.raises(RuntimeError, match="model failure"):
        fit_map_chunked(source, TE, failing_model, out=tmp_path / "maps", slices=4, client=client,
                        start={"S0": 1000.0, "T2": 60.0})  # fmt: skip
    assert not (tmp_path / "maps").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["echoes.nii"]
