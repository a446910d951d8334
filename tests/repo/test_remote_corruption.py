"""Defect 6 of issue 11: a corrupted ``.dir`` object on a remote is exit 7 (an IntegrityError), not exit 70."""

from conftest import REFERENCE_FILES

from faults.helpers import run


def test_clone_of_a_remote_with_a_corrupted_dir_object_is_exit_7(node, tmp_path):
    node.import_files(REFERENCE_FILES, message="refs")
    node.remote_add("origin", str(tmp_path / "remote"))
    node.push("origin")
    dirs = list((tmp_path / "remote" / "objects").rglob("*.dir"))
    assert dirs
    for d in dirs:
        d.chmod(0o644)
        d.write_text("{not json")
    rc, out = run(tmp_path, "clone", tmp_path / "remote", tmp_path / "clone")
    assert rc == 7, out
    assert "corrupted" in out and not (tmp_path / "clone").exists()


def test_push_completes_a_local_remote_that_dvc_believes_complete(node, tmp_path, monkeypatch, aimd_atoms):
    """Found by 100 random kills of push: after a killed push, the rerun's DVC upload skipped the
    table's .dir listing and the ref moved, leaving a remote that could not be cloned.  push now
    checks a local remote object by object before any ref moves."""
    from ase.io import write

    from nodestore.repo import Node, dvc

    node.import_files(REFERENCE_FILES, message="refs")
    node.remote_add("origin", str(tmp_path / "remote"))
    node.push("origin")
    write(tmp_path / "more.xyz", aimd_atoms[:3], format="extxyz")
    node.import_files([tmp_path / "more.xyz"], method="vasp-pbe", message="more")
    # DVC "already has" everything: it uploads nothing
    monkeypatch.setattr(dvc, "push", lambda *a, **k: 0)
    r = node.push("origin")
    assert r["objects"] >= 2  # the new segment and the table's .dir, copied by push itself
    assert node.fsck(remote="origin").clean
    clone = Node.clone(str(tmp_path / "remote"), tmp_path / "clone")
    assert len(clone.table) == len(node.table) and clone.fsck().problems == []


def test_a_truncated_dvc_rwlock_left_by_a_kill_does_not_fail_the_rerun(node, tmp_path, aimd_atoms):
    """Found by random kills of merge: DVC rewrites .dvc/tmp/rwlock in place, a kill mid-write
    truncates it, and the rerun failed with "Unable to read RWLock-file ... JSON structure is
    corrupted".  nodestore removes an unreadable rwlock (under DVC's own guard) before DVC runs."""
    from ase.io import write

    node.import_files(REFERENCE_FILES, message="refs")
    lock = node.path / ".dvc" / "tmp" / "rwlock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    for junk in ('{"read": {"data/ta', ""):
        lock.write_text(junk)
        write(tmp_path / "f.xyz", aimd_atoms[:1] if junk else aimd_atoms[1:2], format="extxyz")
        rc, out = run(node.path, "import", tmp_path / "f.xyz", "--method", "vasp-pbe", "-m", "after a kill")
        assert rc == 0, out
    # a readable lock file (DVC's own format) is left to DVC
    lock.write_text('{"read": {}, "write": {}}')
    from nodestore.repo import dvc

    assert dvc.repair_rwlock(node.path) is False and lock.exists()
