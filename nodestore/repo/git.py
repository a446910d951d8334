"""pygit2 in one place: commits, refs, revisions; libgit2 errors become NodestoreErrors."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from nodestore.errors import NodestoreError, RevisionError

MAIN = "main"


@contextmanager
def git_errors(what: str):
    """Map pygit2/libgit2 errors to one NodestoreError (like pygit2/errors.py does for codes)."""
    import pygit2

    try:
        yield
    except (pygit2.GitError, KeyError, ValueError) as exc:
        if isinstance(exc, NodestoreError):
            raise
        raise NodestoreError(f"{what}: {exc}") from None


def init(path: Path):
    import pygit2

    return pygit2.init_repository(str(path), bare=False, initial_head=MAIN)


def open_repo(path: Path):
    import pygit2

    return pygit2.Repository(str(path))


def signature(repo):
    import pygit2

    try:
        return repo.default_signature
    except (KeyError, pygit2.GitError):
        name = os.environ.get("GIT_AUTHOR_NAME") or os.environ.get("USER") or "nodestore"
        email = os.environ.get("GIT_AUTHOR_EMAIL") or f"{name}@localhost"
        return pygit2.Signature(name, email)


def head_commit(repo):
    if repo.head_is_unborn:
        return None
    return repo.head.peel()


def current_branch(repo) -> str | None:
    if repo.head_is_detached:
        return None
    ref = repo.lookup_reference("HEAD").target
    return ref.removeprefix("refs/heads/") if isinstance(ref, str) else None


def resolve(repo, rev: str | None):
    """A commit object for a revision (branch, tag, sha, HEAD~1, iter-2, ...)."""
    import pygit2

    if rev is None or rev == "HEAD":
        commit = head_commit(repo)
        if commit is None:
            raise RevisionError("the node has no commits yet")
        return commit
    try:
        obj = repo.revparse_single(rev)
    except (KeyError, pygit2.GitError, ValueError):
        raise RevisionError(f"unknown revision {rev!r}") from None
    try:
        return obj.peel(pygit2.Commit)
    except (pygit2.GitError, ValueError):
        raise RevisionError(f"{rev!r} does not name a commit") from None


def stage_all(repo) -> object:
    """Stage every non-ignored change of the work tree (writers' temporary files excepted);
    return the tree id."""
    from .paths import is_temp

    index = repo.index
    index.read(force=True)
    index.add_all()
    # drop entries whose files are gone, and temporary files an interrupted writer left
    for entry in list(index):
        if is_temp(entry.path) or not (Path(repo.workdir) / entry.path).exists():
            index.remove(entry.path)
    index.write()
    return index.write_tree()


def commit(repo, message: str, parents: list | None = None, ref: str | None = "HEAD") -> str:
    """Commit the staged work tree; parents default to HEAD (none for the first).

    With ``ref=None`` only the commit object is written (a transaction moves the refs)."""
    tree = stage_all(repo)
    if parents is None:
        head = head_commit(repo)
        parents = [head.id] if head is not None else []
    sig = signature(repo)
    oid = repo.create_commit(ref, sig, sig, message, tree, parents)
    return str(oid)


def is_dirty(repo, untracked: bool = False) -> list[str]:
    """Paths with changes not committed (ignored files, and untracked ones unless asked, excluded)."""
    import pygit2

    from .paths import is_temp

    out = []
    for path, flags in repo.status().items():
        if flags & pygit2.GIT_STATUS_IGNORED or (flags == pygit2.GIT_STATUS_WT_NEW and is_temp(path)):
            continue
        if flags == pygit2.GIT_STATUS_WT_NEW and not untracked:
            continue
        if flags != pygit2.GIT_STATUS_CURRENT:
            out.append(path)
    return sorted(out)


def read_blob(repo, commit, path: str) -> bytes | None:
    try:
        entry = commit.tree[path]
    except KeyError:
        return None
    return repo[entry.id].data
