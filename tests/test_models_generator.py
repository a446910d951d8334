"""Generators: pyxtal with a learned proposal distribution; substitutions of prototypes."""

import json
from pathlib import Path

import numpy as np
import pytest

from nodestore.errors import ValidationError
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


def test_motif_generator_builds_crystals_from_thiophosphate_units(tmp_path):
    from collections import Counter

    from nodestore.chem.motifs import clusters
    from nodestore.models import registry
    from nodestore.models.generator import MotifGenerator, motif_compositions, unit_decompositions

    comps = motif_compositions(24)
    # P(+5) ortho-, pyro- and meta-thiophosphates, P(+4) hypodiphosphate, sulfide-rich phases
    assert {"Li3PS4", "Li4P2S7", "Li7P3S11", "Li7PS6", "Li2PS3", "Li2S"} <= set(comps)
    assert {"PS4": 1, "P2S7": 1} in unit_decompositions({"Li": 7, "P": 3, "S": 11})
    assert unit_decompositions({"Li": 4, "P": 2, "S": 6}) == [{"P2S6": 1}]
    assert unit_decompositions({"Li": 6, "P": 1, "S": 5, "Cl": 1}) == [{"PS4": 1, "S": 1, "Cl": 1}]
    assert unit_decompositions({"Li": 2, "P": 1, "S": 4}) == []  # not charge balanced
    with pytest.raises(ValidationError, match="cannot be built"):
        MotifGenerator(compositions=["Li2PS4"])

    gen = registry.create("generator", "motif", max_atoms=24, seed=2)
    out = gen.sample(24)
    assert len(out) == 24 and len({a.info["composition"] for a in out}) > 5
    for a in out:
        assert len(a) <= 24 and a.info["generator"] == "motif" and a.info["spacegroup"] == 1
        # the census finds exactly the units that were placed: none fused with another or its image
        want = Counter()
        for part in a.info["units"].split(","):
            name, k = part.split(":")
            want[{"P2S6e": "P2S6 (edge-sharing)", "P2S6": "P2S6 (P-P bonded)",
                  "P2S7": "P2S7 (corner-sharing)"}.get(name, name)] += int(k)
        got = Counter(c.label for c in clusters(a))
        assert got == want, (a.info, got)
    # Li3PS4 is mostly built as isolated PS4 (the simplest decomposition), sometimes as
    # P2S7 + S (Li6P2S8, odds 1/4 per extra kind of unit)
    li3ps4 = gen.sample(12, compositions=["Li3PS4"])
    only_ps4 = [a for a in li3ps4 if {c.label for c in clusters(a)} == {"PS4"}]
    assert len(only_ps4) >= 6 and all(a.info["units"].startswith("PS4:") for a in only_ps4)
    again = MotifGenerator(max_atoms=24, seed=2).sample(24)
    np.testing.assert_array_equal(out[5].positions, again[5].positions)
    gen.save(tmp_path / "m")
    back = Generator.load(tmp_path / "m")
    assert type(back) is MotifGenerator and back.unit_separation == gen.unit_separation


def test_aflow_library_substitutions_honour_exclusions_and_reseed():
    from nodestore.models.generator import aflow_prototypes

    lib = aflow_prototypes(max_elements=3, max_sites=16)
    labels = {p.properties["aflow"] for p in lib}
    enargite = "AB3C4_oP16_31_a_ab_2ab"  # Cu3AsS4, the structure type of gamma-Li3PS4
    assert enargite in labels and all(len(p) <= 16 for p in lib)
    gen = SubstitutionGenerator(library="aflow", max_sites=16, threshold=1e-7, seed=1)
    out = gen.sample(60)
    assert out and all(set(a.get_chemical_symbols()) <= {"Li", "P", "S"} for a in out)
    assert any(gen.prototypes[a.info["prototype_index"]].properties["aflow"] == enargite for a in out)
    held = SubstitutionGenerator(library="aflow", max_sites=16, threshold=1e-7, seed=1, exclude=[enargite])
    assert enargite not in {p.properties["aflow"] for p in held.prototypes}
    assert len(held.prototypes) == len(gen.prototypes) - 1
    # draws are weighted by probability without replacement, and a new salt draws another order
    first = [a.info["prototype_index"] for a in gen.sample(5)]
    gen.reseed(7)
    assert [a.info["prototype_index"] for a in gen.sample(5)] != first or len(gen.candidates()) <= 5


def test_mixture_splits_by_share_learns_and_round_trips(tmp_path):
    from nodestore.models import registry
    from nodestore.models.generator import MixtureGenerator

    cfg = {"backend": "mixture", "members": [{"backend": "motif", "share": 2, "max_atoms": 16},
                                             {"backend": "random", "share": 1, "max_atoms": 16,
                                              "compositions": ["Li3PS4", "Li2S"]}]}
    gen = registry.from_config("generator", cfg)
    assert gen.counts(10) == [7, 3] and gen.counts(3) == [2, 1]
    out = gen.sample(9)
    assert [a.info["generator"] for a in out].count("motif") == 6 and len(out) == 9
    gen.reseed(1)
    again = gen.sample(9)
    assert not np.allclose(again[0].positions[:3], out[0].positions[:3])
    new = gen.update([{"composition": "Li2S", "z": 1, "spacegroup": 1, "reward": 1.0}] * 4
                     + [{"composition": "Li3PS4", "z": 1, "spacegroup": 1, "reward": 0.0}] * 4)
    for member in new.members:
        assert member.probabilities("composition")["Li2S"] > member.probabilities("composition")["Li3PS4"]
    new.save(tmp_path / "mix")
    back = Generator.load(tmp_path / "mix")
    assert type(back) is MixtureGenerator and back.counts(10) == [7, 3]
    assert back.members[1].probabilities("composition") == pytest.approx(new.members[1].probabilities("composition"))
    with pytest.raises(ValidationError, match="needs members"):
        MixtureGenerator(members=[])
    # the shares follow each strategy's yield: random's candidates earned, motif's did not
    learnt = new.update([{"composition": "Li2S", "z": 1, "spacegroup": 1, "reward": 1.0, "strategy": "random"}] * 3
                        + [{"composition": "Li3PS4", "z": 1, "spacegroup": 1, "reward": 0.0, "strategy": "motif"}] * 6)
    assert learnt.shares[1] > new.shares[1] and learnt.shares[0] < new.shares[0]
    assert sum(learnt.shares) == pytest.approx(sum(new.shares)) and min(learnt.shares) > 0
    learnt.save(tmp_path / "mix2")
    assert Generator.load(tmp_path / "mix2").shares == pytest.approx(learnt.shares)


def test_framework_holes_of_the_three_anion_lattices():
    from collections import Counter

    from nodestore.models.generator import FRAMEWORKS, STACKING, framework_holes

    got = {}
    for name, (cell, frac) in FRAMEWORKS.items():
        holes = framework_holes(cell, frac, axis=STACKING.get(name))
        got[name] = Counter(h["coordination"] for h in holes)
        # unit nearest-neighbour distance: a tetrahedral hole of a close packing is sqrt(3/8) from its anions
        if name != "bcc":
            assert {round(h["radius"], 3) for h in holes if h["coordination"] == 4} == {round((3 / 8) ** 0.5, 3)}
            assert Counter(h["orientation"] for h in holes if h["coordination"] == 4) == {1: 4, -1: 4}
    # per anion: 2 tetrahedral and 1 octahedral hole in fcc and hcp, 6 tetrahedral in bcc
    assert got == {"fcc": {4: 8, 6: 4}, "hcp": {4: 8, 6: 4}, "bcc": {4: 12}}


def test_framework_generator_builds_thiophosphates_on_anion_lattices_and_reaches_known_phases(tmp_path):
    from collections import Counter

    from ase.build import bulk
    from ase.io import read
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.io.ase import AseAtomsAdaptor

    from nodestore.chem.motifs import clusters
    from nodestore.models import registry
    from nodestore.models.generator import FrameworkGenerator

    gen = registry.create("generator", "framework", seed=0)
    # the default compositions are the Li(+) P(+5) S(-2) balanced ones
    assert {"Li2S", "Li3PS4", "Li4P2S7", "Li7PS6"} <= set(gen.compositions)
    out = gen.sample(40, compositions=["Li3PS4", "Li7PS6", "Li4P2S7", "Li2S"])
    assert len(out) == 40
    units = {"Li3PS4": {"PS4"}, "Li7PS6": {"PS4", "S"}, "Li4P2S7": {"P2S7 (corner-sharing)"}, "Li2S": {"S"}}
    for a in out:
        c = Counter(a.get_chemical_symbols())
        assert c["Li"] + 5 * c["P"] == 2 * c["S"] and len(a) <= 24 and min_distance_ok(a, 1.5)
        assert a.info["generator"] == "framework" and a.info["framework"].split()[0] in ("fcc", "hcp", "bcc")
        # P sits in tetrahedral holes: the census sees whole thiophosphate anions, never fused ones
        assert {cl.label for cl in clusters(a)} <= units[a.info["composition"]], (a.info, clusters(a))
    # the search reaches known phases before any relaxation: antifluorite Li2S (every tetrahedral
    # hole of fcc S) and gamma-Li3PS4 (P and Li in the T+ holes of hcp S, enargite-like)
    sm = StructureMatcher()
    to = AseAtomsAdaptor.get_structure
    li2s = to(bulk("SLi2", "fluorite", a=5.70))
    gamma = to(read(str(STRUCTURES / "Li3PS4_gamma_Pmn21.cif")))
    cands = FrameworkGenerator(seed=1).sample(40, compositions=["Li2S"], conditions={"max_atoms": 12})
    assert any(sm.fit(to(a), li2s) for a in cands)
    cands = [a for a in FrameworkGenerator(seed=2).sample(250, compositions=["Li3PS4"], conditions={"max_atoms": 16})
             if len(a) == 16]
    hits = [a for a in cands if sm.fit(to(a), gamma)]
    assert hits and all(a.info["framework"] == "hcp 2x1x1 polar" for a in hits)
    again = FrameworkGenerator(seed=0).sample(40, compositions=["Li3PS4", "Li7PS6", "Li4P2S7", "Li2S"])
    np.testing.assert_array_equal(out[7].positions, again[7].positions)
    gen.save(tmp_path / "f")
    back = Generator.load(tmp_path / "f")
    assert type(back) is FrameworkGenerator and back.modes == gen.modes
    for bad in ({"elements": ["Li", "P", "S", "Cl"]}, {"modes": {"zigzag": 1}}, {"compositions": ["Li2PS4"]},
                {"framework_weights": {"bcc": -1}}):
        with pytest.raises(ValidationError):
            FrameworkGenerator(**bad)
