"""Test set-up: the problem banks are imported as plain modules from this folder; a one-thread fixture."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Small float64 products are much slower with several BLAS threads on a busy machine; use one, then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    """One two-worker Dask LocalCluster (processes, one thread each) per test module: starting one takes seconds."""
    import distributed

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    dask_client = distributed.Client(cluster)
    yield dask_client
    dask_client.close()
    cluster.close()
