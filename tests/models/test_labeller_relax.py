"""A labeller that relaxes: every ionic step comes back as a label of the same method."""

import numpy as np
from ase.build import bulk

from nodestore.models import registry
from nodestore.models.labeller import to_atoms


def test_relaxing_labeller_returns_every_step():
    lab = registry.create("labeller", "lj", sigma=2.0, epsilon=0.05)
    info = lab.method_info
    lab.with_relaxation(4, fmax=1e-4)
    assert lab.method_info == info  # relaxing does not change the method
    a = bulk("Li", "bcc", a=3.0, cubic=True).repeat((2, 1, 1))
    a.rattle(0.1, seed=1)
    res = lab.label([a])[0]
    assert res["ok"], res["error"]
    traj = res["trajectory"]
    assert 2 <= len(traj) <= 5 and res["relax"]["steps"] == len(traj) - 1
    np.testing.assert_allclose(traj[0]["positions"], a.positions)  # step 0 is the geometry as given
    assert traj[-1]["energy"] == res["energy"] < traj[0]["energy"]
    assert all(st["stress"] is not None and st["forces"].shape == (len(a), 3) for st in traj)
    final = to_atoms(a, res)
    np.testing.assert_allclose(final.positions, traj[-1]["positions"])
    np.testing.assert_allclose(final.cell.array, traj[-1]["cell"])
    assert final.get_potential_energy() == res["energy"]
    # single points again when the relaxation is switched off
    lab.with_relaxation(0)
    assert "trajectory" not in lab.label([a])[0]


def test_gpaw_relaxes_with_the_cell_in_debian_python():
    """GPAW runs under Debian's python3 (its own, older ASE): the worker's relaxation must work there."""
    import pytest

    from nodestore.models.labeller import GpawLabeller

    if not GpawLabeller.available():
        pytest.skip("gpaw is not installed for /usr/bin/python3 (apt-get install -y gpaw)")
    lab = registry.create("labeller", "gpaw", ecut=300, kpt_density=2.0, smearing=0.1).with_relaxation(2, fmax=0.01)
    a = bulk("Li", "bcc", a=3.25)  # compressed: the cell relaxes outwards
    res = lab.label([a])[0]
    assert res["ok"], res["error"]
    assert res["relax"]["cell"] and len(res["trajectory"]) == 3
    assert abs(np.linalg.det(res["cell"])) > a.get_volume()
    assert res["energy"] < res["trajectory"][0]["energy"]
