"""`nodestore train`: fine-tune the force field on the node's labelled frames of one method, outside the loop."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from nodestore.config import default_params  # noqa: E402
from nodestore.loop import create_node  # noqa: E402
from nodestore.loop.actions import label_references  # noqa: E402
from nodestore.repo.node import Node  # noqa: E402

LJ = "lj-s2-e0.05"
TINY_ORB = {"backend": "orb", "architecture": "orb-v3-direct",
            "config": {"latent_dim": 16, "base_mlp_hidden_dim": 16, "base_mlp_depth": 1, "head_mlp_hidden_dim": 16,
                       "head_mlp_depth": 1, "num_message_passing_steps": 1, "radius": 4.0, "max_num_neighbors": 12},
            "finetune": {"epochs": 2, "max_seconds": 30}}


def ns(path, *args):
    p = subprocess.run([sys.executable, "-m", "nodestore", "-C", str(path), *args], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    params = default_params()
    params.update({"forcefield": TINY_ORB, "labeller": {"backend": "lj"}})
    n = create_node("Li-P-S", tmp_path_factory.mktemp("train") / "n", reference_method=LJ, params=params)
    assert label_references(n)["labelled"] >= 5
    return n


def test_train_commits_a_current_checkpoint_on_the_method_scale(node):
    head = str(node.git.head.target)
    rc, out, err = ns(node.path, "train", "--json", "--val-fraction", "0.25")
    assert rc == 0, err
    doc = json.loads(out)
    for key in ("n_train", "n_val", "energy_rmse_before", "energy_rmse_after", "force_rmse_before",
                "force_rmse_after", "checkpoint", "commit", "method"):
        assert key in doc
    assert doc["method"] == LJ and doc["n_val"] >= 1 and doc["n_train"] >= 3
    # the reference fit alone moves the LJ-scale energies most of the way
    assert doc["energy_rmse_refs"] < doc["energy_rmse_before"]
    n = Node.open(node.path)
    assert n.current_models()["forcefield"] == doc["checkpoint"]
    assert n.log()[1]["commit"] == head and n.status()["clean"]
    meta = json.loads((n.path / "models" / doc["checkpoint"] / "meta.json").read_text())
    assert meta["reference_energies"]["method"] == LJ
    assert set(meta["reference_energies"]["shift_ev"]) == {"Li", "P", "S"}
    # model list shows the held-out errors and the energy scale
    rc, out, _ = ns(node.path, "model", "list")
    assert rc == 0 and LJ in out and "->" in out
    # a second train starts from the current checkpoint: its parent
    rc, out, err = ns(node.path, "train", "--json", "--epochs", "1", "--loader-workers", "2")  # streamed by 2 workers
    assert rc == 0, err
    assert json.loads(out)["parent"] == meta["hash"]


def test_train_refuses_a_method_with_too_few_frames(node):
    head = str(node.git.head.target)
    rc, out, err = ns(node.path, "train", "--method", "vasp-pbe")
    assert rc == 2
    assert "vasp-pbe" in err and "at least 4" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert str(Node.open(node.path).git.head.target) == head


def test_model_list_verifies_each_checkpoint_against_its_id(node):
    rc, out, err = ns(node.path, "model", "list", "--json")
    assert rc == 0, err
    rows = json.loads(out)
    assert rows and all(r["integrity"] == "ok" for r in rows)
    cid = Node.open(node.path).current_models()["forcefield"]
    weights = next(p for p in sorted((node.path / "models" / cid).iterdir()) if p.name != "meta.json")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.unlink()  # a new file: the work tree's file may be a link to DVC's cache
    weights.write_bytes(bytes(data))
    rc, out, err = ns(node.path, "model", "list")
    assert rc == 7 and "DAMAGED" in out, out + err
    assert f"models/{cid} is damaged" in err and "fsck --repair" in err and "Traceback" not in err
    rc, out, _ = ns(node.path, "model", "list", "--json")
    assert rc == 7 and {r["id"]: r["integrity"] for r in json.loads(out)}[cid].startswith("its files do not hash")
    rc, _, err = ns(node.path, "checkout", "--force", "HEAD")
    assert rc == 0, err
    rc, out, err = ns(node.path, "model", "list")
    assert rc == 0 and "DAMAGED" not in out, out + err
