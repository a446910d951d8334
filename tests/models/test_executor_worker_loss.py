"""A worker killed mid-map loses only its items: retried by the scheduler, else recorded as failed."""

from __future__ import annotations

import os
import sys
import time

import pytest

from nodestore.errors import BackendError
from nodestore.models.executor import DaskExecutor, LocalExecutor, cpu_count

pytestmark = pytest.mark.skipif(cpu_count() < 2, reason="needs two cores")


def _work(item):
    """Square ``x``; ``(x, marker)`` kills its worker process the first time (the marker file
    records that it did); ``(x, None)`` kills it every time."""
    x, marker = item
    if marker is not None or x < 0:
        if marker is None or not os.path.exists(marker):
            if marker is not None:
                open(marker, "w").close()
            os._exit(1)  # the worker process dies, as under the OOM killer or a lost node
    time.sleep(0.05)
    return x * x


@pytest.fixture(scope="module")
def cluster():
    import cloudpickle
    import dask
    from distributed import LocalCluster

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import the tests
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
            yield c


def test_dask_worker_killed_mid_map_is_retried_and_nothing_is_lost(cluster, tmp_path):
    items = [(x, None) for x in range(12)]
    items[5] = (5, str(tmp_path / "died-once"))
    with DaskExecutor(cluster) as ex:
        out = ex.map(_work, items, progress=False)
    assert out == [x * x for x in range(12)]  # the killed item ran again on another worker
    assert (tmp_path / "died-once").exists()


def test_dask_item_that_always_kills_its_worker_is_recorded_as_failed(cluster):
    items = [(x, None) for x in range(8)] + [(-1, None)]
    with DaskExecutor(cluster) as ex:
        with pytest.raises(BackendError, match="lost the workers"):
            ex.map(_work, items, progress=False)
        out = ex.map(_work, items, progress=False, on_lost=lambda item, exc: ("lost", item[0]))
    assert out[:8] == [x * x for x in range(8)] and out[8] == ("lost", -1)


def test_labeller_records_a_lost_worker_as_a_failure(cluster):
    from ase.build import bulk

    from nodestore.models.registry import create

    lab = create("labeller", "lj")
    atoms = [bulk("Li", "bcc", a=3.5, cubic=True), bulk("Li", "bcc", a=3.4, cubic=True)]
    with DaskExecutor(cluster) as ex:
        labels = lab.label(atoms, executor=ex)
        # the same labeller, one of whose items loses its worker every time
        lost = ex.map(_work, [(1, None), (-1, None)], progress=False, on_lost=lab._lost)
    assert all(r["ok"] for r in labels)
    assert lost[0] == 1 and lost[1]["ok"] is False and lost[1]["failure"] == "worker-lost"


def test_local_pool_with_a_dead_worker_records_its_items():
    ex = LocalExecutor(processes=2)
    with pytest.raises(BackendError, match="worker process died"):
        ex.map(_work, [(1, None), (-1, None)], progress=False)


def test_dask_items_that_only_shared_the_dying_worker_are_not_lost():
    """With no retries and one worker, the scheduler fails every task that worker held when the
    guilty item killed it; the executor runs each again alone and loses only the guilty one."""
    import cloudpickle
    import dask
    from distributed import LocalCluster

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    items = [(x, None) for x in range(6)] + [(-1, None)] + [(x, None) for x in range(6, 10)]
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as c:
            with DaskExecutor(c) as ex:
                out = ex.map(_work, items, progress=False, on_lost=lambda item, exc: ("lost", item[0]))
    assert out == [x * x for x in range(6)] + [("lost", -1)] + [x * x for x in range(6, 10)]
