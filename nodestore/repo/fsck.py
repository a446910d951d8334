"""``nodestore fsck [--repair] [--remote NAME]``: check a node, and repair what is safe to repair.

Checks, each problem reported with what to do:

* the node's private state: an unfinished transaction (a dead writer's journal),
  temporary files interrupted writers left, a ``.nodestore`` that is a link;
* git: every ref resolves to a commit, every object of every commit reachable
  from the refs reads back (libgit2 checks each object's hash as it reads it);
* node.yaml and params.yaml against their schemas, the table manifest against
  its schema, every segment and overlay it lists present in the work tree;
* DVC objects: every object (``.dir`` listings expanded) named by the commits
  of the local branches and tags hashes to its name; a missing object is a
  problem for the tips only (older history need not be fetched);
* the work tree's table and checkpoint files against the ``.dir`` listing of
  HEAD when the work tree is HEAD's; each checkpoint directory against the
  content hash in its name;
* the method map: every method of a labeller's rows (origin ``labelled`` or
  ``relax-step``) is recorded in node.yaml's ``methods``; a recorded method that
  no row carries, or a force field on a method the node has no label of, is a
  warning;
* lineage: every checkpoint's ``parent`` is a checkpoint of ``models/`` (null for
  a pretrained start), every training frame of a force field is a frame of the
  table, and every row a force field produced names a checkpoint of ``models/``;
* with ``--remote``: the remote's branches against the local ones, and, for a
  remote on a local path, every object of their tips present and intact there.

DVC's own files: its lock table (``.dvc/tmp/rwlock``) and ``dvc.lock``, which
DVC rewrites in place and a killed ``dvc repro`` can leave truncated.

``--repair`` does only what is safe: it finishes or rolls back an interrupted
transaction, drops temporary files, removes a ``.nodestore`` link, removes a
truncated DVC lock table, puts back the last commit's ``dvc.lock`` over a
damaged one (the stages of the iteration in progress run again), and removes
corrupted objects from the local cache and fetches them again from the remote
(then relinks the work tree).
"""

from __future__ import annotations

import os
from pathlib import Path

from nodestore.errors import NodestoreError

from . import paths
from .methods import is_prediction
from .results import FsckProblem, FsckResult


class _Report:
    def __init__(self):
        self.problems: list[FsckProblem] = []
        self.warnings: list[FsckProblem] = []
        self.checked = 0

    def add(self, kind, what, message, fix, repaired=False):
        self.problems.append(FsckProblem(kind=kind, what=what, message=message, fix=fix, repaired=repaired))

    def warn(self, kind, what, message, fix):
        self.warnings.append(FsckProblem(kind=kind, what=what, message=message, fix=fix))


def fsck(node, repair: bool = False, remote: str | None = None) -> FsckResult:
    """Check the node (see the module docstring); with ``repair``, fix what is safe."""
    rep = _Report()
    _check_state(node, rep, repair)
    from .lock import node_lock

    with node_lock(node.state_dir):
        _check_git_locks(node, rep, repair)
        _check_dvc_rwlock(node, rep, repair)
        _check_dvc_lockfile(node, rep, repair)
        _check_git(node, rep)
        table = _check_documents(node, rep)
        if table is not None:
            with table:
                checkpoints = _read_checkpoints(node)
                _check_methods(node, rep, table, checkpoints)
                _check_lineage(rep, table, checkpoints)
        bad = _check_objects(node, rep)
        damaged = _check_worktree(node, rep)
        if remote is not None:
            _check_remote(node, rep, remote)
        if repair and bad:
            _repair_objects(node, rep, bad, remote)
        if repair and damaged:
            _repair_worktree(node, rep, damaged)
    return FsckResult(checked=rep.checked, problems=rep.problems,
                      repaired=sum(1 for p in rep.problems if p.repaired), warnings=rep.warnings)


# -- private state ---------------------------------------------------------------

def _check_state(node, rep: _Report, repair: bool) -> None:
    from .transaction import drop_temp_files, journal_path, recover

    state = node.path / paths.STATE_DIR
    if state.is_symlink() or (state.exists() and not state.is_dir()):
        done = False
        if repair:
            state.unlink()
            done = True
        rep.add("link", paths.STATE_DIR, f"{paths.STATE_DIR} is a link or a file, not the node's state directory",
                "run `nodestore fsck --repair` (it removes the link)", done)
        if not done:
            return
    rep.checked += 1
    temp = _temp_files(node)  # before a recovery, which drops them too
    if journal_path(node).is_file():
        outcome = recover(node) if repair else None
        rep.add("journal", str(journal_path(node).relative_to(node.path)),
                "an interrupted transaction (its writer died) is not finished" + (f": {outcome}" if outcome else ""),
                "run `nodestore fsck --repair` (or any nodestore command): it is rolled forward or back",
                outcome is not None)
    if temp:
        if repair:
            drop_temp_files(node)
        for rel in temp:
            rep.add("temp", rel, "a temporary file an interrupted writer left", "run `nodestore fsck --repair`", repair)


def _check_git_locks(node, rep: _Report, repair: bool) -> None:
    """git's lock files, under the node's lock: no nodestore writer holds them now."""
    from .transaction import drop_git_locks, git_lock_files

    locks = drop_git_locks(node) if repair else git_lock_files(node)
    for rel in locks:
        rep.add("git-lock", rel, "a git lock file a killed writer left (git refuses to write while it is there)",
                "run `nodestore fsck --repair`, or any writing verb (it removes the lock while no writer runs)", repair)


def _check_dvc_rwlock(node, rep: _Report, repair: bool) -> None:
    """DVC's own lock table, which a ``dvc repro`` killed while rewriting it leaves truncated:
    every later DVC command then fails until it is removed."""
    from .dvc import repair_rwlock

    if repair_rwlock(node.path, dry_run=not repair):
        rep.add("dvc-rwlock", ".dvc/tmp/rwlock",
                "DVC's lock table is truncated (a dvc process was killed while writing it): "
                "`dvc repro` refuses to run", "run `nodestore fsck --repair`, or `nodestore iterate --run` "
                "(both remove it; DVC writes a new one)", repair)


def _committed_lockfile(node) -> str | None:
    """The text of ``dvc.lock`` in HEAD's tree, or None (no commit, or none there)."""
    from . import git

    head = git.head_commit(node.git)
    data = None if head is None else git.read_blob(node.git, head, "dvc.lock")
    return None if data is None else data.decode("utf-8", "replace")


def _check_dvc_lockfile(node, rep: _Report, repair: bool) -> None:
    """``dvc.lock``, which DVC rewrites in place after every stage: a ``dvc repro`` killed while
    writing it leaves a prefix (found by the loop-stage kill test at its 27th iteration)."""
    from nodestore.errors import LockedError

    from .dvc import dvc_repo_lock, lockfile_damage, restore_lockfile

    committed = _committed_lockfile(node)
    try:
        with dvc_repo_lock(node.path):  # no DVC process is writing it while it is read
            damage = lockfile_damage(node.path, committed)
            if damage and repair:
                restore_lockfile(node.path, committed)
    except LockedError as exc:
        rep.warn("dvc-lock", "dvc.lock", f"not checked: {exc}", "run `nodestore fsck` when DVC has finished")
        return
    rep.checked += 1
    if damage:
        rep.add("dvc-lock", "dvc.lock",
                f"DVC's lock file is damaged, {damage} (a dvc process was killed while writing it): "
                "`dvc repro` refuses to run, or would run committed stages again",
                "run `nodestore fsck --repair`: it puts back the last commit's dvc.lock, and the next "
                "`dvc repro` runs the stages of the iteration in progress again", repair)


def _temp_files(node) -> list[str]:
    out = []
    for d in ("", "data", paths.TABLE_DIR, paths.SEGMENTS_DIR, paths.OVERLAYS_DIR, paths.MODELS_DIR):
        base = node.path / d if d else node.path
        if base.is_dir():
            out += [f"{d}/{n}" if d else n for n in os.listdir(base) if paths.is_temp(f"{d}/{n}" if d else n)]
    return out


# -- git ---------------------------------------------------------------------------

def _roots(node) -> dict[str, object]:
    """{ref name: commit} of local branches and tags (and HEAD)."""
    import pygit2

    from . import git

    repo = node.git
    out = {}
    head = git.head_commit(repo)
    if head is not None:
        out["HEAD"] = head
    for name in repo.references:
        if not name.startswith(("refs/heads/", "refs/tags/")):
            continue
        try:
            out[name] = repo.references[name].peel(pygit2.Commit)
        except (pygit2.GitError, ValueError, KeyError):
            pass  # reported by _check_git
    return out


def _check_git(node, rep: _Report) -> None:
    import pygit2

    repo = node.git
    seen = set()
    for name in list(repo.references):
        if not name.startswith(("refs/heads/", "refs/tags/", "refs/remotes/")):
            continue
        try:
            commit = repo.references[name].peel(pygit2.Commit)
        except (pygit2.GitError, ValueError, KeyError) as exc:
            rep.add("ref", name, f"does not resolve to a commit ({exc})",
                    f"delete the ref or fetch it again (`nodestore fetch`)")
            continue
        rep.checked += 1
        try:
            for c in repo.walk(commit.id, pygit2.enums.SortMode.TOPOLOGICAL):
                if c.id in seen:
                    continue
                seen.add(c.id)
                _read_tree(repo, c.tree, seen)
                rep.checked += 1
        except (pygit2.GitError, KeyError, ValueError) as exc:
            rep.add("git", name, f"the history of {name} cannot be read: {exc}",
                    "clone the node again from a remote, or fetch the branch again")


def _read_tree(repo, tree, seen) -> None:
    import pygit2

    for entry in tree:
        if entry.id in seen:
            continue
        seen.add(entry.id)
        obj = repo[entry.id]  # libgit2 checks the object's hash as it reads it
        if entry.filemode == pygit2.enums.FileMode.TREE:
            _read_tree(repo, obj, seen)
        else:
            obj.read_raw()


# -- documents -----------------------------------------------------------------------

def _check_documents(node, rep: _Report):
    """node.yaml, params.yaml and the table manifest; the work tree's table, or None when it cannot be opened."""
    from nodestore.config import read_yaml
    from nodestore.frames import FrameTable

    for rel, schema in ((paths.NODE_YAML, "node"), (paths.PARAMS_YAML, "params")):
        rep.checked += 1
        try:
            read_yaml(node.path / rel, schema)
        except NodestoreError as exc:
            rep.add("schema", rel, str(exc), f"fix {rel} by hand, or restore it with `nodestore checkout --force HEAD`")
    rep.checked += 1
    try:
        table = FrameTable.open(node.path / paths.TABLE_DIR)
    except NodestoreError as exc:
        rep.add("manifest", paths.TABLE_MANIFEST, str(exc), "restore the table with `nodestore checkout --force HEAD`")
        return None
    complete = True
    for f in table.files():
        rep.checked += 1
        if not f.is_file():
            complete = False
            rep.add("manifest", f.relative_to(node.path).as_posix(), "listed by the table manifest but missing",
                    "restore the table with `nodestore checkout --force HEAD` (after `nodestore pull` if the "
                    "object is not in the local cache)")
    if not complete:
        table.close()
        return None
    return table


# -- method map and lineage -------------------------------------------------------------


def _read_checkpoints(node) -> dict[str, dict]:
    """{directory name: meta.json} of the work tree's checkpoints (unreadable ones are left to the hash checks)."""
    import json

    out = {}
    models = node.path / paths.MODELS_DIR
    if not models.is_dir():
        return out
    for d in sorted(models.iterdir()):
        if d.is_dir() and not d.name.startswith(".") and (d / "meta.json").is_file():
            try:
                meta = json.loads((d / "meta.json").read_text())
            except (OSError, ValueError):
                continue
            if isinstance(meta, dict):
                out[d.name] = meta
    return out


def _check_methods(node, rep: _Report, table, checkpoints: dict[str, dict]) -> None:
    import numpy as np

    from nodestore.config import read_yaml

    try:
        cfg = read_yaml(node.path / paths.NODE_YAML, "node")
    except NodestoreError:
        return  # reported by _check_documents
    recorded = set((cfg.get("methods") or {}))
    method = table.column("method") if len(table) else np.array([], dtype=str)
    # a labeller's row, whatever its origin (`label --origin reference` too), carries the ionic step
    # of its labelling (0 for a single point); an imported row carries -1 even when it is labelled
    made = (table.column("relax_step") >= 0) if len(table) else np.array([], dtype=bool)
    used = {str(m) for m in np.unique(method) if m}
    by_labeller = {str(m) for m in np.unique(method[made]) if m and not is_prediction(m)}
    for m in sorted(by_labeller - recorded):
        rep.checked += 1
        n = int(((method == m) & made).sum())
        rep.add("method", m, f"{n} labelled row(s) carry method {m!r}, which node.yaml's methods does not record "
                "(the settings behind the name are lost, so new labels cannot be checked against them)",
                f"restore node.yaml's methods from the commit that labelled them (`nodestore checkout --force HEAD` "
                f"if only the work tree's node.yaml was edited), or re-label with `nodestore label`, which records {m!r}")
    rep.checked += len(by_labeller & recorded)
    for m in sorted(recorded - used):
        rep.warn("method", m, f"node.yaml's methods records {m!r}, but no row of the table carries it",
                 "nothing to do if its labels were removed on purpose; otherwise restore the table "
                 "(`nodestore checkout --force HEAD`)")
    for name, meta in checkpoints.items():
        em = (meta.get("reference_energies") or {}).get("method")
        if meta.get("kind") == "forcefield" and em and em not in used and em not in recorded:
            rep.warn("method", f"{paths.MODELS_DIR}/{name}", f"the force field predicts on the energy scale of "
                     f"{em!r}, a method with no label in this node",
                     "nothing to do for a checkpoint brought from another node; to use it here, fine-tune it on "
                     "this node's labels (`nodestore train`)")


def _check_lineage(rep: _Report, table, checkpoints: dict[str, dict]) -> None:
    import numpy as np

    hashes = {m.get("hash") for m in checkpoints.values() if m.get("hash")}
    frame_ids = set(table.column("frame_id").tolist()) if len(table) else set()
    for name, meta in checkpoints.items():
        where = f"{paths.MODELS_DIR}/{name}"
        rep.checked += 1
        parent = meta.get("parent")
        if parent and parent not in hashes:
            rep.add("lineage", where, f"its parent checkpoint {parent} (the model it was trained from) is not in "
                    f"{paths.MODELS_DIR}/", "restore the models with `nodestore checkout --force HEAD` (after "
                    "`nodestore fsck --repair --remote NAME` or `nodestore pull` if objects are missing); a "
                    "checkpoint copied in from another node needs its parent copied with it")
        if meta.get("kind") != "forcefield":
            continue  # a generator learns from proposals, which are not frames of the table
        missing = [f for f in (meta.get("training_frames") or []) if f not in frame_ids]
        if missing:
            rep.add("lineage", where, f"{len(missing)} of the {len(meta['training_frames'])} frames it was trained "
                    f"on are not in the table (first: {missing[0]})",
                    "restore the table with `nodestore checkout --force HEAD`, or merge the branch that holds "
                    "those frames; a checkpoint trained elsewhere needs its frames imported too")
    if len(table):
        made_by = table.column("checkpoint")
        for h in sorted({str(c) for c in np.unique(made_by) if c} - hashes):
            rep.checked += 1
            n = int((made_by == h).sum())
            rep.add("lineage", h, f"{n} row(s) were predicted by checkpoint {h}, which is not in {paths.MODELS_DIR}/",
                    "restore the models with `nodestore checkout --force HEAD` (or `nodestore fsck --repair "
                    "--remote NAME` if its objects are damaged)")


# -- DVC objects ----------------------------------------------------------------------

def _check_objects(node, rep: _Report) -> dict[str, str]:
    """Hash every object of the local branches' and tags' history; {md5: label} of bad ones."""
    import pygit2

    from . import dvc
    from .remote import commit_objects

    repo = node.git
    roots = _roots(node)
    tips = {c.id for c in roots.values()}
    seen: dict[str, bool] = {}  # md5 -> ok
    bad: dict[str, str] = {}
    walked = set()
    for name, tip in roots.items():
        for c in repo.walk(tip.id, pygit2.enums.SortMode.TOPOLOGICAL):
            if c.id in walked:
                continue
            walked.add(c.id)
            for md5, label in commit_objects(node.path, repo, c):
                _check_one(node, rep, md5, label, c, c.id in tips, seen, bad)
                f = dvc.cache_file(node.path, md5)
                if md5.endswith(".dir") and seen.get(md5) and f.exists():
                    for entry in dvc.dir_listing(node.path, md5):
                        _check_one(node, rep, entry["md5"], f"{label}/{entry['relpath']}", c, c.id in tips, seen, bad)
    return bad


def _check_one(node, rep, md5, label, commit, is_tip, seen, bad) -> None:
    from . import dvc

    if md5 in seen:
        return
    f = dvc.cache_file(node.path, md5)
    if not f.exists():
        if is_tip:
            seen[md5] = False
            bad[md5] = label
            rep.add("object", md5, f"object {md5} ({label}) of commit {str(commit.id)[:10]} is missing from the "
                    "local cache", "run `nodestore fsck --repair --remote NAME` or `nodestore pull`")
        return
    rep.checked += 1
    ok = dvc.file_md5(f) == md5.removesuffix(".dir")
    seen[md5] = ok
    if not ok:
        bad[md5] = label
        rep.add("object", md5, f"object {md5} ({label}) is corrupted: its content does not hash to its name",
                "run `nodestore fsck --repair --remote NAME`: it is removed and fetched again")


# -- the work tree --------------------------------------------------------------------

def _check_worktree(node, rep: _Report) -> dict:
    """Work-tree files of the tracked directories against HEAD's listing, where the work tree is HEAD's.

    Returns the damaged segment and overlay files (``{problem index: (path, md5)}``): their names
    are their content's hash, so other bytes under the same name are damage, never an edit, and
    ``--repair`` puts the object's bytes back."""
    from . import dvc, git
    from .models_store import matches_its_id

    damaged: dict = {}
    head = git.head_commit(node.git)
    if head is None:
        return damaged
    for tracked in dvc.TRACKED:
        md5 = node.artifact_md5(head, tracked)
        if md5 is None or not dvc.cache_file(node.path, md5).exists():
            continue
        try:
            listing = {e["relpath"]: e["md5"] for e in dvc.dir_listing(node.path, md5)}
        except NodestoreError:
            continue
        base = node.path / tracked
        for rel, want in listing.items():
            f = base / rel
            if not f.is_file():
                continue  # a work-tree change (status shows it), not damage
            cache = dvc.cache_file(node.path, want)
            try:
                same_inode = cache.exists() and os.stat(cache).st_ino == os.stat(f).st_ino
            except OSError:
                same_inode = False
            if same_inode:
                continue  # the object itself was hashed above
            if rel.startswith("segments/") or rel.startswith("overlays/"):
                rep.checked += 1
                if dvc.file_md5(f) != want:  # content-addressed names: same name, other bytes is damage
                    damaged[len(rep.problems)] = (f, want)
                    rep.add("worktree", f"{tracked}/{rel}", "the work-tree file does not match the object HEAD "
                            "records under its name",
                            "run `nodestore fsck --repair` (it copies the object back; add `--remote NAME` "
                            "if the object is damaged too) or `nodestore checkout --force HEAD`")
    models = node.path / paths.MODELS_DIR
    if models.is_dir():
        for d in sorted(models.iterdir()):
            if d.is_dir() and (d / "meta.json").exists() and "-" in d.name and not d.name.startswith("."):
                rep.checked += 1
                if not matches_its_id(d):
                    rep.add("checkpoint", f"{paths.MODELS_DIR}/{d.name}",
                            "the checkpoint's files do not hash to the id in its name",
                            "run `nodestore checkout --force HEAD` (or fsck --repair --remote NAME if its objects "
                            "are damaged)")
    return damaged


def _repair_worktree(node, rep: _Report, damaged: dict) -> None:
    """Put each damaged segment/overlay back from its (verified) cache object."""
    from . import dvc

    good = {i: (f, md5) for i, (f, md5) in damaged.items()
            if dvc.cache_file(node.path, md5).is_file() and dvc.file_md5(dvc.cache_file(node.path, md5)) == md5}
    # (a damaged object is fetched first: --remote NAME; _repair_objects may have relinked the file already)
    _relink(node, [f for f, md5 in good.values() if f.is_file() and dvc.file_md5(f) != md5])
    for i, (f, md5) in good.items():
        if f.is_file() and dvc.file_md5(f) == md5:
            p = rep.problems[i]
            rep.problems[i] = FsckProblem(kind=p.kind, what=p.what, message=p.message, fix=p.fix, repaired=True)


def _relink(node, files) -> None:
    """Remove work-tree files that hold the wrong bytes and let DVC link them again from the cache."""
    from . import dvc

    if not files:
        return
    for f in files:
        f.unlink()
    try:
        dvc.checkout(node.path, force=True)
    except NodestoreError:
        pass  # what is still wrong is reported by the next fsck


# -- remote ---------------------------------------------------------------------------

def _check_remote(node, rep: _Report, remote: str) -> None:
    import pygit2

    from .remote import _dvc_url, _git_remote, _local_path, _remote_heads, local_remote_objects

    repo = node.git
    git_remote = _git_remote(node, remote)
    try:
        heads = _remote_heads(node, git_remote.url)
    except NodestoreError as exc:
        rep.add("remote", remote, str(exc), "check the remote's URL (`nodestore remote list`)")
        return
    rep.checked += 1
    for name in repo.branches.local:
        ref = f"refs/heads/{name}"
        theirs = heads.get(ref)
        mine = repo.branches.local[name].target
        if theirs is None:
            rep.add("remote", f"{remote}/{name}", f"{remote} has no branch {name}", f"`nodestore push {remote} --branch {name}`")
        elif theirs != mine and theirs in repo and repo.descendant_of(mine, theirs):
            rep.add("remote", f"{remote}/{name}", f"{remote}/{name} is behind {name}", f"`nodestore push {remote} --branch {name}`")
        elif theirs != mine and theirs not in repo:
            rep.add("remote", f"{remote}/{name}", f"{remote}/{name} has commits this node lacks",
                    f"`nodestore pull {remote} --branch {name}`")
    objects = _local_path(_dvc_url(node, remote) or "")
    if objects is None:
        return  # a network remote: its objects are checked when fetched
    branches = {}
    for ref, oid in heads.items():
        if ref.startswith("refs/heads/") and oid in repo:
            branches[repo[oid].peel(pygit2.Commit).id] = ref.removeprefix("refs/heads/")
    commits = [repo[c] for c in branches]
    for m, lab, g, problem, c in local_remote_objects(node, objects, commits, verify=True):
        rep.checked += 1
        if problem == "missing":
            rep.add("remote", m, f"{remote} lacks object {m} ({lab}) of {branches[c.id]}",
                    f"`nodestore push {remote}` from a node that holds it")
        elif problem == "corrupted":
            rep.add("remote", m, f"object {m} ({lab}) on {remote} is corrupted",
                    f"delete {g} and `nodestore push {remote}` from a node that holds it intact")


# -- repair ----------------------------------------------------------------------------

def _repair_objects(node, rep: _Report, bad: dict[str, str], remote: str | None) -> None:
    """Remove the corrupted objects and fetch every bad one again from ``remote``; relink the work tree."""
    from . import dvc
    from .remote import _dvc_url

    for md5 in bad:
        f = dvc.cache_file(node.path, md5)
        if f.exists() and dvc.file_md5(f) != md5.removesuffix(".dir"):
            f.unlink()
    if remote is None or not _dvc_url(node, remote):
        return
    revs = sorted({str(c.id) for c in _roots(node).values()})
    try:
        dvc.fetch(node.path, remote, revs=revs)
    except NodestoreError:
        pass  # what is still missing is reported below
    fixed = {md5 for md5 in bad
             if dvc.cache_file(node.path, md5).exists()
             and dvc.file_md5(dvc.cache_file(node.path, md5)) == md5.removesuffix(".dir")}
    if fixed:
        # work-tree files that were links to a bad object still hold its bytes: relink them
        from . import git

        stale = []
        head = git.head_commit(node.git)
        for tracked in dvc.TRACKED if head is not None else ():
            md5 = node.artifact_md5(head, tracked)
            if md5 is None or not dvc.cache_file(node.path, md5).exists():
                continue
            for e in dvc.dir_listing(node.path, md5):
                f = node.path / tracked / e["relpath"]
                if e["md5"] in fixed and f.is_file() and dvc.file_md5(f) != e["md5"]:
                    stale.append(f)
        _relink(node, stale)
    rep.problems = [p if not (p.kind == "object" and p.what in fixed) else
                    FsckProblem(kind=p.kind, what=p.what, message=p.message, fix=p.fix, repaired=True)
                    for p in rep.problems]
