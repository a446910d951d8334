"""``nodestore fsck`` and defect 3 of issue 11 (a push that sent a corrupted object and moved the ref)."""

import json

import pytest

from conftest import AIMD, REFERENCE_FILES
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
