"""Defect 5 of issue 11: a tree holding links (``.nodestore`` as a symlink) never makes the node write outside."""

import os

import pygit2
import pytest

from conftest import REFERENCE_FILES
from nodestore.errors import ValidationError
from nodestore.repo import Node, git


def evil_commit(node, outside):
    """A commit whose tree holds ``.nodestore`` as a link to ``outside`` (as a crafted bundle can)."""
    repo = node.git
    head = repo.head.peel()
    blob = repo.create_blob(str(outside).encode())
    index = pygit2.Index()
    index.read_tree(head.tree)
    index.add(pygit2.IndexEntry(".nodestore", blob, pygit2.enums.FileMode.LINK))
    tree = index.write_tree(repo)
    sig = git.signature(repo)
    return repo.create_commit("refs/heads/evil", sig, sig, "a link in the tree", tree, [head.id])


def test_clone_of_a_tree_with_a_link_is_refused(node, tmp_path):
    node.import_files(REFERENCE_FILES, message="refs")
    outside = tmp_path / "outside"
    outside.mkdir()
    evil_commit(node, outside)
    node.remote_add("origin", tmp_path / "remote")
    node.push("origin", branch="evil")
    with pytest.raises(ValidationError, match="link '.nodestore'"):
        Node.clone(tmp_path / "remote", tmp_path / "clone", branch="evil")
    assert not (tmp_path / "clone").exists() and os.listdir(outside) == []


def test_bundle_with_a_link_is_refused(node, tmp_path):
    node.import_files(REFERENCE_FILES, message="refs")
    outside = tmp_path / "outside"
    outside.mkdir()
    evil_commit(node, outside)
    node.export_bundle(tmp_path / "evil.nsbundle", rev="evil")
    with pytest.raises(ValidationError, match="link"):
        Node.clone(tmp_path / "evil.nsbundle", tmp_path / "clone")
    assert not (tmp_path / "clone").exists() and os.listdir(outside) == []


def test_checkout_of_a_tree_with_a_link_is_refused(node, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    evil_commit(node, outside)
    head = str(node.git.head.target)
    with pytest.raises(ValidationError, match="link"):
        node.checkout("evil")
    assert str(node.git.head.target) == head and not (node.path / ".nodestore").is_symlink()
    assert os.listdir(outside) == [] and node.status()["clean"]


def test_a_state_dir_that_is_a_link_is_never_written_through(node, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    state = node.path / ".nodestore"
    if state.exists():
        import shutil

        shutil.rmtree(state)
    state.symlink_to(outside)
    with pytest.raises(ValidationError, match="is a link"):
        node.import_files(REFERENCE_FILES, message="refs")
    assert os.listdir(outside) == []
