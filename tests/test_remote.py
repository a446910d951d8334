"""Remotes and bundles: push, fetch, pull, clone, export_bundle, and their failure modes."""

import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from conftest import AIMD, LI3PS4_SAMPLES, REFERENCE_FILES
from nodestore.errors import IntegrityError, NodestoreError, RevisionError, ValidationError
from nodestore.repo import Node, dvc


def _remote_heads(remote_dir):
    import pygit2

    repo = pygit2.Repository(str(remote_dir / "node.git"))
    return {r: str(repo.references[r].target) for r in repo.references}


def _new_segment_object(node, rev_a="HEAD~1", rev_b="HEAD"):
    """(md5, remote-relative path) of a segment file added between two commits."""
    a = {e["md5"] for e in dvc.dir_listing(node.path, node.artifact_md5(node.git.revparse_single(rev_a), "data/table"))}
    listing = dvc.dir_listing(node.path, node.artifact_md5(node.git.revparse_single(rev_b), "data/table"))
    md5 = next(e["md5"] for e in listing if e["md5"] not in a and e["relpath"] != "manifest.json")
    return md5, f"objects/files/md5/{md5[:2]}/{md5[2:]}"


def _corrupt(path):
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def pushed(node, tmp_path):
    """A node with two commits of data and a tag, pushed to a local remote."""
    node.import_files([AIMD], method="vasp-pbe", message="AIMD frames")
    node.tag("v1")
    node.remote_add("origin", str(tmp_path / "remote"))
    first = node.push()
    return node, tmp_path / "remote", first


def test_push_clone_identical_then_incremental(pushed, tmp_path):
    node, remote, first = pushed
    assert (remote / "node.git" / "HEAD").exists() and (remote / "objects").is_dir()
    assert first["objects"] > 0 and first["bytes"] > 0 and "refs/tags/v1" in first["refs"]
    assert node.remotes()[0]["git_url"] == str(remote / "node.git")
    clone = Node.clone(str(remote), tmp_path / "clone")
    assert clone.show() == node.show()
    assert clone.tags() == node.tags() and [e["commit"] for e in clone.log()] == [e["commit"] for e in node.log()]
    assert clone.table.atoms(3).get_potential_energy() == node.table.atoms(3).get_potential_energy()

    again = node.push()
    assert again["objects"] == 0 and again["bytes"] == 0 and again["refs"] == []
    node.import_files(LI3PS4_SAMPLES, method="pbesol", message="samples")
    second = node.push()
    assert second["commits"] == 1
    # only the new segment, the new table listing and its manifest travel
    assert 0 < second["objects"] <= 3 < first["objects"]
    new_seg = node.table.segment_ids[-1]
    seg_bytes = sum(f.stat().st_size for f in (node.path / "data/table").rglob("*") if new_seg in str(f) and f.is_file())
    assert second["bytes"] < 1.2 * seg_bytes + 20_000 and second["bytes"] < first["bytes"] / 3

    # a second clone catches up by fast-forward
    up = clone.pull()
    assert up["result"] == "fast-forward" and clone.show() == node.show()
    assert clone.pull()["result"] == "up to date"


def test_interrupted_push_resumes(pushed, monkeypatch):
    node, remote, _ = pushed
    node.import_files(REFERENCE_FILES, origin="reference", message="references")
    before = _remote_heads(remote)
    from nodestore.repo import remote as remote_mod

    def boom(*a, **k):
        raise KeyboardInterrupt("network gone after the objects")

    monkeypatch.setattr(remote_mod, "_push_refs", boom)
    with pytest.raises(KeyboardInterrupt):
        node.push()
    assert _remote_heads(remote) == before  # refs never name data the remote lacks
    monkeypatch.undo()
    done = node.push()
    assert done["objects"] == 0 and "refs/heads/main" in done["refs"]  # the objects had arrived
    assert _remote_heads(remote)["refs/heads/main"] == str(node.git.head.target)


def test_corrupted_remote_object_is_caught(pushed, tmp_path):
    node, remote, _ = pushed
    clone = Node.clone(str(remote), tmp_path / "clone")
    head, tracking = str(clone.git.head.target), str(clone.git.references["refs/remotes/origin/main"].target)
    node.import_files(LI3PS4_SAMPLES, method="pbesol", message="samples")
    node.push()
    md5, rel = _new_segment_object(node)
    good = (remote / rel).read_bytes()
    _corrupt(remote / rel)

    with pytest.raises(IntegrityError, match=md5):
        clone.fetch()
    assert str(clone.git.head.target) == head
    assert str(clone.git.references["refs/remotes/origin/main"].target) == tracking
    assert not dvc.cache_file(clone.path, md5).exists()  # the bad copy was dropped
    assert clone.status()["clean"] and clone.show()["frames"] == 200
    with pytest.raises(IntegrityError, match=md5):
        Node.clone(str(remote), tmp_path / "clone2")
    assert not (tmp_path / "clone2").exists()

    (remote / rel).write_bytes(good)  # the remote repaired: fetching again succeeds
    assert clone.pull()["result"] == "fast-forward" and clone.show() == node.show()


def test_diverged_push_is_refused_and_pull_merges(pushed, tmp_path):
    node, remote, _ = pushed
    clone = Node.clone(str(remote), tmp_path / "clone")
    clone.import_files(REFERENCE_FILES, origin="reference", message="references in the clone")
    node.import_files(LI3PS4_SAMPLES, method="pbesol", message="samples upstream")
    node.push()
    before = _remote_heads(remote)
    with pytest.raises(NodestoreError, match="pull"):
        clone.push()
    assert _remote_heads(remote) == before
    r = clone.pull()
    assert r["result"] == "merged" and clone.show()["frames"] == 278
    clone.push()
    assert node.pull()["result"] == "fast-forward" and node.show() == clone.show()


def test_push_errors(node, tmp_path):
    with pytest.raises(RevisionError, match="no remote 'nowhere'"):
        node.push("nowhere")
    node.remote_add("origin", str(tmp_path / "r"))
    with pytest.raises(RevisionError, match="already exists"):
        node.remote_add("origin", str(tmp_path / "r2"))
    with pytest.raises(ValidationError, match="--git-url"):
        node.remote_add("s3", "s3://bucket/lips")
    with pytest.raises(RevisionError, match="holds nothing yet"):
        node.fetch()
    with pytest.raises(RevisionError, match="no branch 'nope'"):
        node.push(branch="nope")
    r = node.remote_add("cloud", "s3://bucket/lips", git_url="ssh://host/srv/lips/node.git")
    assert r["dvc_url"] == "s3://bucket/lips/objects"
    ssh = node.remote_add("lab", "ssh://host/srv/lips")
    assert ssh["git_url"] == "ssh://host/srv/lips/node.git" and ssh["dvc_url"] == "ssh://host/srv/lips/objects"


def test_bundle_roundtrip_and_malicious_bundle(pushed, tmp_path):
    node, _, _ = pushed
    node.import_files(LI3PS4_SAMPLES, method="pbesol", message="samples")
    out = node.export_bundle(tmp_path / "lips.nsbundle")
    assert out["commits"] == len(node.log()) and out["objects"] > 0 and out["bytes"] > 0
    copy = Node.clone(tmp_path / "lips.nsbundle", tmp_path / "from-bundle")
    assert copy.show() == node.show() and copy.tags() == node.tags()
    assert copy.remotes() == []
    # the whole history is there, offline
    assert copy.show("HEAD~1")["frames"] == 200

    evil = tmp_path / "evil.nsbundle"
    with tarfile.open(evil, "w") as tar:
        data = b"pwned"
        info = tarfile.TarInfo("../evil")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValidationError, match=r"refusing member '\.\./evil'"):
        Node.clone(evil, tmp_path / "victim")
    assert not (tmp_path / "evil").exists() and not (tmp_path / "victim").exists()

    linky = tmp_path / "link.nsbundle"
    with tarfile.open(linky, "w") as tar:
        info = tarfile.TarInfo("objects/x")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ValidationError, match="a link"):
        Node.clone(linky, tmp_path / "victim")

    # a bundle whose object does not match its name is refused before use
    bad = tmp_path / "bad.nsbundle"
    with tarfile.open(tmp_path / "lips.nsbundle") as src, tarfile.open(bad, "w") as dst:
        flipped = False
        for m in src:
            data = src.extractfile(m).read() if m.isfile() else None
            if data and m.name.startswith("objects/") and not flipped:
                data, flipped = data[:-1] + bytes([data[-1] ^ 1]), True
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
    with pytest.raises(IntegrityError, match="corrupted"):
        Node.clone(bad, tmp_path / "victim")
    assert not (tmp_path / "victim").exists()


def _cli(*args, cwd):
    env = {**os.environ, "NODESTORE_DEBUG": ""}
    return subprocess.run([sys.executable, "-m", "nodestore", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_remote_push_clone(node, tmp_path):
    node.import_files(REFERENCE_FILES, origin="reference", message="references")
    r = _cli("remote", "add", "origin", str(tmp_path / "remote"), cwd=node.path)
    assert r.returncode == 0, r.stderr
    r = _cli("remote", "list", cwd=node.path)
    assert r.returncode == 0 and "origin" in r.stdout and str(tmp_path / "remote") in r.stdout
    r = _cli("push", cwd=node.path)
    assert r.returncode == 0 and "pushed main" in r.stdout, r.stderr
    r = _cli("clone", str(tmp_path / "remote"), str(tmp_path / "c"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    a = json.loads(_cli("show", "--json", cwd=tmp_path / "c").stdout)
    b = json.loads(_cli("show", "--json", cwd=node.path).stdout)
    assert a == b
    r = _cli("push", "nowhere", cwd=node.path)
    assert r.returncode == RevisionError.exit_code and r.stderr.strip() == (
        "error: no remote 'nowhere'; add one with `nodestore remote add nowhere URL`")


def test_clone_and_fetch_take_only_the_data_of_one_branch(pushed, tmp_path):
    node, remote, _ = pushed
    node.branch("samples")
    node.checkout("samples")
    node.import_files(LI3PS4_SAMPLES, method="pbesol", message="samples on a branch")
    node.push()
    md5, rel = _new_segment_object(node)
    assert (remote / rel).exists()
    clone = Node.clone(str(remote), tmp_path / "clone")
    assert clone.git.head.shorthand == "main" and clone.show()["frames"] == 200
    assert not dvc.cache_file(clone.path, md5).exists()  # main's data only
    got = clone.fetch(branch="samples")
    assert got["ref"] == "origin/samples" and dvc.cache_file(clone.path, md5).exists()
