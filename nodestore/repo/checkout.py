"""checkout, branch, tag: git refs through pygit2, artifacts follow through DVC."""

from __future__ import annotations

import re

from nodestore.errors import NodestoreError, RevisionError

from .lock import locked
from .results import CheckoutResult

_REF_NAME = re.compile(r"^(?!-)(?!.*\.\.)(?!.*//)[A-Za-z0-9._/-]+(?<![./])$")


def _check_name(name: str, what: str) -> None:
    if not _REF_NAME.match(name) or name.endswith(".lock"):
        raise RevisionError(f"{name!r} is not a valid {what} name")


def checkout(node, rev: str, force: bool = False) -> CheckoutResult:
    """Move the work tree (yaml files, table, checkpoints) to branch, tag or commit ``rev``; HEAD moves last."""
    from . import git

    repo = node.git
    with node.transaction(f"checkout {rev}", worktree=True) as tx:
        if not force:
            st = node.status()
            if not st["clean"]:
                raise NodestoreError(
                    f"the node has uncommitted changes ({', '.join(st['changed_files'])}); commit them or use --force"
                )
        target = git.resolve(repo, rev)
        branch = rev if rev in repo.branches.local else None
        tx.move_worktree(target, branch=branch)
    return CheckoutResult(commit=str(target.id), branch=branch)


@locked
def branch(node, name: str, rev: str | None = None, delete: bool = False) -> str:
    """Create branch ``name`` at ``rev`` (HEAD), or delete it."""
    from . import git

    _check_name(name, "branch")
    repo = node.git
    if delete:
        if name == git.current_branch(repo):
            raise RevisionError(f"cannot delete the current branch {name!r}")
        if name not in repo.branches.local:
            raise RevisionError(f"no branch {name!r}")
        repo.branches.local.delete(name)
        return name
    if name in repo.branches.local:
        raise RevisionError(f"branch {name!r} already exists")
    target = git.resolve(repo, rev)
    with git.git_errors(f"branch {name}"):
        repo.branches.local.create(name, target)
    return str(target.id)


def branches(node) -> list[dict]:
    from . import git

    cur = git.current_branch(node.git)
    out = []
    for name in sorted(node.git.branches.local):
        b = node.git.branches.local[name]
        out.append({"name": name, "commit": str(b.target), "current": name == cur})
    return out


@locked
def tag(node, name: str, rev: str | None = None, message: str | None = None, force: bool = False) -> str:
    """Tag ``rev`` (HEAD); an annotated tag when a message is given."""
    import pygit2

    from . import git

    _check_name(name, "tag")
    repo = node.git
    target = git.resolve(repo, rev)
    ref = f"refs/tags/{name}"
    if ref in repo.references:
        if not force:
            raise RevisionError(f"tag {name!r} already exists (use --force to move it)")
        repo.references.delete(ref)
    with git.git_errors(f"tag {name}"):
        if message:
            repo.create_tag(name, target.id, pygit2.enums.ObjectType.COMMIT, git.signature(repo), message)
        else:
            repo.references.create(ref, target.id)
    return str(target.id)


def tags(node) -> dict[str, str]:
    import pygit2

    out = {}
    for ref in node.git.references:
        if ref.startswith("refs/tags/"):
            out[ref.removeprefix("refs/tags/")] = str(node.git.revparse_single(ref).peel(pygit2.Commit).id)
    return out
