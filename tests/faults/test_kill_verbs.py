"""Defects 1, 2 and 4 of issue 11: a verb killed with SIGKILL leaves a committed state, never half of one."""

import json
import subprocess
import sys

import pytest
import yaml

from conftest import AIMD, REFERENCE_FILES, STRUCTURES
from nodestore.errors import LockedError
from nodestore.repo import Node

from .helpers import kill_at, run


def files_of(node):
    out = {}
    for rel in ("node.yaml", "params.yaml", "data/table/manifest.json", "data/table.dvc", "models.dvc",
                "models/current.json", "data/merges.json"):
        p = node.path / rel
        out[rel] = p.read_text() if p.exists() else None
    return out


def head_tree_names(node):
    return {e.name for e in node.git.head.peel().tree}


@pytest.mark.parametrize("point", ["tx:written", "tx:added"])
def test_killed_import_rolls_back_and_reruns(node, tmp_path, point):
    """Defect 1: the frames of a killed import stayed in the work tree, uncommitted, and the re-run said
    'all already in the node'."""
    head, before = str(node.git.head.target), files_of(node)
    kill_at(node.path, point, "import", *REFERENCE_FILES, "-m", "refs", pause_file=tmp_path / "p")
    node = Node.open(node.path)  # a start: the dead writer's journal is rolled back first
    assert str(node.git.head.target) == head
    assert files_of(node) == before and len(node.table) == 0
    assert node.status()["clean"] and not (node.state_dir / "journal.json").exists()
    assert node.fsck().problems == []
    rc, out = run(node.path, "import", *REFERENCE_FILES, "-m", "refs")
    assert rc == 0 and "5 new" in out, out
    node = Node.open(node.path)
    assert node.log()[0]["message"] == "refs" and len(node.table_at("HEAD")) == 5


def test_killed_import_after_its_commit_object_rolls_forward(node, tmp_path):
    head = str(node.git.head.target)
    kill_at(node.path, "tx:committed", "import", *REFERENCE_FILES, "-m", "refs", pause_file=tmp_path / "p")
    assert str(node.git.head.target) == head  # the branch had not moved yet
    node = Node.open(node.path)
    log = node.log()
    assert log[0]["message"] == "refs" and log[1]["commit"] == head
    assert len(node.table_at("HEAD")) == 5 and node.status()["clean"] and node.fsck().problems == []
    rc, out = run(node.path, "import", *REFERENCE_FILES, "-m", "again")
    assert rc == 0 and "nothing committed" in out


def diverged(node, tmp_path):
    from ase.io import write

    from nodestore.frames.io import read_file

    images = read_file(AIMD)
    node.import_files([STRUCTURES / "Li3P_P63mmc.cif"], message="base")
    node.branch("a")
    write(str(tmp_path / "late.xyz"), images[150:], format="extxyz")
    node.import_files([tmp_path / "late.xyz"], method="vasp-pbe", message="late")
    node.checkout("a")
    write(str(tmp_path / "early.xyz"), images[:60], format="extxyz")
    node.import_files([tmp_path / "early.xyz"], method="vasp-pbe", message="early")
    node.checkout("main")


def test_killed_merge_leaves_the_node_as_it_was(node, tmp_path):
    """Defect 2: a killed merge left merged data, node.yaml and merges.json in the work tree with HEAD
    unmoved, and the re-run was refused."""
    diverged(node, tmp_path)
    head, before = str(node.git.head.target), files_of(node)
    kill_at(node.path, "tx:written", "merge", "a", pause_file=tmp_path / "p")
    node = Node.open(node.path)
    assert str(node.git.head.target) == head and files_of(node) == before
    assert node.status()["clean"] and len(node.table) == 51 and node.fsck().problems == []
    rc, out = run(node.path, "merge", "a")
    assert rc == 0 and "merged a" in out, out
    node = Node.open(node.path)
    assert len(node.git.head.peel().parents) == 2 and len(node.table) == 111 and node.status()["clean"]


def test_killed_fast_forward_merge_is_undone(node, tmp_path):
    node.branch("b")
    node.checkout("b")
    node.import_files([STRUCTURES / "Li3P_P63mmc.cif"], message="on b")
    node.checkout("main")
    head, before = str(node.git.head.target), files_of(node)
    kill_at(node.path, "tx:checkout", "merge", "b", pause_file=tmp_path / "p")
    node = Node.open(node.path)
    assert str(node.git.head.target) == head and files_of(node) == before and len(node.table) == 0
    assert node.status()["clean"]
    assert node.merge("b").result == "fast-forward" and len(Node.open(node.path).table) == 1


def test_temporary_file_of_a_killed_writer_is_never_committed(node):
    """Defect 2: the `.node.yaml-XXXX` a killed write left was committed by the next import."""
    (node.path / ".node.yaml-k1ll3d").write_text("system: [Li]\n")
    (node.path / ".params.yaml-x2").write_text("")
    node.import_files(REFERENCE_FILES, message="refs")
    names = head_tree_names(node)
    assert ".node.yaml-k1ll3d" not in names and ".params.yaml-x2" not in names
    assert node.status()["clean"]


def test_refused_iterate_writes_nothing(node):
    """Defect 4: an iterate refused because the node is locked (exit 3) still wrote params.yaml and loop/."""
    code = ("import time\nfrom nodestore.repo.lock import node_lock\n"
            f"with node_lock({str(node.state_dir)!r}):\n    print('locked', flush=True); time.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    params = (node.path / "params.yaml").read_text()
    try:
        assert proc.stdout.readline().strip() == "locked"
        from nodestore.loop.iterate import iterate

        with pytest.raises(LockedError):
            iterate(node)
        rc, out = run(node.path, "iterate")
        assert rc == 3, out
    finally:
        proc.kill()
        proc.wait()
    assert (node.path / "params.yaml").read_text() == params
    assert not (node.path / "loop").exists()
    assert node.status()["clean"]


def test_killed_iterate_rolls_back_params_and_loop(node, tmp_path):
    head = str(node.git.head.target)
    params = (node.path / "params.yaml").read_text()
    kill_at(node.path, "tx:added", "iterate", pause_file=tmp_path / "p")
    node = Node.open(node.path)
    assert str(node.git.head.target) == head
    assert (node.path / "params.yaml").read_text() == params and not (node.path / "loop" / "iter-0").exists()
    rc, out = run(node.path, "iterate")
    assert rc == 0 and "added iteration 1" in out
    its = yaml.safe_load((Node.open(node.path).path / "params.yaml").read_text())["loop"]["iterations"]
    assert len(its) == 1


def test_killed_checkout_is_undone(node, tmp_path):
    node.import_files([AIMD], method="vasp-pbe", message="aimd")
    node.tag("aimd")
    node.import_files(REFERENCE_FILES, message="refs")
    head, before = str(node.git.head.target), files_of(node)
    kill_at(node.path, "tx:checkout", "checkout", "aimd", pause_file=tmp_path / "p")
    node = Node.open(node.path)
    assert str(node.git.head.target) == head and node.git.head.shorthand == "main"
    assert files_of(node) == before and len(node.table) == 205 and node.status()["clean"]
    assert node.fsck().problems == []


def test_exception_inside_a_transaction_restores_every_file(node, tmp_path):
    from nodestore import as_frames

    before = files_of(node)
    models = sorted(p.name for p in (node.path / "models").iterdir())
    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    (ckpt / "meta.json").write_text(json.dumps({"kind": "forcefield"}))
    with pytest.raises(RuntimeError, match="boom"):
        with node.transaction("x") as tx:
            tx.append(as_frames(REFERENCE_FILES))
            cfg = tx.config
            cfg["lineage"].append({"event": "clone", "date": "2026-01-01T00:00:00+00:00"})
            tx.write_config(cfg)
            tx.add_checkpoint(ckpt, "forcefield")
            tx.write_text("data/merges.json", "[]\n")
            raise RuntimeError("boom")
    assert files_of(node) == before
    assert sorted(p.name for p in (node.path / "models").iterdir()) == models
    assert not list((node.path / "data/table/segments").iterdir())
    assert node.status()["clean"] and not (node.state_dir / "journal.json").exists()


def test_tags_move_with_the_commit_in_one_ref_transaction(node):
    from nodestore import as_frames

    with node.transaction("refs", tags=("t1", "t2")) as tx:
        tx.append(as_frames(REFERENCE_FILES))
    assert node.tags() == {"t1": tx.commit_id, "t2": tx.commit_id}
    assert str(node.git.head.target) == tx.commit_id


# -- init, extend, tag, branch, remote add: the lock, and a kill that leaves nothing half made -----

class held_lock:
    """Another live process holds the node's write lock while the block runs."""

    def __init__(self, node):
        self.node = node

    def __enter__(self):
        code = ("import time\nfrom nodestore.repo.lock import node_lock\n"
                f"with node_lock({str(self.node.state_dir)!r}):\n    print('locked', flush=True); time.sleep(60)\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked"
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def git_config_text(node):
    return (node.path / ".git" / "config").read_text(), (node.path / ".dvc" / "config.local").read_text() \
        if (node.path / ".dvc" / "config.local").exists() else None


def test_refused_tag_branch_and_remote_add_write_nothing(node, tmp_path):
    refs, config = set(node.git.references), git_config_text(node)
    with held_lock(node):
        for args in (["tag", "v1"], ["branch", "side"], ["remote", "add", "origin", tmp_path / "r"]):
            rc, out = run(node.path, *args)
            assert rc == 3 and "locked by pid" in out, (args, out)
    assert set(node.git.references) == refs and git_config_text(node) == config
    assert node.remotes() == []


def test_killed_remote_add_leaves_no_remote_and_reruns(node, tmp_path):
    """A remote add killed between its DVC and git halves: no remote, and the rerun makes a whole one."""
    node.import_files(REFERENCE_FILES, message="refs")
    kill_at(node.path, "remote-add:dvc", "remote", "add", "origin", tmp_path / "r", pause_file=tmp_path / "p")
    node = Node.open(node.path)
    assert node.remotes() == [] and node.fsck().problems == []
    rc, out = run(node.path, "remote", "add", "origin", tmp_path / "r")
    assert rc == 0, out
    rc, out = run(node.path, "push")
    assert rc == 0, out
    assert len(Node.clone(str(tmp_path / "r"), tmp_path / "c").table) == 5


def test_killed_init_leaves_no_node_and_reruns(tmp_path):
    target = tmp_path / "Li-P-S"
    kill_at(tmp_path, "init:built", "init", "Li-P-S", target, pause_file=tmp_path / "p")
    assert not target.exists()
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".Li-P-S.init-")]
    assert len(left) == 1, left  # the killed build, aside
    rc, out = run(tmp_path, "init", "Li-P-S", target)
    assert rc == 0, out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".Li-P-S.")] == []  # the rerun removed it
    node = Node.open(target)
    assert len(node.log()) == 1 and node.status()["clean"] and node.fsck().problems == []
    rc, out = run(tmp_path, "init", "Li-P-S", target)  # refused: writes nothing
    assert rc == 2 and "already holds a repository" in out, out
    assert len(Node.open(target).log()) == 1


@pytest.mark.parametrize("point", ["tx:written", "extend:built"])
def test_killed_extend_leaves_no_node_and_reruns(node, tmp_path, point):
    """A killed extend left a new node holding only its init commit, and the rerun was refused."""
    node.import_files(REFERENCE_FILES, message="refs")
    head, target = str(node.git.head.target), tmp_path / "Cl-Li-P-S"
    kill_at(node.path, point, "extend", "Cl", "--to", target, pause_file=tmp_path / "p")
    assert not target.exists()
    node = Node.open(node.path)
    assert str(node.git.head.target) == head and node.status()["clean"] and node.fsck().problems == []
    rc, out = run(node.path, "extend", "Cl", "--to", target)
    assert rc == 0, out
    assert [p.name for p in tmp_path.iterdir() if p.name.lstrip(".").startswith("Cl-Li-P-S.")] == []
    new = Node.open(target)
    assert len(new.table_at("HEAD")) == 5 and new.log()[0]["message"].startswith("extend ")
    assert new.status()["clean"] and new.fsck().problems == []
