"""Table-level chemistry: hull, classification, S.U.N. counts, entropy and safe queries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nodestore.chem import api
from nodestore.chem.hull import mp_elemental_references, reference_structures
from nodestore.errors import NoHullError, ValidationError
from nodestore.frames import FrameBatch, FrameTable

AIMD = Path(__file__).resolve().parents[1] / "nodestore/data/li-p-s/labelled/lips_aimd_Li27P12S44.extxyz"


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    from nodestore.chem.synthetic import perturbed, random_crystals

    t = FrameTable.create(tmp_path_factory.mktemp("chem") / "table")
    frames = read(AIMD, index=":12")
    t.append(FrameBatch.from_atoms(frames, method="vasp-pbe", origin="labelled", iteration=0))
    refs = reference_structures()
    t.append(FrameBatch.from_atoms(refs, origin="reference"))
    by_name = {a.info["name"]: AseAtomsAdaptor.get_structure(a) for a in refs}
    rng = np.random.default_rng(5)
    dup = perturbed(by_name["Li3PS4_gamma"], 0.03, rng)
    sub = by_name["Li3PS4_beta"].copy()
    sub.replace_species({"P": "As"})
    new = random_crystals(1, seed=11)[0]
    cands = [AseAtomsAdaptor.get_atoms(s) for s in (dup, sub, new)]
    for a in cands:
        a.info = {}  # pymatgen carries the reference's info (origin) through the Structure
    t.append(FrameBatch.from_atoms(cands, origin="generated", iteration=1))
    return t


def test_hull_for_table(table):
    diagram, e_hull, e_form = api.hull_for_table(table, "vasp-pbe",
                                                 extra_entries=mp_elemental_references(["Li", "P", "S"]))
    methods = table.column("method")
    pbe = methods == "vasp-pbe"
    assert pbe.sum() == 12
    assert np.all(np.isfinite(e_hull[pbe])) and np.all(np.isnan(e_hull[~pbe]))
    assert np.all(e_form[pbe] < -0.5)
    assert e_hull[pbe].min() == 0.0
    assert {e.composition.reduced_formula for e in diagram.stable_entries} >= {"Li", "P", "S"}
    table.annotate(table.row_keys()[pbe].tolist(), {"e_hull": e_hull[pbe], "e_form": e_form[pbe]})


def test_hull_errors(table):
    with pytest.raises(NoHullError, match="missing elemental reference for Li"):
        api.hull_for_table(table, "vasp-pbe")
    with pytest.raises(NoHullError, match="no hull for method pbesol: no rows"):
        api.hull_for_table(table, "pbesol")


def test_classify_table(table):
    keys, cols = api.classify_table(table)
    assert len(keys) == len(table)
    table.annotate(keys, cols)
    origin = table.column("origin")
    novelty = table.column("novelty")
    is_entry = table.column("is_entry")
    gen = np.nonzero(origin == "generated")[0]
    assert novelty[gen].tolist() == ["duplicate", "substitution", "novel"]
    assert is_entry[gen].tolist() == [False, True, True]  # the perturbed copy duplicates the reference row
    ids = table.column("frame_id")
    ref_gamma = [i for i in np.nonzero(origin == "reference")[0] if table.column("formula")[i] == "Li3PS4"]
    assert table.column("duplicate_of")[gen[0]] in set(ids[ref_gamma])
    # MD frames: the lowest-E_hull frame of a group is its representative
    md = np.nonzero(origin == "labelled")[0]
    dup_of = table.column("duplicate_of")
    e_hull = table.column("e_hull")
    for r in md:
        if dup_of[r]:
            rep = int(np.nonzero(ids == dup_of[r])[0][0])
            assert e_hull[rep] <= e_hull[r]
    assert is_entry[md].sum() >= 1
    fp = table.column("fingerprint")
    assert all(f.count("|") == 2 for f in fp)
    # SMACT: Li3PS4 and Li3AsS4 charge-balance; P4S3 (P-P bonds, mixed valence) does not
    assert table.column("chemically_valid")[gen].tolist() == [1, 1, 0]
    assert table.column("spacegroup")[origin == "reference"].min() > 0


def test_sun_counts(table):
    c = api.sun_counts(table, threshold=0.1, method="vasp-pbe")
    assert c["total"] == 12
    assert c["by_threshold"][0.0]["stable"] >= 1
    assert c["sun"] == c["by_threshold"][0.1]["sun"]


def test_entropy_report(table):
    origin = table.column("origin")
    rows = np.nonzero(origin == "reference")[0]
    new = np.nonzero(origin == "generated")[0]
    rep = api.entropy_report(table, rows=new, reference_rows=rows)
    assert rep["n_atoms"] == int(table.column("n_atoms")[new].sum())
    assert set(rep["per_element"]) >= {"Li", "S"}
    assert 0 < rep["delta"]["fraction_new"] < 1


def test_entropy_cache_is_keyed_by_the_set_of_configurations(table, tmp_path, monkeypatch):
    from nodestore.chem import entropy

    rows = np.nonzero(table.column("origin") == "generated")[0]
    fresh = api.entropy_report(table, rows=rows, diversity=False)
    cached = api.entropy_report(table, rows=rows, diversity=False, cache=tmp_path)
    assert cached == fresh and len(list(tmp_path.glob("entropy-*.json"))) == 1
    calls = []
    real = entropy.entropy_report
    monkeypatch.setattr(entropy, "entropy_report", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = api.entropy_report(table, rows=rows[::-1], diversity=False, cache=tmp_path)  # same set
    assert again == fresh and not calls
    other = api.entropy_report(table, rows=rows[1:], diversity=False, cache=tmp_path)
    assert calls and other["n_atoms"] < fresh["n_atoms"]
    assert len(list(tmp_path.glob("entropy-*.json"))) == 2


def test_query(table):
    q = api.query
    novelty = table.column("novelty")
    assert q(table, "novelty == 'novel'").tolist() == np.nonzero(novelty == "novel")[0].tolist()
    e_hull = table.column("e_hull")
    got = q(table, "e_hull < 0.05 and method == 'vasp-pbe'")
    assert got.tolist() == np.nonzero((e_hull < 0.05) & (table.column("method") == "vasp-pbe"))[0].tolist()
    assert len(q(table, "origin in ['generated', 'reference'] and not duplicate")) >= 2
    assert len(q(table, "0 <= iteration < 2")) == len(table)
    assert len(q(table, "origin == 'generated' and (novel or substitution)")) == 2
    assert len(q(table, "origin == 'generated' and e_hull < 0.025")) == 0  # no labels, no E_hull
    want = np.nonzero((e_hull < 0.025) & (novelty == "novel"))[0]
    assert q(table, "e_hull < 0.025 and novel").tolist() == want.tolist()
    assert len(q(table, "n_atoms > -1 and is_entry")) == int(table.column("is_entry").sum())


@pytest.mark.parametrize("expr", [
    "__import__('os')",
    "__import__('os').system('true')",
    "e_hull.__class__",
    "[x for x in formula]",
    "lambda: 1",
    "e_hull + 1 < 2",
    "nosuchcolumn == 1",
    "formula in 'Li'",
    "e_hull <",
    "",
    "e_hull",
])
def test_query_rejects(table, expr):
    with pytest.raises(ValidationError, match="query"):
        api.query(table, expr)


def test_classify_priority_lets_a_label_represent_its_crystal(tmp_path):
    """A force field's prediction of a crystal sits lower on its own hull than the crystal's label
    on the labeller's: by energy alone the prediction would represent it, with priority the label."""
    from ase.build import bulk

    t = FrameTable.create(tmp_path / "table")
    a = bulk("SLi2", "fluorite", a=5.70)
    b = a.copy()
    b.translate([0.2, 0.1, 0.0])
    for atoms, e in ((a, -12.0), (b, -11.0)):
        atoms.info["energy"] = e
    t.append(FrameBatch.from_atoms([a], method="ff:sevenn", origin="relaxed", iteration=1))
    t.append(FrameBatch.from_atoms([b], method="gpaw-pbe", origin="labelled", iteration=1))
    t.annotate(t.row_keys().tolist(), {"e_hull": np.array([0.0, 0.02]), "e_form": np.zeros(2)})
    keys, cols = api.classify_table(t)
    assert [bool(x) for x in cols["is_entry"]] == [True, False]
    predicted = np.array([m.startswith("ff:") for m in t.column("method")], dtype=float)
    keys, cols = api.classify_table(t, priority=predicted)
    assert [bool(x) for x in cols["is_entry"]] == [False, True]
    assert cols["duplicate_of"][0] == t.column("frame_id")[1]
