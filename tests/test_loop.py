"""The discovery loop as DVC stages: a tiny iteration end to end, and kill-and-rerun in each stage."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from nodestore.config import default_params
from nodestore.errors import NodestoreError
from nodestore.loop import create_node
from nodestore.loop.actions import label_references
from nodestore.repo import Node

LJ = "lj-s2-e0.05"


def tiny_params():
    p = default_params()
    p.update({
        "generate": {"n": 3, "max_atoms": 8},
        "screen": {"fmax": 0.3, "steps": 3},
        "select": {"n_lowest": 1, "n_diverse": 1, "n_uncertain": 1, "max_atoms": 8},
        "train": {"min_frames": 2},
        # a tiny orb model: the real backend code, cheap enough for a test
        "forcefield": {"backend": "orb", "architecture": "orb-v3-direct",
                       "config": {"latent_dim": 16, "base_mlp_hidden_dim": 16, "base_mlp_depth": 1,
                                  "head_mlp_hidden_dim": 16, "head_mlp_depth": 1,
                                  "num_message_passing_steps": 1, "radius": 4.0, "max_num_neighbors": 12},
                       "finetune": {"epochs": 1, "max_seconds": 20}},
        "labeller": {"backend": "lj"},
        "label": {"primitive": True, "relax_steps": 2},
        "generator": {"backend": "pyxtal", "max_atoms": 8},
        "executor": {"backend": "local", "processes": 1},
    })
    return p


@pytest.fixture
def loop_node(tmp_path):
    node = create_node("Li-P-S", tmp_path / "n", reference_method=LJ, params=tiny_params())
    r = label_references(node)
    assert r["labelled"] >= 5 and r["method"] == LJ
    return node


def ns(node, *args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "nodestore", "-C", str(node.path), *args],
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, **kw)


def test_tiny_iteration_end_to_end(loop_node):
    from nodestore.loop.iterate import iterate

    node = loop_node
    r = iterate(node, run=True)
    assert r["added"] == 1 and r["committed"][0]["iteration"] == 1
    doc = node.show()
    assert doc["iterations"] == 1 and doc["sun"]["1"] is not None
    assert node.status()["clean"]
    assert "refs/tags/iter-1" in node.git.references
    m = json.loads((node.path / "loop/iter-1/metrics.json").read_text())
    assert m["candidates"] >= 1 and m["labelled"] >= 1 and m["hull"] == "ok"
    assert "H_after" in m["entropy"] and m["entropy"]["H_after"] >= m["entropy"]["H_before"]
    # every candidate names its strategy; the iteration counts what each strategy's candidates became
    st = m["strategies"]["pyxtal"]
    assert st["candidates"] == m["candidates"] and st["screened"] == m["screened"] and st["labelled"] == m["labelled"]
    models = node.list_checkpoints()
    assert {m_["kind"] for m_ in models} == {"forcefield", "generator"}
    # the previous force field scored on the labels it had not seen
    ff = m["forcefield"]
    assert ff["n"] == m["labelled"] and ff["energy_rmse_per_atom"] >= 0 and "TP" in ff["stability"]
    assert LJ in node.config["methods"]  # the iteration's commit records what its method stands for
    # the force field was put on the labeller's energy scale before screening, and trained on it
    train = json.loads((node.path / "loop/iter-1/train.json").read_text())
    assert train["finetune"]["method"] == LJ and train["finetune"]["reference_fit"]["determined"]
    cur = json.loads((node.path / "models" / node.current_models()["forcefield"] / "meta.json").read_text())
    assert cur["reference_energies"]["method"] == LJ
    screened = json.loads((node.path / "loop/iter-1/screened/screen.json").read_text())
    assert screened["method"].endswith("~" + LJ)
    # the labeller relaxed each selected structure: every ionic step is a frame of the method,
    # derived from the selected structure; the last one is the label (relax_step > 0)
    lab = json.loads((node.path / "loop/iter-1/labelled/label.json").read_text())
    assert lab["frames"] > lab["labelled"] and all(s_ >= 1 for s_ in lab["relax_steps"])
    t = node.table
    it1 = t.column("iteration") == 1
    steps_rows = np.nonzero(it1 & (t.column("origin") == "relax-step"))[0]
    finals = np.nonzero(it1 & (t.column("origin") == "labelled"))[0]
    assert len(steps_rows) and (t.column("relax_step")[finals] >= 1).all()
    assert set(t.column("parent_id")[steps_rows]) <= set(t.column("parent_id")[finals])
    assert not t.column("is_entry")[steps_rows].any()
    t = node.table
    assert (t.column("method") == LJ).sum() == doc["methods"][LJ] and doc["methods"][LJ] > r["committed"][0]["sun"].get("total", 0) - 100
    assert set(t.column("iteration")) >= {0, 1}
    # a second iteration: iteration 1 is a cache hit, only the new stages run
    ids_1 = set(node.table.column("frame_id").astype(str))
    r2 = iterate(node, run=True)
    assert r2["committed"][0]["iteration"] == 2
    ids_2 = set(Node.open(node.path).table.column("frame_id").astype(str))
    lock = (node.path / "dvc.lock").read_text()
    assert "generate@1" in lock and "curate@1" in lock
    assert node.show()["iterations"] == 2
    # iteration 2's H before is iteration 1's H after, read back from the node's entropy cache
    m2 = json.loads((node.path / "loop/iter-2/metrics.json").read_text())
    assert m2["entropy"]["H_before"] == m["entropy"]["H_after"]
    # one cached H per set of configurations: before iteration 1, after it (= before iteration 2,
    # a cache hit), and after iteration 2 when that added configurations (a loaded machine's
    # iteration 2 may screen none of its candidates in time)
    assert len(list((node.state_dir / "cache").glob("entropy-*.json"))) == 2 + (ids_2 != ids_1)
    # the hull with decomposition products, through the CLI
    p = ns(node, "hull", "--decomposition", "--json")
    hull = json.loads(p.communicate()[0])
    assert p.returncode == 0 and hull["method"] == LJ
    for phase in hull["phases"]:
        dec = phase["decomposition"]
        assert abs(sum(dec.values()) - 1) < 1e-9 and set(dec) <= set(hull["stable"])
        assert (list(dec) == [phase["formula"]]) == (phase["formula"] in hull["stable"] and phase["e_hull"] == 0)
    # iteration 2's checkpoints descend from iteration 1's, by id
    ids = {m_["id"] for m_ in node.list_checkpoints()}
    current = node.current_models()
    parents = {m_["id"]: m_["parent_id"] for m_ in node.list_checkpoints()}
    assert parents[current["forcefield"]] in ids and parents[current["generator"]] in ids
    # the report
    from nodestore.loop.report import write_report

    rep = write_report(node, node.path / "report")
    assert len(rep["plots"]) >= 4 and all(os.path.getsize(p) > 1000 for p in rep["plots"])
    assert any(p.endswith("motifs.png") for p in rep["plots"])  # the polyanion census of the entries
    page = (node.path / "report" / "index.html").read_text()
    assert "Generator strategies" in page and "<td>pyxtal</td>" in page


@pytest.mark.parametrize("stage", ["generate", "screen", "label", "train", "curate"])
def test_kill_inside_a_stage_then_rerun(loop_node, tmp_path, stage):
    node = loop_node
    head = str(node.git.head.target)
    table_manifest = (node.path / "data/table/manifest.json").read_text()
    pause = tmp_path / "paused"
    proc = ns(node, "iterate", "--run", env={"NODESTORE_PAUSE_IN": stage, "NODESTORE_PAUSE_FILE": str(pause)})
    t0 = time.time()
    while not pause.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - t0 < 240, "stage never reached"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    node = Node.open(node.path)
    # the node is at its last commit: `iterate` committed params.yaml (iteration 1 added), nothing else
    assert node.log()[0]["message"] == "iterate: add iteration 1"
    assert node.log()[1]["commit"] == head
    assert (node.path / "data/table/manifest.json").read_text() == table_manifest
    assert "refs/tags/iter-1" not in node.git.references
    # running again finishes the iteration
    proc = ns(node, "iterate", "--run")
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out
    node = Node.open(node.path)
    assert "refs/tags/iter-1" in node.git.references and node.show()["iterations"] == 1
    assert node.status()["clean"]


def test_stage_outside_params_is_an_error(loop_node):
    from nodestore.loop.stages import run_stage

    with pytest.raises(NodestoreError, match="not in params.yaml"):
        run_stage(loop_node, "generate", 7)
