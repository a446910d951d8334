"""ForceField protocol: orb (tiny, built offline) and CHGNet (pretrained, offline)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(2)

from ase.build import bulk  # noqa: E402
from ase.io import read  # noqa: E402

from nodestore.errors import BackendError, SchemaError  # noqa: E402
from nodestore.models import registry  # noqa: E402
from nodestore.models.forcefield import ForceField  # noqa: E402
from nodestore.schemas_util import validate  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "nodestore" / "data" / "li-p-s" / "labelled"


def li2s(a=5.70):
    """Antifluorite Li2S: S on the fcc site, Li on the tetrahedral sites.

    (``bulk("Li2S", "fluorite")`` puts Li on the fcc site and S on a
    tetrahedral one: not the Li2S structure.)"""
    return bulk("SLi2", "fluorite", a=a)


@pytest.fixture(scope="module")
def frames():
    return read(DATA / "Li3PS4_sample_train.xyz", index=":12")


@pytest.fixture(scope="module")
def tiny_orb(tmp_path_factory):
    from nodestore.models._orb import OrbForceField

    ff = OrbForceField("orb-v3-direct", seed=0)
    path = tmp_path_factory.mktemp("orb") / "ck"
    ff.save(path)
    return ff, path


@pytest.fixture(scope="module")
def chgnet():
    return registry.create("forcefield", "chgnet")


def test_orb_round_trip(tiny_orb, frames):
    ff, path = tiny_orb
    meta = json.loads((path / "meta.json").read_text())
    validate(meta, "checkpoint")
    assert meta["backend"] == "orb" and meta["architecture"]["name"] == "orb-v3-direct"
    loaded = ForceField.load(path)  # dispatch through the registry
    assert type(loaded).__name__ == "OrbForceField" and loaded.hash == meta["hash"]
    a, b = ff.predict(frames[:1]), loaded.predict(frames[:1])
    for x, y in zip(a, b):
        assert x["energy"] == y["energy"]
        np.testing.assert_array_equal(x["forces"], y["forces"])
        np.testing.assert_array_equal(x["stress"], y["stress"])
        assert x["forces"].shape == (len(frames[0]), 3) and x["stress"].shape == (6,)
    calc = loaded.as_calculator()
    atoms = frames[0].copy()
    atoms.calc = calc
    assert atoms.get_potential_energy() == pytest.approx(a[0]["energy"], rel=1e-6)


def test_orb_finetune_lowers_loss(tiny_orb, frames, tmp_path):
    ff, path = tiny_orb
    parent = ForceField.load(path)
    child = parent.finetune(frames, val_fraction=0.25, epochs=6, patience=3, lr=2e-3, batch_size=3)
    m = child.metrics
    assert m["n_train"] == 9 and m["n_val"] == 3
    assert m["val_energy_rmse_per_atom"] < m["val_energy_rmse_per_atom_before"]
    hist = m["history"]
    assert min(h["val_loss"] for h in hist) <= hist[0]["val_loss"]
    child.save(tmp_path / "child")
    meta = json.loads((tmp_path / "child" / "meta.json").read_text())
    assert meta["parent"] == parent.hash
    assert len(meta["training_frames"]) == 9
    assert "val_force_rmse" in meta["metrics"]
    # the parent is unchanged by fine-tuning
    np.testing.assert_array_equal(parent.predict(frames[:1])[0]["forces"], ff.predict(frames[:1])[0]["forces"])


def test_orb_finetune_streams_from_a_table_dataset(tiny_orb, frames, tmp_path):
    """Fine-tuning on ``table.dataset(rows)`` (read batch by batch, here through 2 loader
    workers) trains the same model as on the same frames in memory."""
    from nodestore.frames import FrameBatch, FrameTable

    _, path = tiny_orb
    t = FrameTable.create(tmp_path / "t")
    t.append(FrameBatch.from_atoms(frames, method="vasp-pbesol"))
    ds = t.dataset()
    kw = dict(val_fraction=0.25, epochs=2, patience=3, lr=2e-3, batch_size=3, seed=1)
    on_list = ForceField.load(path).finetune(t.to_atoms(), **kw)
    on_ds = ForceField.load(path).finetune(ds, loader_workers=2, **kw)
    assert on_ds.metrics["n_train"] == on_list.metrics["n_train"] > 0
    assert on_ds.metrics["excluded"] == on_list.metrics["excluded"]
    assert on_ds.training_frames == on_list.training_frames
    a, b = on_list.predict(frames[:2]), on_ds.predict(frames[:2])
    for x, y in zip(a, b):
        assert x["energy"] == pytest.approx(y["energy"], abs=1e-6)
        np.testing.assert_allclose(x["forces"], y["forces"], atol=1e-6)


def test_wrong_backend_and_architecture(tiny_orb, tmp_path):
    from nodestore.models._chgnet import ChgnetForceField
    from nodestore.models._orb import OrbForceField

    _, path = tiny_orb
    with pytest.raises(BackendError, match="backend 'orb'"):
        ChgnetForceField.load(path)
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    meta = json.loads((bad / "meta.json").read_text())
    meta["architecture"]["config"]["latent_dim"] = 48
    (bad / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BackendError, match="do not fit"):
        OrbForceField.load(bad)
    meta["architecture"]["name"] = "orb-v9"
    (bad / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BackendError, match="unknown orb architecture"):
        registry.load_checkpoint(bad)
    meta["backend"] = "nosuch"
    (bad / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BackendError, match="nosuch"):
        registry.load_checkpoint(bad)
    del meta["hash"]
    (bad / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SchemaError):
        OrbForceField.load(bad)


def test_chgnet_li2s_energy_and_relax(chgnet):
    a = li2s()
    e = chgnet.predict([a])[0]["energy"] / len(a)
    assert -4.6 < e < -3.6  # PBE scale (MP Li2S about -4.1 eV/atom)
    ref = chgnet.relax([a], fmax=0.01, steps=100)[0]
    a0 = (4 * ref["atoms"].get_volume()) ** (1 / 3)
    assert 5.5 < a0 < 5.9
    big, small = li2s(a0 * 1.05), li2s(a0 * 0.96)
    big.rattle(0.03, seed=1)
    small.rattle(0.03, seed=2)
    out = chgnet.relax([big, small], fmax=0.02, steps=150)
    for r in out:
        assert r["converged"]
        assert (4 * r["atoms"].get_volume()) ** (1 / 3) == pytest.approx(a0, abs=0.03)
        assert r["energy"] / 3 == pytest.approx(ref["energy"] / 3, abs=2e-3)


def test_batched_relax_matches_one_calculator_per_structure(chgnet):
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    a = li2s(5.9)
    a.rattle(0.02, seed=3)
    batched = chgnet.relax([a, li2s(5.5)], fmax=0.05, steps=40)[0]
    b = a.copy()
    b.calc = chgnet.as_calculator()
    opt = FIRE(FrechetCellFilter(b), logfile=None)
    opt.run(fmax=0.05, steps=40)
    assert batched["steps"] == opt.nsteps
    np.testing.assert_allclose(batched["atoms"].cell.array, b.cell.array, atol=1e-5)


def test_chgnet_finetune_save_load(chgnet, frames, tmp_path):
    child = chgnet.finetune(frames[:4], val_fraction=0.25, epochs=1, lr=1e-4, batch_size=3)
    assert child.metrics["n_val"] == 1 and child.parent is None
    child.save(tmp_path / "c")
    again = registry.load_checkpoint(tmp_path / "c")
    assert again.predict(frames[:1])[0]["energy"] == pytest.approx(child.predict(frames[:1])[0]["energy"], abs=1e-5)
    assert again.method.startswith("chgnet@")
