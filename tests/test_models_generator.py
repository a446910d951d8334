"""Generators: pyxtal with a learned proposal distribution; substitutions of prototypes."""

import json
from pathlib import Path

import numpy as np
import pytest

from nodestore.models.generator import Generator, PyxtalGenerator, SubstitutionGenerator, min_distance_ok
from nodestore.schemas_util import validate

STRUCTURES = Path(__file__).resolve().parents[1] / "nodestore" / "data" / "li-p-s" / "structures"


def test_pyxtal_samples_valid_li_p_s():
    gen = PyxtalGenerator(elements=["Li", "P", "S"], compositions=["Li3PS4", "Li2S", "P2S5", "Li7PS6"],
                          max_atoms=30, seed=3)
    out = gen.sample(8)
    assert len(out) == 8
    for a in out:
        assert set(a.get_chemical_symbols()) <= {"Li", "P", "S"}
        assert len(a) <= 30 and min_distance_ok(a, gen.min_distance)
        assert a.info["generator"] == "pyxtal" and 1 <= a.info["spacegroup"] <= 230
    only = gen.sample(3, compositions=["Li3PS4"])
    assert {a.info["composition"] for a in only} == {"Li3PS4"}


def test_pyxtal_weights_follow_rewards(tmp_path):
    gen = PyxtalGenerator(compositions=["Li3PS4", "Li2S", "P2S5"], spacegroups=[2, 14, 62], seed=0)
    gen.save(tmp_path / "g0")
    outcomes = ([{"composition": "Li3PS4", "spacegroup": 62, "z": 2, "reward": 1.0, "id": f"f{i}"} for i in range(5)]
                + [{"composition": "P2S5", "spacegroup": 2, "z": 1, "reward": 0.0} for _ in range(5)])
    new = gen.update(outcomes)
    p0, p1 = gen.probabilities("composition"), new.probabilities("composition")
    assert p1["Li3PS4"] > p0["Li3PS4"] and p1["P2S5"] < p0["P2S5"]
    assert new.probabilities("spacegroup")["62"] > 1 / 3
    assert new.parent == gen.hash
    new.save(tmp_path / "g1")
    meta = json.loads((tmp_path / "g1" / "meta.json").read_text())
    validate(meta, "checkpoint")
    assert meta["kind"] == "generator" and meta["parent"] == gen.hash and len(meta["training_frames"]) == 5
    again = Generator.load(tmp_path / "g1")
    assert again.probabilities("composition") == pytest.approx(p1)
    # the reloaded proposal draws compositions with the learned frequencies (a seeded draw of 4,000
    # proposals; pyxtal's own rejections are not part of the proposal distribution)
    draws = [again._draw("composition") for _ in range(4000)]
    for comp, p in p1.items():
        assert draws.count(comp) / len(draws) == pytest.approx(p, abs=0.03)
    sampled = again.sample(6)
    assert len(sampled) == 6 and {a.info["composition"] for a in sampled} <= set(p1)


def test_substitution_from_other_system():
    from pymatgen.core import Structure

    li3ps4 = Structure.from_file(STRUCTURES / "Li3PS4_beta_Pnma_mp-985583.json")
    na3ps4 = li3ps4.copy()
    na3ps4.replace_species({"Li": "Na"})
    gen = SubstitutionGenerator([na3ps4], elements=["Li", "P", "S"])
    out = gen.sample(5)
    assert out, "expected at least one substitution"
    formulas = {a.info["composition"] for a in out}
    assert "Li3PS4" in formulas
    for a in out:
        assert set(a.get_chemical_symbols()) <= {"Li", "P", "S"}
        assert json.loads(a.info["substitution"])["Na"] == "Li"
        assert np.isfinite(a.get_volume()) and min_distance_ok(a, gen.min_distance)


def test_random_generator_is_valid_deterministic_and_learns(tmp_path):
    from nodestore.models import registry
    from nodestore.models.generator import RandomGenerator

    kw = dict(elements=["Li", "P", "S"], compositions=["Li3PS4", "Li2S", "P2S5"], max_atoms=24)
    gen = registry.create("generator", "random", seed=5, **kw)
    assert isinstance(gen, RandomGenerator)
    out = gen.sample(20)
    assert len(out) == 20
    for a in out:
        assert set(a.get_chemical_symbols()) <= {"Li", "P", "S"} and len(a) <= 24
        assert min_distance_ok(a, gen.min_distance)
        assert a.info["spacegroup"] == 1 and a.info["generator"] == "random"
    again = RandomGenerator(seed=5, **kw).sample(20)
    for a, b in zip(out, again):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.cell.array, b.cell.array)
    new = gen.update([{"composition": "Li2S", "spacegroup": 1, "z": 1, "reward": 1.0, "id": f"f{i}"}
                      for i in range(6)]
                     + [{"composition": "P2S5", "spacegroup": 1, "z": 1, "reward": 0.0} for _ in range(6)])
    assert new.probabilities("composition")["Li2S"] > gen.probabilities("composition")["Li2S"]
    new.save(tmp_path / "g")
    assert type(Generator.load(tmp_path / "g")) is RandomGenerator
