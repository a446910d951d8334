"""The classical stand-in force field: exact gradients, and neighbour lists that agree with ASE."""

import numpy as np
import pytest
from ase.build import bulk

from nodestore.errors import ValidationError
from nodestore.frames.neighbours import neighbour_list
from nodestore.models import registry


def _li_p_s(seed=0):
    from nodestore.models.generator import RandomGenerator

    gen = RandomGenerator(elements=["Li", "P", "S"], compositions=["Li3PS4"], max_atoms=16, seed=seed)
    return gen.sample(1)[0]


def test_forces_and_stress_are_gradients_of_the_energy():
    ff = registry.create("forcefield", "pair")
    a = _li_p_s()
    a.rattle(0.05, seed=1)
    a.calc = ff.as_calculator()
    forces = a.get_forces()
    h = 1e-5
    for i in range(3):
        for k in range(3):
            b = a.copy()
            b.calc = ff.as_calculator()
            b.positions[i, k] += h
            ep = b.get_potential_energy()
            b.positions[i, k] -= 2 * h
            em = b.get_potential_energy()
            assert -(ep - em) / (2 * h) == pytest.approx(forces[i, k], abs=1e-6)
    from ase.calculators.fd import calculate_numerical_stress  # ASE's own finite strain

    numeric = calculate_numerical_stress(a, eps=1e-6, force_consistent=False)
    np.testing.assert_allclose(a.get_stress(), numeric, atol=1e-6)


def test_pair_learns_a_shifted_well():
    """Labels from one pair model are learnt by another whose wells sit elsewhere."""
    teacher = registry.create("forcefield", "pair", scale=1.1)
    student = registry.create("forcefield", "pair", scale=1.3)
    frames = []
    from ase.calculators.singlepoint import SinglePointCalculator

    for s in range(12):
        a = _li_p_s(seed=s)
        p = teacher.predict([a])[0]
        a.calc = SinglePointCalculator(a, energy=p["energy"], forces=p["forces"], stress=p["stress"])
        frames.append(a)
    before = student.evaluate(frames)["force_rmse"]
    child = student.finetune(frames, val_fraction=0.25, epochs=30, patience=30, lr=0.01, batch_size=4,
                             method="toy", seed=0, refit_references=True)
    assert child.evaluate(frames)["force_rmse"] < 0.5 * before


@pytest.mark.parametrize("pbc", [True, False])
def test_neighbour_list_matches_ase(pbc):
    from ase.neighborlist import neighbor_list as ase_nl

    a = bulk("Li", "bcc", a=3.5, cubic=True).repeat((2, 2, 2))
    a.rattle(0.1, seed=0)
    if not pbc:
        a.pbc = False
        a.center(vacuum=3.0)
    ours = neighbour_list("ijdD", a, 4.0)
    ref = ase_nl("ijdD", a, 4.0)
    key = lambda t: np.lexsort((np.round(t[2], 8), t[1], t[0]))  # noqa: E731
    o, r = key(ours), key(ref)
    for x, y in zip(ours, ref):
        np.testing.assert_allclose(np.asarray(x)[o], np.asarray(y)[r], atol=1e-10)


def test_relax_cell_filters():
    ff = registry.create("forcefield", "pair")
    a = _li_p_s()
    runs = {f: ff.relax([a.copy()], steps=15, relax_cell=True, cell_filter=f)[0] for f in ("frechet", "unit")}
    for r in runs.values():
        assert np.isfinite(r["energy"]) and r["energy"] < ff.predict([a])[0]["energy"]
    with pytest.raises(ValidationError, match="unknown cell filter"):
        ff.relax([a.copy()], steps=1, relax_cell=True, cell_filter="exp")
