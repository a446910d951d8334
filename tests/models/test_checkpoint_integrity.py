"""Issue 11, defect 6: a checkpoint that is not what its meta.json says is refused with exit 7.

* a pickled (not weights-only) ``model.pt`` crashed every backend with UnpicklingError (exit 70);
* a checkpoint's tree hash was checked only after its weights had been unpickled, and the error
  did not say which file was damaged.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from conftest import STRUCTURES  # noqa: E402
from nodestore.errors import IntegrityError  # noqa: E402
from nodestore.models import _checkpoint as ckpt  # noqa: E402
from nodestore.models import registry  # noqa: E402
from nodestore.models.forcefield import ForceField  # noqa: E402

TINY_ORB = {"latent_dim": 16, "base_mlp_hidden_dim": 16, "base_mlp_depth": 1, "head_mlp_hidden_dim": 16,
            "head_mlp_depth": 1, "num_message_passing_steps": 1, "radius": 4.0, "max_num_neighbors": 12}

BACKENDS = {
    "orb": lambda: registry.create("forcefield", "orb", architecture="orb-v3-direct", config=TINY_ORB, seed=0),
    "chgnet": lambda: registry.create("forcefield", "chgnet"),
    "sevenn": lambda: registry.create("forcefield", "sevenn", pretrained="7net-0"),
}


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def saved(request, tmp_path_factory):
    """A checkpoint directory of each backend."""
    d = tmp_path_factory.mktemp(request.param) / "ck"
    BACKENDS[request.param]().save(d)
    return d


def pickle_weights(directory):
    """Replace model.pt with a pickle that is not weights-only (an object torch must unpickle)."""
    torch.save({"weights": torch.zeros(2), "trainer": argparse.Namespace(lr=1e-3)}, directory / "model.pt")


def rehash(directory):
    """Record the directory's current files in meta.json, as a crafted checkpoint would."""
    meta = json.loads((directory / "meta.json").read_text())
    meta["hash"], meta["files"] = ckpt.hash_files(directory)
    (directory / "meta.json").write_text(json.dumps(meta))


def flip_a_byte(f):
    f.chmod(0o644)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


def test_meta_records_each_file_and_the_hash_is_checked_first(saved, tmp_path):
    meta = json.loads((saved / "meta.json").read_text())
    assert "model.pt" in meta["files"]
    assert set(meta["files"]) == {f.name for f in saved.iterdir() if f.name != "meta.json"}
    assert ForceField.load(saved).hash == meta["hash"]
    bad = shutil.copytree(saved, tmp_path / "bad")
    flip_a_byte(bad / "model.pt")
    with pytest.raises(IntegrityError, match=r"model\.pt \(changed\)") as e:
        ForceField.load(bad)
    assert str(bad) in str(e.value) and str(e.value).count("(changed)") == 1


def test_a_pickled_model_pt_is_refused_unloaded(saved, tmp_path):
    bad = shutil.copytree(saved, tmp_path / "pickled")
    pickle_weights(bad)
    with pytest.raises(IntegrityError, match=r"model\.pt \(changed\)"):
        ForceField.load(bad)  # the hash catches it first
    rehash(bad)  # crafted to match: torch.load(weights_only=True) still refuses to unpickle it
    with pytest.raises(IntegrityError, match=r"model\.pt is not a weights-only state dict"):
        ForceField.load(bad)


def test_a_checkpoint_without_per_file_digests_names_its_files(saved, tmp_path):
    """Checkpoints written before meta.json recorded ``files``: the damaged one is among those named."""
    old = shutil.copytree(saved, tmp_path / "old")
    meta = json.loads((old / "meta.json").read_text())
    del meta["files"]
    (old / "meta.json").write_text(json.dumps(meta))
    assert ForceField.load(old).hash == meta["hash"]
    flip_a_byte(old / "model.pt")
    with pytest.raises(IntegrityError, match=r"one of model\.pt"):
        ForceField.load(old)


def test_a_generator_checkpoint_is_checked_against_its_hash(tmp_path):
    from nodestore.models.generator import Generator

    gen = registry.create("generator", "pyxtal", elements=["Li", "P", "S"])
    gen.save(tmp_path / "g")
    assert Generator.load(tmp_path / "g").hash == gen.hash
    (state,) = [p for p in (tmp_path / "g").iterdir() if p.name != "meta.json"]
    state.write_text(state.read_text().replace("{", "{ ", 1))
    with pytest.raises(IntegrityError, match=rf"{state.name} \(changed\)"):
        Generator.load(tmp_path / "g")


# -- through the CLI: one line, exit 7 ---------------------------------------------------------

def ns(path, *args):
    p = subprocess.run([sys.executable, "-m", "nodestore", "-C", str(path), *map(str, args)], capture_output=True,
                       text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    return p.returncode, p.stdout + p.stderr


@pytest.fixture
def node_with_checkpoint(tmp_path):
    """A node whose committed, current force field is a tiny orb model."""
    from nodestore.loop import create_node

    node = create_node("Li-P-S", tmp_path / "n")
    BACKENDS["orb"]().save(tmp_path / "src")
    with node.transaction("tiny orb") as tx:
        cid = tx.add_checkpoint(tmp_path / "src", "forcefield")
    return node, cid


@pytest.mark.parametrize("damage", ["flip", "pickle"])
def test_cli_refuses_a_damaged_committed_checkpoint_with_exit_7(node_with_checkpoint, damage):
    node, cid = node_with_checkpoint
    cif = STRUCTURES / "Li3P_P63mmc.cif"
    rc, out = ns(node.path, "predict", cif, "--model", cid)
    assert rc == 0, out
    weights = node.path / "models" / cid / "model.pt"
    if damage == "flip":
        flip_a_byte(weights)  # in place: the DVC cache object it links to too
    else:
        weights.unlink()  # a new file, not the cache object
        pickle_weights(weights.parent)
        rehash(weights.parent)
    for args in (["predict", cif], ["predict", cif, "--model", cid]):
        rc, out = ns(node.path, *args)
        assert rc == 7, out
        assert "Traceback" not in out and "internal error" not in out and len(out.strip().splitlines()) == 1, out
        assert cid in out and "model.pt" in out, out
