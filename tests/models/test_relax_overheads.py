"""The relaxation's own overheads: a cell filter's gradient is computed once per geometry (not
twice per step), and scipy's BLAS runs on one thread around it; the trajectory is unchanged."""

import numpy as np
import pytest
from ase.build import bulk
from ase.filters import FrechetCellFilter, UnitCellFilter

from nodestore.models import forcefield as ffmod
from nodestore.models.registry import from_config


def _cells():
    a = bulk("SLi2", "fluorite", a=5.9, cubic=True)
    a.rattle(0.05, seed=1)
    b = bulk("Li", "bcc", a=3.3, cubic=True).repeat((2, 1, 1))
    b.rattle(0.05, seed=2)
    return [a, b]


@pytest.mark.parametrize("name, base", [("frechet", FrechetCellFilter), ("unit", UnitCellFilter)])
def test_the_filter_gradient_is_computed_once_per_geometry_and_the_path_is_unchanged(monkeypatch, name, base):
    ff = from_config("forcefield", {"backend": "pair"})
    calls = {"n": 0}
    plain_get_forces = base.get_forces

    def counted(self, **kw):
        calls["n"] += 1
        return plain_get_forces(self, **kw)

    monkeypatch.setattr(base, "get_forces", counted)
    ffmod._ONCE.clear()
    once = ff.relax(_cells(), fmax=0.01, steps=25, relax_cell=True, cell_filter=name)
    n_once = calls["n"]
    steps = sum(r["steps"] for r in once)
    assert steps > 10
    # every structure: one gradient per evaluated geometry (steps + 1), not two per step
    assert n_once <= steps + len(once), (n_once, steps)
    calls["n"] = 0
    monkeypatch.setattr(ffmod, "_once_per_geometry", lambda cls: cls)
    plain = ff.relax(_cells(), fmax=0.01, steps=25, relax_cell=True, cell_filter=name)
    assert calls["n"] >= 2 * steps - len(plain)
    for a, b in zip(once, plain):
        assert a["steps"] == b["steps"] and a["reason"] == b["reason"]
        assert a["energy"] == b["energy"]
        assert np.array_equal(a["atoms"].positions, b["atoms"].positions)
        assert np.array_equal(a["atoms"].cell.array, b["atoms"].cell.array)


def test_blas_runs_on_one_thread_inside_the_relaxation_step_only():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    before = blas_threads()
    with ffmod._one_blas_thread():
        assert blas_threads() == {1}
    assert blas_threads() == before
