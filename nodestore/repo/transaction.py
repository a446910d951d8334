"""One write path: ``with node.transaction(message, tags=()) as tx:``.

Every verb that changes a node plans first (pure functions over the current
state), then writes only through the few writers of a transaction:

* it takes the node lock once, and journals in ``.nodestore/journal.json``
  a snapshot of the small files it may change (the table manifest, node.yaml,
  params.yaml, models/current.json, data/merges.json, the ``.dvc`` pointers)
  and what the content-addressed directories held, before it writes anything;
* its writers append, adopt, annotate and delete table rows, update node.yaml,
  params.yaml and the checkpoints; every file or directory it creates is
  journaled before it is created;
* on exit it runs ``dvc add`` and writes the commit object, journals the
  commit's id, then moves the branch and the tags in one pygit2 ref transaction;
* on any exception it restores the snapshot and removes what it created;
* a start that finds the journal of a dead writer (SQLite's hot journal) rolls
  it forward when the commit object was already made, back otherwise, before
  anything else runs.  A crash is never a state that needs a person.

A checkout is a transaction of the other kind (``worktree=True``): the work
tree is moved to another commit and HEAD moves last; a dead checkout's
journal makes the work tree equal to HEAD again.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from nodestore.errors import IntegrityError, LockedError, NodestoreError
from nodestore.faults import pause

from . import paths
from .lock import node_lock

JOURNAL_VERSION = 1
_ACTIVE: dict[str, "Transaction"] = {}


def _read(p: Path) -> str | None:
    try:
        return p.read_text()
    except FileNotFoundError:
        return None


def atomic_write(p: Path, text: str) -> None:
    """Write ``text`` to ``p`` through a synced temporary file renamed over it; a kill leaves ``p``
    whole, old or new, and at most a temporary file ``paths.TEMP_PATTERNS`` names."""
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, p)


def _remove(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink(missing_ok=True)
    elif p.is_dir():
        shutil.rmtree(p, ignore_errors=True)


def journal_path(node) -> Path:
    return node.state_dir / paths.JOURNAL


class Transaction:
    """The only way to change a node; see the module docstring."""

    def __init__(self, node, message: str, tags=(), parents=None, require_change: bool = False,
                 allow_empty: bool = False, worktree: bool = False):
        self.node = node
        self.message = message
        self.tags = list(tags)
        self.parents = parents
        self.require_change = require_change
        self.allow_empty = allow_empty
        self.worktree = worktree
        self.commit_id: str | None = None
        self._outer: Transaction | None = None
        self._lock = None
        self._refs_moved = False
        self._head_move = None  # worktree transactions: ("branch", name) | ("detached", oid) | ("ff", ref, oid)
        self._table = None
        self._cancelled = False

    def cancel(self) -> None:
        """End without a commit, putting back anything written (e.g. nothing turned out new)."""
        self._cancelled = True

    # -- the context ------------------------------------------------------
    def __enter__(self) -> "Transaction":
        key = str(self.node.path)
        outer = _ACTIVE.get(key)
        if outer is not None:  # a verb inside a verb: the outer transaction commits
            self._outer = outer
            outer.tags += [t for t in self.tags if t not in outer.tags]
            return outer
        if not self.message and not self.worktree:
            raise NodestoreError("a commit needs a message (-m)")
        self._lock = node_lock(self.node.state_dir)
        self._lock.__enter__()
        try:
            recover(self.node)
            drop_git_locks(self.node)
            self._begin()
        except BaseException:
            self._lock.__exit__(*sys.exc_info())
            raise
        _ACTIVE[key] = self
        return self

    def __exit__(self, et, ev, tb):
        if self._outer is not None:
            return False
        try:
            if et is None:
                try:
                    self._finish()
                except BaseException:
                    if not self._refs_moved:
                        self._rollback()
                    raise
            else:
                self._rollback()
        finally:
            _ACTIVE.pop(str(self.node.path), None)
            self._lock.__exit__(None, None, None)
        return False

    # -- journal ----------------------------------------------------------
    def _begin(self) -> None:
        from . import git

        repo = self.node.git
        head = git.head_commit(repo)
        branch = git.current_branch(repo)
        root = self.node.path
        self.journal = {
            "version": JOURNAL_VERSION, "pid": os.getpid(), "message": self.message,
            "mode": "worktree" if self.worktree else "files",
            "head": str(head.id) if head is not None else None,
            "ref": f"refs/heads/{branch}" if branch else "HEAD",
            "snapshot": {rel: _read(root / rel) for rel in paths.SNAPSHOT},
            "listing": {d: sorted(os.listdir(root / d)) if (root / d).is_dir() else [] for d in paths.WATCHED},
            "created": [], "state": "open", "commit": None, "tags": self.tags,
        }
        self._save()

    def _save(self) -> None:
        self.journal["tags"] = self.tags
        atomic_write(journal_path(self.node), json.dumps(self.journal, indent=1))

    def _track(self, rel: str) -> Path:
        """Snapshot ``rel`` (once) before it is written."""
        rel = Path(rel).as_posix()
        if rel not in self.journal["snapshot"]:
            self.journal["snapshot"][rel] = _read(self.node.path / rel)
            self._save()
        return self.node.path / rel

    def _creating(self, rel: str) -> Path:
        """Journal that ``rel`` (a file or directory that does not exist yet) is about to be created."""
        rel = Path(rel).as_posix()
        p = self.node.path / rel
        if not p.exists() and rel not in self.journal["created"]:
            self.journal["created"].append(rel)
            self._save()
        return p

    # -- writers: the table ----------------------------------------------
    @property
    def table(self):
        """The work-tree table, as this transaction is changing it."""
        if self._table is None:
            from nodestore.frames import FrameTable

            self._table = FrameTable.open(self.node.path / paths.TABLE_DIR)
        return self._table

    def append(self, batch, dedup: bool = True) -> str | None:
        return self.table.append(batch, dedup=dedup)

    def adopt(self, other, ids=None, overlay: bool = False) -> list[str]:
        """List segments of table ``other`` (copying their files); with ``overlay``, take its overlay too."""
        return self.table.adopt(other, ids=ids, overlay=overlay)

    def annotate(self, keys, values: dict, delete=()) -> None:
        self.table.annotate(keys, values, delete=delete)

    def update_rows(self, rows: dict, delete=()) -> None:
        """Per-row mutable values ``{row key: {column: value}}`` and deletions, in one overlay."""
        self.table.update_rows(rows, delete=delete)

    def delete(self, keys) -> None:
        self.table.annotate([], {}, delete=keys)

    # -- writers: files, config, checkpoints -----------------------------
    def write_text(self, rel: str, text: str) -> None:
        p = self._track(rel)
        atomic_write(p, text)

    def write_json(self, rel: str, doc) -> None:
        self.write_text(rel, json.dumps(doc, indent=1, sort_keys=True) + "\n")

    def make_dir(self, rel: str) -> Path:
        p = self._creating(rel)
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def config(self) -> dict:
        return self.node.config

    def write_config(self, cfg: dict) -> None:
        from nodestore.config import write_yaml

        write_yaml(self._track(paths.NODE_YAML), cfg, "node")

    def write_params(self, params: dict) -> None:
        from nodestore.config import write_yaml

        write_yaml(self._track(paths.PARAMS_YAML), params, "params")

    def record_method(self, info: dict) -> bool:
        from .methods import updated_methods

        cfg = self.config
        methods = updated_methods(cfg, info)
        if methods is None:
            return False
        cfg["methods"] = methods
        self.write_config(cfg)
        return True

    def copy_checkpoint(self, src: Path, name: str | None = None) -> Path:
        """Copy checkpoint directory ``src`` into models/ as ``name`` (its own name by default)."""
        name = name or Path(src).name
        dest = self.node.path / paths.MODELS_DIR / name
        if dest.exists():
            return dest
        tmp = dest.with_name(f".{name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        for p in tmp.rglob("*"):
            if p.is_file():
                p.chmod(0o644)
        os.replace(tmp, dest)
        return dest

    def add_checkpoint(self, src: Path, kind: str, make_current: bool = True) -> str:
        from nodestore.errors import ValidationError

        from .models_store import checkpoint_hash

        src = Path(src)
        if not (src / "meta.json").exists():
            raise ValidationError(f"{src} is not a checkpoint directory (no meta.json)")
        cid = f"{kind}-{checkpoint_hash(src)}"
        self.copy_checkpoint(src, cid)
        if make_current:
            self.set_current_model(kind, cid)
        return cid

    def set_current_models(self, current: dict) -> None:
        self.write_text(paths.CURRENT_JSON, json.dumps(current, indent=1, sort_keys=True) + "\n")

    def set_current_model(self, kind: str, cid: str) -> None:
        models = self.node.path / paths.MODELS_DIR
        if not (models / cid / "meta.json").exists():
            raise NodestoreError(f"no checkpoint {cid!r} in {models}")
        p = models / paths.CURRENT_MODELS
        cur = json.loads(p.read_text()) if p.exists() else {}
        cur[kind] = cid
        self.set_current_models(cur)

    def dvc_add(self, targets) -> None:
        """``dvc add`` of outputs beside the two tracked directories (e.g. the loop's pinned models)."""
        from . import dvc

        dvc.add(self.node.path, targets=targets)

    # -- worktree transactions ------------------------------------------------
    def move_worktree(self, target, branch: str | None = None, fast_forward: bool = False) -> None:
        """Make the work tree (git files and DVC artifacts) ``target``'s; HEAD moves when the transaction ends."""
        import pygit2

        from . import dvc, git

        if not self.worktree:
            raise NodestoreError("move_worktree needs a worktree transaction")
        check_tree(self.node.git, target)
        if fast_forward:
            self._head_move = ("ff", self.journal["ref"], str(target.id))
        elif branch:
            self._head_move = ("branch", f"refs/heads/{branch}", str(target.id))
        else:
            self._head_move = ("detached", "HEAD", str(target.id))
        self.journal["target"] = str(target.id)
        self._save()
        with git.git_errors("checkout"):
            self.node.git.checkout_tree(target, strategy=pygit2.enums.CheckoutStrategy.FORCE)
        pause("tx:checkout")
        dvc.checkout(self.node.path, force=True)

    # -- the end: dvc add, commit, refs -------------------------------------
    def _finish(self) -> None:
        from . import dvc, git

        pause("tx:written")
        repo = self.node.git
        if self._cancelled:
            self._rollback()
            self._refs_moved = True
            return
        if self.worktree:
            if self._head_move is not None:
                self._move_head()
            self._refs_moved = True
            journal_path(self.node).unlink(missing_ok=True)
            return
        self.table.gc()
        self._table = None
        dvc.add(self.node.path)
        pause("tx:added")
        head = git.head_commit(repo)
        if head is not None and not self.allow_empty and not git.is_dirty(repo, untracked=True):
            if self.require_change:
                raise NodestoreError("nothing to commit: the node is as its last commit")
            if self.tags:
                self._move_refs(None)
            self._refs_moved = True
            journal_path(self.node).unlink(missing_ok=True)
            return
        parents = self.parents if self.parents is not None else ([head.id] if head is not None else [])
        with git.git_errors("commit"):
            oid = git.commit(repo, self.message, parents=list(parents), ref=None)
        self.journal["state"] = "commit"
        self.journal["commit"] = str(oid)
        self._save()
        pause("tx:committed")
        self._move_refs(str(oid))
        self.commit_id = str(oid)
        self._refs_moved = True
        pause("tx:moved")
        journal_path(self.node).unlink(missing_ok=True)

    def _move_refs(self, oid: str | None) -> None:
        _move_refs(self.node.git, self.journal["ref"] if oid else None, oid or self.journal["head"],
                   self.tags, self.message)

    def _move_head(self) -> None:
        kind, ref, oid = self._head_move
        repo = self.node.git
        from . import git

        with git.git_errors("checkout"), repo.transaction() as rtx:
            if kind == "ff":
                rtx.lock_ref(ref)
                rtx.set_target(ref, oid, message=f"{self.message or 'merge'}: fast-forward")
            elif kind == "branch":
                rtx.lock_ref("HEAD")
                rtx.set_symbolic_target("HEAD", ref, message=f"checkout: moving to {ref}")
            else:
                rtx.lock_ref("HEAD")
                rtx.set_target("HEAD", oid, message=f"checkout: moving to {oid}")

    # -- undo ---------------------------------------------------------------
    def _rollback(self) -> None:
        self._table = None
        if self.worktree:
            if "target" in self.journal:  # the work tree moved: back to HEAD
                _recover(self.node, self.journal)
        else:
            _roll_back(self.node, self.journal)
        journal_path(self.node).unlink(missing_ok=True)


def _move_refs(repo, ref: str | None, oid: str, tags, message: str) -> None:
    """The branch (when ``ref``) and the tags to ``oid``, in one ref transaction."""
    from . import git

    with git.git_errors("move refs"), repo.transaction() as rtx:
        if ref is not None:
            rtx.lock_ref(ref)
            rtx.set_target(ref, oid, message=f"commit: {message.splitlines()[0] if message else ''}")
        for t in tags:
            rtx.lock_ref(f"refs/tags/{t}")
            rtx.set_target(f"refs/tags/{t}", oid, message=f"tag {t}")


def _roll_back(node, journal: dict) -> None:
    """Put the files the journal snapshotted back, and remove what the transaction created."""
    root = node.path
    for rel, text in journal["snapshot"].items():
        p = root / rel
        if text is None:
            if p.is_file() or p.is_symlink():
                p.unlink()
        elif _read(p) != text:
            atomic_write(p, text)
    for d, before in journal["listing"].items():
        base = root / d
        if base.is_dir():
            keep = set(before)
            for name in os.listdir(base):
                if name not in keep:
                    _remove(base / name)
    for rel in journal["created"]:
        _remove(root / rel)
    drop_temp_files(node)
    _reset_index(node)


def _reset_index(node) -> None:
    from . import git

    repo = node.git
    head = git.head_commit(repo)
    index = repo.index
    # an index that already holds HEAD's tree is left as it is: a refused verb writes no file
    if head is None:
        if not len(index):
            return
        index.clear()
    else:
        if index.conflicts is None and index.write_tree() == head.tree.id:
            return
        index.read_tree(head.tree)
    index.write()


def drop_temp_files(node) -> list[str]:
    """Remove the temporary files interrupted writers leave (never part of a commit)."""
    removed = []
    for d in ("", "data", paths.TABLE_DIR, paths.SEGMENTS_DIR, paths.OVERLAYS_DIR, paths.MODELS_DIR):
        base = node.path / d if d else node.path
        if not base.is_dir():
            continue
        for name in os.listdir(base):
            rel = f"{d}/{name}" if d else name
            if paths.is_temp(rel):
                _remove(base / name)
                removed.append(rel)
    return removed


#: lock files git (libgit2) holds while it writes a file of the repository, beside the refs'
GIT_LOCKS = ("HEAD.lock", "index.lock", "packed-refs.lock", "config.lock", "ORIG_HEAD.lock")


def git_lock_files(node) -> list[str]:
    """The lock files of the node's git directory (paths relative to the node): a writer holds
    one for the moment it rewrites HEAD, the index or a ref; one still there when no nodestore
    writer runs was left by a killed process, and makes every later git write fail."""
    gitdir = node.path / ".git"
    if not gitdir.is_dir():
        return []
    out = [f".git/{n}" for n in GIT_LOCKS if (gitdir / n).is_file()]
    refs = gitdir / "refs"
    if refs.is_dir():
        out += sorted(p.relative_to(node.path).as_posix() for p in refs.rglob("*.lock") if p.is_file())
    return out


def drop_git_locks(node) -> list[str]:
    """Remove git's stale lock files; only ever called by a holder of the node's lock, so that
    no nodestore writer can be using them."""
    removed = git_lock_files(node)
    for rel in removed:
        _remove(node.path / rel)
    return removed


def pending_journal(node) -> dict | None:
    p = journal_path(node)
    if not p.is_file():
        return None
    try:
        doc = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise IntegrityError(f"{p} is unreadable: the interrupted transaction cannot be undone from it; "
                             "run `nodestore fsck`") from None
    if not isinstance(doc, dict) or doc.get("version") != JOURNAL_VERSION:
        raise IntegrityError(f"{p} is not a nodestore journal (version {doc.get('version') if isinstance(doc, dict) else '?'})")
    return doc


def recover(node) -> str | None:
    """Finish or undo the transaction a dead writer left; return what was done (None: nothing to do).

    Called before anything else by ``Node.open`` and by every transaction.  A
    journal whose writer is alive (it holds the lock) is left to it.
    """
    if str(node.path) in _ACTIVE or not journal_path(node).is_file():
        return None
    try:
        with node_lock(node.state_dir):
            journal = pending_journal(node)
            if journal is None:
                return None
            drop_git_locks(node)
            outcome = _recover(node, journal)
            journal_path(node).unlink(missing_ok=True)
            return outcome
    except LockedError:
        return None


def _recover(node, journal: dict) -> str:
    import pygit2

    from . import dvc, git

    repo = node.git
    if journal["mode"] == "worktree":
        head = git.head_commit(repo)
        if head is not None:
            with git.git_errors("recover checkout"):
                repo.checkout_tree(head, strategy=pygit2.enums.CheckoutStrategy.FORCE)
            dvc.checkout(node.path, force=True)
        return "rolled the interrupted checkout to HEAD"
    oid = journal.get("commit")
    if journal["state"] == "commit" and oid and pygit2.Oid(hex=oid) in repo:
        ref = journal["ref"]
        try:
            current = str(repo.references[ref].target) if ref in repo.references or ref == "HEAD" else None
        except KeyError:
            current = None
        if current != oid:
            _move_refs(repo, ref, oid, journal.get("tags") or [], journal.get("message") or "")
        elif journal.get("tags"):
            _move_refs(repo, None, oid, journal["tags"], journal.get("message") or "")
        return f"rolled forward to commit {oid[:10]} ({journal.get('message', '').splitlines()[0] if journal.get('message') else ''})"
    _roll_back(node, journal)
    return f"rolled back the interrupted transaction ({(journal.get('message') or '').splitlines()[0] if journal.get('message') else 'no message'})"


def check_tree(repo, commit) -> None:
    """Refuse a tree holding links, or a ``.nodestore`` / ``.dvc/cache`` entry: checking it out
    would let the node write outside its directory."""
    import pygit2

    from nodestore.errors import ValidationError

    def walk(tree, prefix):
        for entry in tree:
            rel = f"{prefix}{entry.name}"
            if entry.filemode == pygit2.enums.FileMode.LINK:
                raise ValidationError(f"commit {str(commit.id)[:10]} holds a link {rel!r}: refusing to check it out "
                                      "(a link in a node's tree could make it write outside its directory)")
            if rel in (paths.STATE_DIR, ".dvc/cache", ".dvc/tmp", ".git"):
                raise ValidationError(f"commit {str(commit.id)[:10]} holds {rel!r}, which is the node's private "
                                      "state: refusing to check it out")
            if entry.filemode == pygit2.enums.FileMode.TREE:
                walk(repo[entry.id], rel + "/")

    walk(commit.tree, "")
