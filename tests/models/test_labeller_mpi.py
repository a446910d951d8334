"""GPAW labels on several MPI ranks, one structure at a time (GpawLabeller(mpi_ranks=...))."""

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from ase.build import bulk

from nodestore.errors import BackendError, ValidationError
from nodestore.models.executor import LocalExecutor, cpu_count
from nodestore.models.labeller import WORKER, GpawLabeller, _mpi_env

GPAW = GpawLabeller.available()
MPI = GPAW and GpawLabeller(mpi_ranks="auto").cores_per_label > 1


def _concurrency(cores_per_item: int) -> int:
    lock, state = threading.Lock(), {"now": 0, "most": 0}

    def work(x):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.2)
        with lock:
            state["now"] -= 1
        return x * 2

    out = LocalExecutor(processes=1).map(work, list(range(4)), progress=False, io_bound=True,
                                         cores_per_item=cores_per_item)
    assert out == [0, 2, 4, 6]
    return state["most"]


@pytest.mark.skipif(cpu_count() < 2, reason="needs two cores")
def test_items_that_take_every_core_run_one_at_a_time():
    assert _concurrency(1) == min(cpu_count(), 4)
    assert _concurrency(cpu_count()) == 1


@pytest.mark.parametrize("ranks", [0, -1, 1.5, "two", True])
def test_mpi_ranks_must_be_a_whole_number_or_auto(ranks):
    with pytest.raises(ValidationError, match="mpi_ranks"):
        GpawLabeller(mpi_ranks=ranks)


def test_a_launcher_that_does_not_work(tmp_path):
    broken = tmp_path / "mpirun"
    broken.write_text("#!/bin/sh\necho 'no MPI here' >&2\nexit 1\n")
    broken.chmod(0o755)
    assert GpawLabeller(mpi_ranks=1, mpirun=str(broken)).cores_per_label == 1
    assert GpawLabeller(mpi_ranks="auto", mpirun=str(broken)).cores_per_label == 1  # auto: one process
    with pytest.raises(BackendError, match="mpi_ranks=2 needs MPI.*no MPI here"):
        GpawLabeller(mpi_ranks=2, mpirun=str(broken)).cores_per_label


def test_the_ranks_are_not_part_of_the_method():
    assert GpawLabeller(mpi_ranks=1).method_info == GpawLabeller(mpi_ranks=2).method_info


def test_only_gpaw_runs_under_mpi(tmp_path):
    req = {"calculator": "lj", "params": {"sigma": 2.0, "epsilon": 0.05, "rc": 5.0},
           "atoms": {"numbers": [3, 3], "positions": [[0, 0, 0], [2.2, 0, 0]], "cell": [[6, 0, 0], [0, 6, 0],
                                                                                           [0, 0, 6]],
                     "pbc": [True] * 3}}
    (tmp_path / "req.json").write_text(json.dumps(req))
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(WORKER), str(out), str(tmp_path / "req.json")],
                          env={**_mpi_env(2), "PATH": "/usr/bin:/bin"}, capture_output=True, timeout=120)
    assert proc.returncode == 2
    assert "only the gpaw labeller runs under MPI" in json.loads(out.read_text())["error"]
    # one process: the request file is read and labelled
    proc = subprocess.run([sys.executable, str(WORKER), str(out), str(tmp_path / "req.json")],
                          capture_output=True, timeout=120)
    assert proc.returncode == 0 and np.isfinite(json.loads(out.read_text())["energy"])


@pytest.mark.skipif(not MPI, reason="needs GPAW built with MPI, mpirun and two cores")
def test_mpi_labels_equal_serial_labels_and_take_every_core():
    p = dict(ecut=250, kpt_density=2.0, smearing=0.05)
    atoms = bulk("Li", "bcc", a=3.44) * (2, 1, 1)
    atoms.rattle(0.02, seed=3)
    mpi, serial = GpawLabeller(**p), GpawLabeller(**p, mpi_ranks=1)
    assert mpi.cores_per_label == cpu_count()
    a, b = mpi.label([atoms])[0], serial.label([atoms])[0]
    assert a["ok"] and b["ok"], (a["error"], b["error"])
    assert abs(a["energy"] - b["energy"]) < 1e-6
    assert np.allclose(a["forces"], b["forces"], atol=1e-5)
    assert np.allclose(a["stress"], b["stress"], atol=1e-6)
    assert np.abs(a["forces"]).max() > 1e-3  # rattled: the forces compared are not all zero
