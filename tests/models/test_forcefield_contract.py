"""The ForceField contract: every backend runs the same tests (as zarr's StoreTests do for stores).

A backend joins by adding a fixture entry to ``BACKENDS``: a factory of a small
model that works offline (tiny orb built here; CHGNet and SevenNet from the
weights in their wheels).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(2)

from ase.build import bulk  # noqa: E402

from nodestore.errors import IntegrityError  # noqa: E402
from nodestore.models import registry  # noqa: E402
from nodestore.models.forcefield import ForceField  # noqa: E402
from nodestore.schemas_util import validate  # noqa: E402

BACKENDS = {
    "orb": lambda: registry.create("forcefield", "orb", architecture="orb-v3-direct", seed=0),
    "chgnet": lambda: registry.create("forcefield", "chgnet"),
    "sevenn": lambda: registry.create("forcefield", "sevenn", pretrained="7net-0"),
    "pair": lambda: registry.create("forcefield", "pair"),
}

#: a known per-element shift (eV per atom of the element) put on top of the model's own energies
SHIFT = {"Li": -0.31, "P": 0.52, "S": -1.07}


def structures():
    """Small cells of three compositions (Li, Li2S, Li3P) and one of all three elements: the
    composition matrix has full rank, so every element's reference is determined."""
    rng = np.random.default_rng(0)
    li = bulk("Li", "bcc", a=3.44, cubic=True)
    li2s = bulk("SLi2", "fluorite", a=5.70)
    li3p = bulk("Li", "bcc", a=3.5, cubic=True).repeat((2, 1, 1))
    li3p.numbers[[0]] = 15  # Li3P
    lips = bulk("SLi2", "fluorite", a=5.9, cubic=True)  # Li8S4 ...
    lips.numbers[int(np.nonzero(lips.numbers == 16)[0][0])] = 15  # ... -> Li8PS3
    out = []
    for a in (li, li2s, li3p, lips):
        for _ in range(2):
            b = a.copy()
            b.rattle(0.05, seed=int(rng.integers(1 << 30)))
            out.append(b)
    return out


def shifted_labels(ff, images, shift=SHIFT):
    """Frames labelled with the model's own forces and its energy plus a per-element shift."""
    from ase.calculators.singlepoint import SinglePointCalculator

    preds = ff.predict(images)
    frames = []
    for a, p in zip(images, preds):
        b = a.copy()
        e = p["energy"] + sum(shift[s] for s in b.get_chemical_symbols())
        b.calc = SinglePointCalculator(b, energy=e, forces=p["forces"], stress=p["stress"])
        frames.append(b)
    return frames


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def ff(request):
    return BACKENDS[request.param]()


def test_predict_shapes_and_batching(ff):
    images = structures()
    batched = ff.predict(images, batch_size=4)
    single = [ff.predict([a])[0] for a in images[:3]]
    for a, r in zip(images, batched):
        assert np.isfinite(r["energy"])
        assert r["forces"].shape == (len(a), 3) and np.all(np.isfinite(r["forces"]))
        assert r["stress"] is None or r["stress"].shape == (6,)
    for b, s in zip(batched, single):
        assert b["energy"] == pytest.approx(s["energy"], abs=1e-4)
        np.testing.assert_allclose(b["forces"], s["forces"], atol=1e-4)


def test_save_load_round_trip_and_integrity(ff, tmp_path):
    images = structures()[:2]
    ref = ff.fit_references(shifted_labels(ff, images), method="toy-dft")
    h = ref.save(tmp_path / "ck")
    meta = json.loads((tmp_path / "ck" / "meta.json").read_text())
    validate(meta, "checkpoint")
    assert meta["reference_energies"]["method"] == "toy-dft"
    loaded = ForceField.load(tmp_path / "ck")
    assert type(loaded) is type(ff) and loaded.hash == h and loaded.energy_method == "toy-dft"
    a, b = ref.predict(images), loaded.predict(images)
    for x, y in zip(a, b):
        assert x["energy"] == pytest.approx(y["energy"], abs=1e-6)
    # the references are part of the hashed model: editing them breaks the hash
    shutil.copytree(tmp_path / "ck", tmp_path / "bad")
    doc = json.loads((tmp_path / "bad" / "reference_energies.json").read_text())
    doc["shift_ev"]["Li"] += 1.0
    (tmp_path / "bad" / "reference_energies.json").write_text(json.dumps(doc))
    with pytest.raises(IntegrityError):
        ForceField.load(tmp_path / "bad")


def test_reference_fit_recovers_a_known_shift(ff):
    images = structures()
    frames = shifted_labels(ff, images)
    fitted = ff.fit_references(frames, method="toy-dft")
    assert fitted.references.fit["determined"]
    for el, v in SHIFT.items():
        assert fitted.references.shift[el] == pytest.approx(v, abs=1e-4)
    assert fitted.evaluate(frames)["energy_rmse_per_atom"] < 1e-4
    assert ff.references.shift == {}  # the parent is unchanged


def test_reference_fit_keeps_undetermined_directions():
    """One composition determines only its own mix: the fit is the smallest shift that explains it."""
    from nodestore.models.references import fit_shift

    numbers = [[3, 3, 16]] * 5  # Li2S only
    shift, rec = fit_shift(numbers, [3 * 0.2] * 5)
    assert rec["rank"] == 1 and not rec["determined"]
    assert 2 / 3 * shift["Li"] + 1 / 3 * shift["S"] == pytest.approx(0.2)
    assert shift["Li"] / shift["S"] == pytest.approx(2.0)  # minimum norm: along the composition
    assert rec["rmse_after_per_atom"] < 1e-12


def test_finetune_fits_references_first_and_keeps_the_best(ff):
    images = structures()
    frames = shifted_labels(ff, images)
    child = ff.finetune(frames, val_fraction=0.25, epochs=2, patience=2, lr=1e-5, batch_size=4,
                        method="toy-dft", seed=0)
    m = child.metrics
    assert child.energy_method == "toy-dft" and m["method"] == "toy-dft"
    assert m["n_train"] == 6 and m["n_val"] == 2
    for el, v in SHIFT.items():  # the training frames alone determine the shift
        assert child.references.shift[el] == pytest.approx(v, abs=2e-3)
    # the reference fit alone takes the held-out error from the shift to ~0; training keeps the best epoch
    assert m["val_energy_rmse_per_atom_refs"] < 0.01 < m["val_energy_rmse_per_atom_before"]
    assert min(h["val_loss"] for h in m["history"]) == pytest.approx(
        min(h["val_loss"] for h in m["history"][: m["best_epoch"] + 1]))
    assert child.parent == ff.hash


def test_time_budget_ends_inside_an_epoch(ff):
    """A model too slow for one epoch in ``max_seconds`` stops between steps, not at the epoch's end."""
    frames = shifted_labels(ff, structures())
    child = ff.finetune(frames, val_fraction=0.25, epochs=3, patience=3, lr=1e-5, batch_size=1,
                        method="toy-dft", max_seconds=1e-9)
    last = child.metrics["history"][-1]
    assert child.metrics["epochs"] == 1 and last["epoch"] == 1
    assert last["frames"] == 1 < child.metrics["n_train"]  # one step, then the budget was over
    assert np.isfinite(last["val_loss"])


def test_frozen_backbone_trains_heads_only(ff):
    if not ff.head_modules:
        pytest.skip("backend cannot separate heads")
    frames = shifted_labels(ff, structures())
    before = {n: p.detach().clone() for n, p in ff.model.named_parameters()}
    heads = {id(p) for p in ff._head_parameters()}
    names_heads = {n for n, p in ff.model.named_parameters() if id(p) in heads}
    child = ff.finetune(frames, val_fraction=0, epochs=1, patience=1, lr=1e-3, batch_size=4,
                        freeze_backbone=True, refit_references=False, method="toy-dft")
    assert child.metrics["frozen_backbone"]
    after = dict(child.model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert moved and moved <= names_heads


def test_as_calculator(ff):
    a = structures()[0]
    a.calc = ff.as_calculator()
    assert a.get_potential_energy() == pytest.approx(ff.predict([a])[0]["energy"], rel=1e-6)
