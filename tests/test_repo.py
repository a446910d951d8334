"""The node as a repository: init, import, commit, log, status, show, diff, checkout, tag, lock."""

import subprocess
import sys

import pytest
import yaml

from conftest import AIMD, LI3PS4_SAMPLES, REFERENCE_FILES
from nodestore.errors import LockedError, NodestoreError, SchemaError, ValidationError
from nodestore.repo import Node


def test_init_layout(node):
    p = node.path
    for f in ("node.yaml", "params.yaml", "dvc.yaml", ".dvc/config", "data/table.dvc", "models.dvc"):
        assert (p / f).exists(), f
    cfg = yaml.safe_load((p / "node.yaml").read_text())
    assert cfg["system"] == ["Li", "P", "S"] and cfg["schema_version"] == 1
    assert node.git.head.shorthand == "main"
    assert "analytics = False" in (p / ".dvc/config").read_text()
    assert node.status()["clean"]
    with pytest.raises(ValidationError, match="already"):
        Node.init("Li-P-S", p)


def test_init_rejects_bad_system(tmp_path):
    with pytest.raises(ValidationError, match="Xx"):
        Node.init("Li-Xx-S", tmp_path / "n")


def test_import_commit_log_show_diff(node):
    r = node.import_files([AIMD], method="vasp-pbe", message="AIMD frames")
    assert r["new"] == 200 and r["commit"]
    r2 = node.import_files(REFERENCE_FILES, origin="reference", message="references")
    assert r2["new"] == 5
    r3 = node.import_files(LI3PS4_SAMPLES, method="pbesol", message="Li3PS4 samples")
    # the 100 sample frames hold 27 exact repeats across their train/val/test files: kept once
    assert r3["read"] == 100 and r3["new"] == 73
    again = node.import_files([AIMD], method="vasp-pbe", message="again")
    assert again["new"] == 0 and again["commit"] is None
    doc = node.show()
    for key in ("system", "commit", "branch", "frames", "entries", "labelled", "segments", "models"):
        assert key in doc
    assert doc["frames"] == 278 and doc["labelled"] == 273 and doc["segments"] == 3
    assert doc["methods"] == {"vasp-pbe": 200, "pbesol": 73}
    msgs = [e["message"] for e in node.log()]
    assert msgs[:3] == ["Li3PS4 samples", "references", "AIMD frames"]
    d = node.diff("HEAD~2", "HEAD")
    assert d["frames_added"] == 78 and d["frames_removed"] == 0 and len(d["segments_added"]) == 2
    old = node.show("HEAD~2")
    assert old["frames"] == 200
    # the committed table at an older revision reads frames without checkout
    t = node.table_at("HEAD~2")
    assert t.atoms(0).get_potential_energy() == pytest.approx(-357.05872304)


def test_import_is_all_or_nothing(node, tmp_path):
    bad = tmp_path / "bad.extxyz"
    from ase.build import bulk
    from ase.io import write

    write(str(bad), [bulk("Li", "bcc", a=3.51), bulk("Na", "bcc", a=4.2)], format="extxyz")
    head = str(node.git.head.target)
    with pytest.raises(ValidationError, match=r"bad.extxyz frame 1: element\(s\) Na outside"):
        node.import_files([REFERENCE_FILES[0], bad], message="x")
    assert str(node.git.head.target) == head and len(node.table) == 0
    with pytest.raises(ValidationError, match="--method"):
        node.import_files([AIMD], message="x")
    assert len(node.table) == 0


def test_failed_commit_restores_table(node, monkeypatch):
    from nodestore.repo import git

    manifest = (node.path / "data/table/manifest.json").read_text()
    monkeypatch.setattr(git, "commit", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError):
        node.import_files(REFERENCE_FILES, message="x")
    assert (node.path / "data/table/manifest.json").read_text() == manifest


def test_checkout_and_tag_move_data(node):
    node.import_files([AIMD], method="vasp-pbe", message="aimd")
    node.tag("aimd-only")
    node.import_files(REFERENCE_FILES, message="refs")
    assert len(node.table) == 205
    node.checkout("aimd-only")
    assert len(Node.open(node.path).table) == 200
    assert node.show()["branch"] is None
    node.checkout("main")
    assert len(node.table) == 205
    assert node.tags()["aimd-only"] == node.log()[1]["commit"]


def test_checkout_refuses_dirty(node):
    node.import_files([AIMD], method="vasp-pbe", message="aimd")
    node.table.append(__import__("nodestore").as_frames(REFERENCE_FILES[:1]))
    st = node.status()
    assert not st["clean"] and st["frames_added"] == 1
    with pytest.raises(NodestoreError, match="uncommitted"):
        node.checkout("HEAD~1")
    node.commit("one more")
    assert node.status()["clean"]


def test_schema_of_node_yaml_checked(node):
    p = node.path / "node.yaml"
    doc = yaml.safe_load(p.read_text())
    doc["schema_version"] = 7
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(SchemaError, match="schema_version"):
        Node.open(node.path).show()


def test_second_writer_is_locked(node):
    code = (
        "import time, sys\n"
        "from nodestore.repo.lock import node_lock\n"
        f"with node_lock({str(node.state_dir)!r}):\n"
        "    print('locked', flush=True); time.sleep(20)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError, match=f"locked by pid {proc.pid}"):
            node.import_files(REFERENCE_FILES, message="x")
    finally:
        proc.kill()
        proc.wait()
    # a stale lock (dead owner) is taken over
    assert node.import_files(REFERENCE_FILES, message="refs")["new"] == 5
