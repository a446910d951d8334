"""Executors give the same results locally, in a pool and on Dask."""

import math

import pytest

from nodestore.errors import BackendError, ValidationError
from nodestore.models import registry
from nodestore.models.executor import DaskExecutor, LocalExecutor, cpu_count, make_executor


def test_local_and_dask_agree():
    items = list(range(12))
    serial = LocalExecutor(processes=1).map(math.sqrt, items, progress=False)
    assert serial == [math.sqrt(x) for x in items]
    if cpu_count() >= 2:
        assert LocalExecutor(processes=2).map(math.sqrt, items, progress=False) == serial
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with DaskExecutor(cluster) as ex:
            assert ex.map(math.sqrt, items, progress=True) == serial


def test_thread_budget():
    with pytest.raises(ValidationError):
        LocalExecutor(processes=cpu_count() + 1, torch_threads=1)
    assert isinstance(make_executor(None), LocalExecutor)
    with pytest.raises(ValidationError):
        make_executor("localhost:8786")


def test_registry():
    assert "chgnet" in registry.available("forcefield") and "gpaw" in registry.available("labeller")
    with pytest.raises(BackendError, match="already registered"):
        registry.register("executor", "local", LocalExecutor)
    assert isinstance(registry.create("executor", "local", processes=1), LocalExecutor)
    with pytest.raises(BackendError, match="no generator backend"):
        registry.create("generator", "nosuch")
    with pytest.raises(ValidationError):
        registry.create("executor", "local", bogus=1)


def test_from_config_sections():
    from nodestore.models.generator import PyxtalGenerator

    ex = registry.from_config("executor", {"backend": "local", "processes": 1, "address": None})
    assert isinstance(ex, LocalExecutor)
    gen = registry.from_config("generator", {"backend": "pyxtal", "n": 10, "checkpoint": None,
                                             "compositions": ["Li3PS4"], "max_atoms": 20})
    assert isinstance(gen, PyxtalGenerator) and gen.compositions == ["Li3PS4"]


def _meet(barrier):
    barrier.wait(timeout=20)  # raises BrokenBarrierError unless a second call runs at the same time
    return True


@pytest.mark.skipif(cpu_count() < 2, reason="needs two cores")
def test_io_bound_work_runs_one_call_per_core():
    import functools
    import threading

    barrier = threading.Barrier(2)
    fn = functools.partial(_meet, barrier)
    assert LocalExecutor(processes=1).map(lambda _: fn(), [0, 1], progress=False, io_bound=True) == [True, True]
    assert LocalExecutor(processes=1).map(math.sqrt, [4, 9], progress=False, io_bound=True) == [2.0, 3.0]
