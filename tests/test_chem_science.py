"""Hull, novelty classes, entropy, S.U.N. counts and force-field metrics on real Li–P–S data."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from nodestore.chem.hull import compute_hull, mp_elemental_references, reference_structures
from nodestore.errors import NoHullError, ValidationError

AIMD = "nodestore/data/li-p-s/labelled/lips_aimd_Li27P12S44.extxyz"


@pytest.fixture(scope="module")
def refs():
    return {a.info["name"]: a for a in reference_structures()}


@pytest.fixture(scope="module")
def chgnet():
    pytest.importorskip("chgnet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from chgnet.model import CHGNet

        return CHGNet.load(verbose=False)


def _chgnet_energies(model, images):
    from pymatgen.io.ase import AseAtomsAdaptor

    structs = [AseAtomsAdaptor.get_structure(a) for a in images]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        preds = model.predict_structure(structs, batch_size=8)
    return [float(p["e"]) * len(s) for p, s in zip(preds, structs)], preds


@pytest.fixture(scope="module")
def aimd_frames():
    from ase.io import read

    return read(Path(__file__).resolve().parents[1] / AIMD, index=":40")


# -- hull ---------------------------------------------------------------------
def test_reference_structures_filtered(refs):
    assert set(refs) == {"P_black", "S_alpha", "Li3PS4_gamma", "Li3PS4_beta", "Li3P", "Li_bcc",
                         "Li2S_antifluorite"}
    names = {a.info["name"] for a in reference_structures(["Li", "S"])}
    assert names == {"S_alpha", "Li_bcc", "Li2S_antifluorite"}


def test_known_phases_on_or_near_their_hull(refs, chgnet):
    """One consistent energy model (CHGNet 0.3.0) for every phase: known phases are on the hull."""
    images = list(refs.values())
    energies, _ = _chgnet_energies(chgnet, images)
    res = compute_hull([(a, e, "chgnet-0.3.0") for a, e in zip(images, energies)], "chgnet-0.3.0")
    e_hull = dict(zip(refs, res.e_hull))
    e_form = dict(zip(refs, res.e_form))
    for name in ("Li3PS4_beta", "Li3PS4_gamma", "Li3P", "Li2S_antifluorite"):
        assert e_hull[name] < 0.05, (name, e_hull[name])
        assert e_form[name] < -0.4
    assert min(e_hull["Li3PS4_beta"], e_hull["Li3PS4_gamma"]) == 0.0
    # a composition off the known phases decomposes into hull phases
    screen = compute_hull([("Li4P2S7", -4.0 * 13, "chgnet-0.3.0")], "chgnet-0.3.0",
                          references=[(a, e, "chgnet-0.3.0") for a, e in zip(images, energies)],
                          include_items=False, decomposition=True)
    assert set(screen.decomposition[0]) <= {"Li3PS4", "S", "P", "Li2S", "Li3P", "Li"}


def test_pbe_frames_against_mp_elemental_references(aimd_frames):
    """Real VASP-PBE AIMD energies on the MP PBE elemental hull: strongly negative formation energy."""
    items = [(a, a.get_potential_energy(), "vasp-pbe") for a in aimd_frames]
    res = compute_hull(items, "vasp-pbe", references=mp_elemental_references(["Li", "P", "S"]))
    assert np.all(res.e_form < -0.5) and np.all(res.e_form > -1.5)
    assert res.e_hull.min() == 0.0  # the lowest frame is the hull at its composition
    assert res.e_hull.max() < 0.1  # MD at finite temperature stays close above it


def test_missing_elemental_reference_raises(aimd_frames):
    items = [(a, a.get_potential_energy(), "vasp-pbe") for a in aimd_frames[:3]]
    with pytest.raises(NoHullError, match="no hull for method vasp-pbe: missing elemental reference for S"):
        compute_hull(items, "vasp-pbe", references=mp_elemental_references(["Li", "P"]))


def test_methods_never_mix(aimd_frames):
    items = [(aimd_frames[0], -1.0, "vasp-pbe"), (aimd_frames[1], -1.0, "chgnet")]
    with pytest.raises(ValidationError, match="never share a hull"):
        compute_hull(items, "vasp-pbe", references=mp_elemental_references(["Li", "P", "S"]))


# -- novelty --------------------------------------------------------------------
def test_novelty_classes(refs):
    from nodestore.chem.novelty import classify
    from nodestore.chem.synthetic import perturbed, random_crystals
    from pymatgen.io.ase import AseAtomsAdaptor

    rng = np.random.default_rng(0)
    known = [AseAtomsAdaptor.get_structure(a) for a in refs.values()]
    names = list(refs)
    gamma = known[names.index("Li3PS4_gamma")]
    beta = known[names.index("Li3PS4_beta")]
    dup = perturbed(gamma, 0.03, rng)
    arsenic = beta.copy()
    arsenic.replace_species({"P": "As"})
    new = random_crystals(1, seed=11)[0]
    res = classify([dup, arsenic, new, dup.copy()], known=known)
    assert res.classes == ["duplicate", "substitution", "novel", "duplicate"]
    assert names[res.known_match[0]] == "Li3PS4_gamma"
    assert names[res.prototype[1]] == "Li3PS4_beta"
    assert res.counts() == {"duplicate": 2, "substitution": 1, "novel": 1}


def test_chemically_valid():
    from nodestore.chem.novelty import chemically_valid

    assert chemically_valid(["Li3PS4", "Li2S", "Li3P", "S", "Li5S"]).tolist() == [True, True, True, True, False]


# -- entropy ------------------------------------------------------------------------
def test_entropy_grows_with_new_environments_not_with_duplicates(refs):
    from nodestore.chem.entropy import delta_entropy, entropy_report

    base = [refs["Li3PS4_gamma"], refs["Li3PS4_beta"]]
    h0 = entropy_report(base)
    dup = refs["Li3PS4_gamma"].copy()
    dup.rattle(0.005, seed=1)
    h_dup = entropy_report(base + [dup])
    h_twice = entropy_report(base + [a.copy() for a in base])
    h_new = entropy_report(base + [refs["Li_bcc"].repeat(2), refs["P_black"]])
    assert h0.n_atoms == 48 and set(h0.per_element) == {"Li", "P", "S"}
    # duplicates: H of the distribution is unchanged by duplicating the set, and the
    # diversity (effective number of distinct environments) does not grow
    assert h_twice.H == pytest.approx(h0.H, abs=1e-9)
    assert h_twice.diversity == pytest.approx(h0.diversity, abs=1e-9)
    assert h_dup.diversity < h0.diversity + 0.03
    # genuinely new environments (metallic Li, P-P bonds): both grow
    assert h_new.H > h0.H + 0.1 and h_new.H > h_dup.H + 0.05
    assert h_new.diversity > h0.diversity + 0.1
    assert h_new.per_element["Li"] > h0.per_element["Li"] + 0.1
    d_dup = delta_entropy([dup], base)
    d_new = delta_entropy([refs["Li_bcc"].repeat(2), refs["P_black"]], base)
    assert d_dup.fraction_new == 0.0 and d_dup.max < 0
    assert d_new.fraction_new > 0.9 and d_new.mean > 0


# -- curation and metrics -------------------------------------------------------------
def test_sun_counts():
    from nodestore.chem.curate import sun_counts

    e = [0.0, 0.02, 0.05, 0.2, np.nan, 0.0]
    unique = [True, True, True, True, True, False]
    nov = ["novel", "novel", "substitution", "novel", "novel", "novel"]
    c = sun_counts(e, unique, nov, threshold=0.1)
    assert c["by_threshold"][0.0] == {"stable": 2, "stable_unique": 1, "sun": 1, "sun_with_substitutions": 1}
    assert c["by_threshold"][0.025]["sun"] == 2
    assert c["sun"] == 2 and c["sun_with_substitutions"] == 3 and c["stable"] == 4


def test_stability_metrics():
    from nodestore.chem.metrics import stability_metrics

    true = np.array([-0.05, 0.01, 0.2, 0.3, -0.01, 0.5])
    pred = np.array([-0.02, -0.01, 0.1, 0.4, 0.02, np.nan])
    m = stability_metrics(true, pred, threshold=0.0)
    # stable: true {0, 4}; predicted {0, 1}: TP 1, FP 1, FN 1
    assert m["Precision"] == pytest.approx(0.5) and m["Recall"] == pytest.approx(0.5)
    assert m["F1"] == pytest.approx(0.5)
    assert m["DAF"] == pytest.approx(0.5 / (2 / 6))
    assert m["MAE"] == pytest.approx(np.mean(np.abs(true[:5] - pred[:5])))
    # a batch with no stable label (a loop iteration's usual few): counts and errors, no crash
    none_stable = stability_metrics([0.2, 0.3, 0.4], [0.1, -0.05, 0.5])
    assert (none_stable["TP"], none_stable["FP"], none_stable["TN"], none_stable["FN"]) == (0, 1, 2, 0)
    assert none_stable["Precision"] == 0.0 and none_stable["Recall"] is None and none_stable["F1"] is None
    assert none_stable["Accuracy"] == pytest.approx(2 / 3) and "only unstable" in none_stable["note"]
    assert none_stable["MAE"] == pytest.approx(np.mean([0.1, 0.35, 0.1]))


def test_force_field_errors_against_pbe_frames(chgnet, aimd_frames):
    from nodestore.chem.metrics import energy_force_errors

    frames = aimd_frames[:3]
    energies, preds = _chgnet_energies(chgnet, frames)
    out = energy_force_errors(energies, [a.get_potential_energy() for a in frames], [len(a) for a in frames],
                              np.concatenate([p["f"] for p in preds]),
                              np.concatenate([a.get_forces() for a in frames]))
    assert out["n_frames"] == 3 and out["n_force_atoms"] == 3 * 83
    assert 0 < out["force_rmse"] < 0.6
    # CHGNet learnt MP2020-corrected energies; these frames are raw PBE from another
    # code setup, so a constant offset of ~0.3 eV/atom remains
    assert out["energy_rmse"] < 0.5
