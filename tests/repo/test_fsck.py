"""``nodestore fsck`` and defect 3 of issue 11 (a push that sent a corrupted object and moved the ref)."""

import json
import os

import pytest

from conftest import AIMD, REFERENCE_FILES, STRUCTURES
from nodestore.errors import IntegrityError
from nodestore.repo import Node, dvc

from faults.helpers import run


def segment_object(node, rev="HEAD"):
    """(md5, cache file) of the newest segment HEAD records."""
    from nodestore.repo import git

    commit = git.resolve(node.git, rev)
    md5 = node.artifact_md5(commit, "data/table")
    sid = node.table_at(rev).segment_ids[-1]
    (entry,) = [e for e in dvc.dir_listing(node.path, md5) if e["relpath"] == f"segments/{sid}.zip"]
    return entry["md5"], dvc.cache_file(node.path, entry["md5"])


def flip_a_byte(f):
    f.chmod(0o644)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))  # in place: a work-tree hard link sees it too


def test_fsck_of_a_clean_node_is_clean(node):
    node.import_files(REFERENCE_FILES, message="refs")
    r = node.fsck()
    assert r.clean and r.checked > 10 and r.problems == []
    rc, out = run(node.path, "fsck")
    assert rc == 0 and "clean" in out, out


def test_fsck_names_a_flipped_byte_and_repair_restores_it_from_the_remote(node, tmp_path):
    node.import_files(REFERENCE_FILES, message="refs")
    node.remote_add("origin", str(tmp_path / "remote"))
    node.push("origin")
    md5, f = segment_object(node)
    flip_a_byte(f)
    rc, out = run(node.path, "fsck")
    assert rc == 7 and md5 in out and "corrupted" in out, out
    rc, out = run(node.path, "fsck", "--repair")  # without a remote: nothing to fetch it from
    assert rc == 7 and md5 in out, out
    rc, out = run(node.path, "fsck", "--repair", "--remote", "origin")
    assert rc == 0 and md5 in out and "repaired" in out, out
    assert dvc.file_md5(f) == md5
    rc, out = run(node.path, "fsck")
    assert rc == 0, out
    node = Node.open(node.path)
    assert node.status()["clean"] and len(node.table.read()) == 5


def test_repair_copies_a_damaged_work_tree_segment_back_from_its_object(node):
    """A segment's name is its content's hash: other bytes under that name are damage, and
    ``--repair`` restores them from the verified object without a remote."""
    import shutil

    node.import_files(REFERENCE_FILES, message="refs")
    md5, cache = segment_object(node)
    sid = node.table_at("HEAD").segment_ids[-1]
    f = node.path / "data" / "table" / "segments" / f"{sid}.zip"
    f.unlink()
    shutil.copyfile(cache, f)  # a copy, not a link to the object (as a clone from a remote has)
    flip_a_byte(f)
    rc, out = run(node.path, "fsck")
    assert rc == 7 and f"segments/{sid}.zip" in out and "does not match" in out, out
    assert dvc.file_md5(cache) == md5  # the object is intact
    rc, out = run(node.path, "fsck", "--repair")
    assert rc == 0 and "repaired" in out, out
    assert dvc.file_md5(f) == md5
    rc, out = run(node.path, "fsck")
    assert rc == 0, out
    assert len(Node.open(node.path).table.read()) == 5


def test_fsck_reports_and_repairs_an_interrupted_transaction_and_temp_files(node):
    from nodestore import as_frames

    (node.path / ".node.yaml-k1ll3d").write_text("")
    # a dead writer's journal: what a SIGKILL inside a transaction leaves
    tx = node.transaction("killed")
    tx.__enter__()
    tx.append(as_frames(REFERENCE_FILES))
    from nodestore.repo import transaction

    transaction._ACTIVE.clear()
    journal = json.loads((node.state_dir / "journal.json").read_text())
    journal["pid"] = 999999999
    (node.state_dir / "journal.json").write_text(json.dumps(journal))
    (node.state_dir / "lock").unlink()
    from nodestore.repo import lock

    lock._HELD.clear()
    r = node.fsck()
    assert {p.kind for p in r.problems} == {"journal", "temp"} and not r.clean
    r = node.fsck(repair=True)
    assert r.clean and r.repaired == 2
    assert len(node.table) == 0 and node.status()["clean"] and node.fsck().problems == []


def test_push_refuses_a_corrupted_object_and_leaves_the_remote_ref(node, tmp_path):
    """Defect 3: the push succeeded (exit 0), moved the remote's ref, and the remote could not be cloned."""
    node.import_files(REFERENCE_FILES, message="refs")
    node.remote_add("origin", str(tmp_path / "remote"))
    node.push("origin")
    remote_tip = node.git.references["refs/remotes/origin/main"].target
    node.import_files([AIMD], method="vasp-pbe", message="aimd")
    md5, f = segment_object(node)
    flip_a_byte(f)
    rc, out = run(node.path, "push")
    assert rc == 7 and md5 in out and "corrupted" in out, out
    with pytest.raises(IntegrityError, match=md5):
        node.push("origin")
    import pygit2

    bare = pygit2.Repository(str(tmp_path / "remote" / "node.git"))
    assert bare.references["refs/heads/main"].target == remote_tip
    # the remote still clones
    clone = Node.clone(str(tmp_path / "remote"), tmp_path / "clone")
    assert len(clone.table) == 5


def test_fsck_remote_reports_a_branch_behind(node, tmp_path):
    node.import_files(REFERENCE_FILES, message="refs")
    node.remote_add("origin", str(tmp_path / "remote"))
    node.push("origin")
    assert node.fsck(remote="origin").clean
    node.import_files([AIMD], method="vasp-pbe", message="aimd")
    r = node.fsck(remote="origin")
    assert [p.what for p in r.problems] == ["origin/main"] and "behind" in r.problems[0].message


# -- method map and lineage -----------------------------------------------------------------------

LJ = "lj-s2-e0.05"


@pytest.fixture
def labelled_node(tmp_path):
    """A node whose reference phases were labelled by the LJ labeller (node.yaml records its method)."""
    from nodestore.loop import create_node
    from nodestore.loop.actions import label_files

    node = create_node("Li-P-S", tmp_path / "lab", reference_method=LJ)
    r = label_files(node, REFERENCE_FILES[:3], labeller="lj", message="LJ labels")
    assert r.labelled == 3 and LJ in Node.open(node.path).config["methods"]
    return Node.open(node.path)


def test_fsck_finds_labelled_rows_whose_method_node_yaml_does_not_record(labelled_node):
    import yaml

    node = labelled_node
    r = node.fsck()
    assert r.clean and r.warnings == []
    cfg = yaml.safe_load((node.path / "node.yaml").read_text())
    entry = cfg.pop("methods")[LJ]
    (node.path / "node.yaml").write_text(yaml.safe_dump(cfg))
    r = node.fsck()
    (p,) = r.problems
    assert p.kind == "method" and p.what == LJ and "3 labelled row(s)" in p.message and "node.yaml" in p.fix
    rc, out = run(node.path, "fsck")
    assert rc == 7 and f"[method] {LJ}" in out and "fix:" in out, out
    # the other way round: a recorded method no row carries is a warning, and fsck stays clean
    cfg["methods"] = {LJ: entry, "gpaw-pbe-pw900": {**entry, "cutoff_ev": 900}}
    (node.path / "node.yaml").write_text(yaml.safe_dump(cfg))
    r = node.fsck()
    assert r.clean and [(w.kind, w.what) for w in r.warnings] == [("method", "gpaw-pbe-pw900")]
    rc, out = run(node.path, "fsck")
    assert rc == 0 and "warning: [method] gpaw-pbe-pw900" in out, out


def test_fsck_checks_the_method_of_reference_labels_and_not_of_imported_labelled_rows(tmp_path):
    """A labeller's rows are checked whatever their origin (`label --origin reference`); imported rows
    with energies (`import --origin labelled --method ...`) record no settings and are not."""
    import yaml

    from nodestore.loop import create_node
    from nodestore.loop.actions import label_files

    node = create_node("Li-P-S", tmp_path / "ref", reference_method=LJ)
    assert label_files(node, REFERENCE_FILES[:2], labeller="lj", origin="reference").labelled == 2
    node = Node.open(node.path)
    node.import_files([AIMD], method="vasp-pbe", origin="labelled", message="AIMD as labels")
    node = Node.open(node.path)
    assert node.fsck().clean
    cfg = yaml.safe_load((node.path / "node.yaml").read_text())
    del cfg["methods"][LJ]
    (node.path / "node.yaml").write_text(yaml.safe_dump(cfg))
    (p,) = node.fsck().problems
    assert p.kind == "method" and p.what == LJ and "2 labelled row(s)" in p.message


def tiny_forcefield(**attrs):
    from nodestore.models import registry

    ff = registry.create("forcefield", "orb", architecture="orb-v3-direct", seed=0,
                         config={"latent_dim": 8, "base_mlp_hidden_dim": 8, "base_mlp_depth": 1,
                                 "head_mlp_hidden_dim": 8, "head_mlp_depth": 1, "num_message_passing_steps": 1,
                                 "radius": 4.0, "max_num_neighbors": 8})
    for k, v in attrs.items():
        setattr(ff, k, v)
    return ff


def test_fsck_checks_the_lineage_of_checkpoints_and_rows(node, tmp_path):
    pytest.importorskip("torch")
    from nodestore.frames import FrameBatch
    from nodestore.frames.io import read_file

    node.import_files([AIMD], method="vasp-pbe", message="aimd")
    ids = node.table.column("frame_id").tolist()
    parent = tiny_forcefield(training_frames=ids[:5])
    parent_hash = parent.save(tmp_path / "parent")
    child = tiny_forcefield(parent=parent_hash, training_frames=ids[5:10])
    child.save(tmp_path / "child")
    with node.transaction("parent and child") as tx:
        pid = tx.add_checkpoint(tmp_path / "parent", "forcefield", make_current=False)
        cid = tx.add_checkpoint(tmp_path / "child", "forcefield")
    assert node.fsck().clean
    # a child whose parent is not in models/ and whose training frames are not in the table
    orphan = tiny_forcefield(parent="f" * 32, training_frames=ids[:2] + ["0" * 32])
    orphan.save(tmp_path / "orphan")
    # rows predicted by a checkpoint models/ does not hold
    images = read_file(STRUCTURES / "Li3P_P63mmc.cif")
    for a in images:
        a.rattle(0.01, seed=1)
    batch = FrameBatch.from_atoms(images, origin="relaxed", checkpoint="e" * 32)
    with node.transaction("orphan") as tx:
        oid = tx.add_checkpoint(tmp_path / "orphan", "forcefield", make_current=False)
        tx.append(batch)
    r = node.fsck()
    got = sorted((p.kind, p.what, p.message) for p in r.problems)
    assert [g[:2] for g in got] == [("lineage", "e" * 32), ("lineage", f"models/{oid}"), ("lineage", f"models/{oid}")]
    assert "f" * 32 in got[1][2] + got[2][2] and "1 of the 3 frames" in got[1][2] + got[2][2]
    assert "row(s) were predicted by checkpoint" in got[0][2]
    rc, out = run(node.path, "fsck")
    assert rc == 7 and f"models/{oid}" in out and "parent checkpoint" in out and "1 of the 3 frames" in out, out
    assert "e" * 32 in out and "fix:" in out
    assert pid != cid and f"models/{pid}" not in out and f"models/{cid}" not in out


def test_a_stale_git_lock_is_reported_and_the_next_verb_removes_it(node):
    """A checkout killed while libgit2 held ``.git/HEAD.lock`` (found by the random kills): fsck
    names the lock, and the next writing verb removes it and succeeds instead of failing on it."""
    node.import_files(REFERENCE_FILES, message="refs")
    node.branch("other")
    (node.path / ".git" / "HEAD.lock").write_text("ref: refs/heads/main\n")
    (node.path / ".git" / "refs" / "heads" / "other.lock").write_text("0" * 40 + "\n")
    r = node.fsck()
    assert sorted(p.what for p in r.problems if p.kind == "git-lock") == [".git/HEAD.lock", ".git/refs/heads/other.lock"]
    rc, out = run(node.path, "checkout", "other")
    assert rc == 0, out
    node = Node.open(node.path)
    assert not (node.path / ".git" / "HEAD.lock").exists() and node.fsck().problems == []
    from nodestore.repo import git

    assert git.current_branch(node.git) == "other"


def test_a_truncated_dvc_rwlock_is_reported_and_repaired(node):
    """A `dvc repro` killed while rewriting DVC's lock table leaves it empty, and DVC then refuses
    every command ("JSON structure is corrupted"); found by the loop-stage kill test."""
    import subprocess
    import sys

    tmp = node.path / ".dvc" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "rwlock").write_text("")
    dvc_status = [sys.executable, "-m", "dvc", "status"]
    p = subprocess.run(dvc_status, cwd=node.path, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "rwlock" in (p.stdout + p.stderr).lower()
    r = node.fsck()
    assert [(x.kind, x.what) for x in r.problems] == [("dvc-rwlock", ".dvc/tmp/rwlock")]
    assert (tmp / "rwlock").exists()  # a check alone changes nothing
    rc, out = run(node.path, "fsck", "--repair")
    assert rc == 0, out
    assert not (tmp / "rwlock").exists() and node.fsck().problems == []
    p = subprocess.run(dvc_status, cwd=node.path, capture_output=True, text=True, timeout=300)
    assert "rwlock" not in (p.stdout + p.stderr).lower(), p.stdout + p.stderr


LOCK = """schema: '2.0'
stages:
  generate@1:
    cmd: nodestore stage generate 1
    outs:
    - path: loop/iter-1/candidates
      hash: md5
      md5: {md5}
      size: 1024
      nfiles: 2
  screen@1:
    cmd: nodestore stage screen 1
    deps:
    - path: loop/iter-1/candidates
      hash: md5
      md5: {md5}
      size: 1024
      nfiles: 2
    outs:
    - path: loop/iter-1/screened
      hash: md5
      md5: {md5}
      size: 2048
      nfiles: 3
"""
NEXT = """  generate@2:
    cmd: nodestore stage generate 2
    outs:
    - path: loop/iter-2/candidates
      hash: md5
      md5: {md5}
      size: 1024
      nfiles: 2
"""


def commit_dvc_lock(node, text):
    """A commit whose dvc.lock is ``text``, as `nodestore commit` leaves one after an iteration
    (its outputs name the table's own object, which the cache holds).  Returns the text."""
    import pygit2

    from nodestore.repo import git

    text = text.format(md5=node.artifact_md5(git.resolve(node.git, "HEAD"), "data/table"))
    (node.path / "dvc.lock").write_text(text)
    repo = node.git
    repo.index.read()
    repo.index.add("dvc.lock")
    repo.index.write()
    sig = pygit2.Signature("test", "test@example.org")
    repo.create_commit("HEAD", sig, sig, "iteration 1", repo.index.write_tree(), [repo.head.target])
    return text


def test_a_dvc_lock_a_killed_repro_cut_short_is_reported_and_the_committed_one_restored(node):
    """Found by the loop-stage kill test (iterations 7 and 27 of two runs): DVC rewrites dvc.lock in
    place after every stage, a kill in that moment leaves a prefix, and every later `dvc repro`
    stopped with "dvc.lock validation failed" while fsck called the node clean."""
    node.import_files(REFERENCE_FILES, message="refs")
    LOCK = commit_dvc_lock(node, globals()["LOCK"])
    NEXT = globals()["NEXT"].format(md5=LOCK.split("md5: ")[1].split()[0])
    assert node.fsck().problems == []
    lock = node.path / "dvc.lock"
    # the iteration in progress adds entries: not damage
    lock.write_text(LOCK + NEXT)
    assert node.fsck().problems == []
    cut_inside_an_entry = (LOCK + NEXT)[: (LOCK + NEXT).index("    - path:", LOCK.index("screen@1")) + len("    - path:")]
    cut_between_entries = LOCK[: LOCK.index("  screen@1")]
    for text, says in ((cut_inside_an_entry, "does not parse"), (cut_between_entries, "screen@1"), ("", "does not parse")):
        lock.write_text(text)
        (p,) = node.fsck().problems
        assert (p.kind, p.what) == ("dvc-lock", "dvc.lock") and says in p.message, p.message
        assert lock.read_text() == text  # a check alone changes nothing
        rc, out = run(node.path, "fsck")
        assert rc != 0 and "dvc.lock" in out, out
        rc, out = run(node.path, "fsck", "--repair")
        assert rc == 0, out
        assert lock.read_text() == LOCK and node.fsck().problems == []


def test_a_restore_of_dvc_lock_killed_before_its_rename_leaves_a_temp_file_fsck_sweeps(node, monkeypatch):
    """A kill inside `fsck --repair`'s own restore, between writing the temporary copy and the
    rename: dvc.lock is untouched (still the cut one), and the temporary file must be one that
    fsck's sweep names and drops."""
    node.import_files(REFERENCE_FILES, message="refs")
    LOCK = commit_dvc_lock(node, globals()["LOCK"])
    lock = node.path / "dvc.lock"
    lock.write_text(LOCK[:100])

    class Killed(BaseException):
        """what nothing in nodestore catches, as nothing runs after a SIGKILL"""

    def killed(*a, **k):
        raise Killed("killed before the rename")

    monkeypatch.setattr(dvc.os, "replace", killed)
    with pytest.raises(Killed):
        node.fsck(repair=True)
    monkeypatch.undo()
    left = [n for n in os.listdir(node.path) if n.startswith(".dvc.lock")]
    assert left and lock.read_text() == LOCK[:100]
    assert sorted(p.kind for p in node.fsck().problems) == ["dvc-lock", "temp"]
    assert node.fsck(repair=True).clean
    assert lock.read_text() == LOCK and node.fsck().problems == []
    assert not [n for n in os.listdir(node.path) if n.startswith(".dvc.lock")]


def test_a_damaged_dvc_lock_the_last_commit_lacks_is_removed(node):
    node.import_files(REFERENCE_FILES, message="refs")
    lock = node.path / "dvc.lock"
    lock.write_text(LOCK[: LOCK.index("      md5:")] + "      md5: [")
    assert [p.kind for p in node.fsck().problems] == ["dvc-lock"]
    assert node.fsck(repair=True).repaired == 1
    assert not lock.exists() and node.fsck().problems == []
