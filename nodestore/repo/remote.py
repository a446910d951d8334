"""remote add / remotes, push, fetch, pull, clone: git refs through pygit2, artifacts through DVC.

A nodestore remote is one URL holding two things:

* ``<url>/node.git``  a bare git repository (the history: yaml files, ``.dvc`` pointers, dvc.lock)
* ``<url>/objects``   a DVC remote (the content-addressed objects those pointers name)

Ordering is what keeps a remote consistent.  ``push`` uploads the objects
first and moves the remote's refs last, so a ref on the remote never names a
commit whose objects are missing there; an interrupted push is completed by
running it again (DVC skips the objects that already arrived).  ``fetch``
takes the git objects into a private staging ref, downloads the objects of
that one commit, verifies every one of them against its md5, and only then
moves ``refs/remotes/<remote>/<branch>``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

from nodestore.errors import IntegrityError, NodestoreError, RevisionError, ValidationError

from .lock import locked, node_lock

GIT_DIR = "node.git"
OBJECTS_DIR = "objects"
URL_KEY = "nodestoreurl"  # git config remote.<name>.nodestoreurl: the URL the user gave
STAGING = "refs/nodestore/incoming"


# -- URLs -------------------------------------------------------------------

def _local_path(url: str) -> Path | None:
    """The directory of a local URL (a path or file://...), None for a network URL."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return Path(parts.path)
    if parts.scheme == "" or (len(parts.scheme) == 1 and os.name == "nt"):
        try:
            return Path(url).expanduser().resolve()
        except RuntimeError as exc:  # ~user of no such user
            raise ValidationError(f"bad remote URL {url!r}: {exc}") from None
    return None


def split_url(url: str, git_url: str | None = None, dvc_url: str | None = None) -> tuple[str, str]:
    """The git URL and the DVC remote URL of a nodestore remote URL."""
    if not url:
        raise ValidationError("a remote needs a URL")
    # explicit local paths are stored absolute (DVC would read a relative one from .dvc/)
    if git_url and "://" not in git_url and _is_local_git(git_url):
        git_url = str(_local_path(git_url))
    if dvc_url and "://" not in dvc_url:
        dvc_url = str(_local_path(dvc_url))
    local = _local_path(url)
    if local is not None:
        return git_url or str(local / GIT_DIR), dvc_url or str(local / OBJECTS_DIR)
    scheme = urlsplit(url).scheme
    base = url.rstrip("/")
    if scheme in ("ssh", "git+ssh"):
        return git_url or f"{base}/{GIT_DIR}", dvc_url or f"ssh://{base.split('://', 1)[1]}/{OBJECTS_DIR}"
    if scheme in ("s3", "gs", "azure", "http", "https", "webdav", "webdavs"):
        if not git_url:
            raise ValidationError(
                f"{scheme}:// holds only objects: give the history's git URL with --git-url "
                f"(e.g. ssh://host/srv/{GIT_DIR} or a local path)")
        return git_url, dvc_url or f"{base}/{OBJECTS_DIR}"
    if git_url and dvc_url:
        return git_url, dvc_url
    raise ValidationError(f"unsupported remote URL {url!r}: use a path, file://, ssh:// or s3:// "
                          "(or give both --git-url and --dvc-url)")


def _is_local_git(git_url: str) -> Path | None:
    parts = urlsplit(git_url)
    if parts.scheme == "file":
        return Path(parts.path)
    if parts.scheme == "" and ":" not in git_url.split("/", 1)[0]:  # not scp-like host:path
        return Path(git_url)
    return None


def _git_remote(node, name: str):
    try:
        return node.git.remotes[name]
    except (KeyError, IndexError):
        raise RevisionError(f"no remote {name!r}; add one with `nodestore remote add {name} URL`") from None


def _dvc_url(node, name: str) -> str | None:
    from . import dvc

    with dvc.open_dvc(node.path) as repo:
        conf = repo.config.get("remote", {}).get(name)
    return conf.get("url") if conf else None


# -- remote add / list ------------------------------------------------------

@locked
def remote_add(node, name: str, url: str, git_url: str | None = None, dvc_url: str | None = None) -> dict:
    """Add remote ``name`` at ``url`` (git remote + DVC remote ``name`` in .dvc/config.local)."""
    from . import dvc, git
    from .checkout import _check_name

    from nodestore.faults import pause

    from .lock import node_lock

    _check_name(name, "remote")
    url = str(url)
    if not url.strip():  # an empty path would resolve to the working directory
        raise ValidationError("a remote needs a URL")
    local = _local_path(url)
    if local is not None:
        url = str(local)
    g, d = split_url(url, git_url, dvc_url)
    with node_lock(node.state_dir):
        if name in node.git.remotes.names():
            raise RevisionError(f"remote {name!r} already exists")
        # the DVC remote first, the git remote last: the git remote's existence is the commit point,
        # so a process killed in between leaves no remote, and running it again completes
        default = name == "origin" or not any(r["dvc_url"] for r in remotes(node))
        dvc.set_remote(node.path, name, d, default=default)
        pause("remote-add:dvc")
        with git.git_errors(f"remote add {name}"):
            node.git.config[f"remote.{name}.{URL_KEY}"] = url
            node.git.remotes.create(name, g)
    return {"name": name, "url": url, "git_url": g, "dvc_url": d}


def remotes(node) -> list[dict]:
    from . import dvc

    with dvc.open_dvc(node.path) as repo:
        dvc_conf = dict(repo.config.get("remote", {}))
    out = []
    for r in node.git.remotes:
        try:
            url = node.git.config[f"remote.{r.name}.{URL_KEY}"]
        except KeyError:
            url = r.url
        out.append({"name": r.name, "url": url, "git_url": r.url,
                    "dvc_url": (dvc_conf.get(r.name) or {}).get("url")})
    return sorted(out, key=lambda r: r["name"])


# -- objects of a commit, and their verification ---------------------------

def commit_objects(node_path: Path, repo, commit) -> list[tuple[str, str]]:
    """Top-level DVC objects a commit names: [(md5 or md5.dir, label)].

    The ``data/table`` and ``models`` directory versions (from their .dvc
    files) and the cached outs of ``dvc.lock`` (an out whose path git tracks
    at that commit, a ``cache: false`` metric, is not an object).
    """
    import yaml

    from . import dvc, git

    out = []
    for tracked in dvc.TRACKED:
        blob = git.read_blob(repo, commit, f"{tracked}.dvc")
        if blob is not None:
            info = dvc.dvcfile_md5(blob.decode())
            if info and info[0]:
                out.append((info[0], tracked))
    lock = git.read_blob(repo, commit, "dvc.lock")
    if lock is not None:
        doc = yaml.safe_load(lock.decode()) or {}
        for stage, body in (doc.get("stages") or {}).items():
            for o in (body or {}).get("outs") or []:
                md5, path = o.get("md5"), o.get("path", "")
                if md5 and git.read_blob(repo, commit, path) is None:
                    out.append((md5, f"{path} of stage {stage}"))
    return out


def _check_object(node_path: Path, md5: str, label: str, remove: bool, rehash: bool = True) -> None:
    from . import dvc

    f = dvc.cache_file(node_path, md5)
    if not f.exists():
        raise IntegrityError(f"object {md5} ({label}) is missing: not on the remote nor in the local cache")
    if rehash and dvc.file_md5(f) != md5.removesuffix(".dir"):
        if remove:
            f.unlink()
        hint = "; removed from the local cache, fetch again once the remote is repaired" if remove else ""
        raise IntegrityError(f"object {md5} ({label}) is corrupted (hash mismatch){hint}")


def verify_commit(node_path: Path, repo, commit, remove: bool = True, seen: set | None = None,
                  rehash: bool = True) -> int:
    """Hash every object ``commit`` names (directory listings expanded); return how many.

    A corrupted object raises IntegrityError naming it and, with ``remove``,
    is deleted from the local cache so that a later fetch downloads it again.
    """
    from . import dvc

    seen = set() if seen is None else seen
    n = 0
    for md5, label in commit_objects(node_path, repo, commit):
        if md5 in seen:
            continue
        _check_object(node_path, md5, label, remove, rehash)
        n += 1
        if md5.endswith(".dir"):
            for entry in dvc.dir_listing(node_path, md5):
                if entry["md5"] in seen:
                    continue
                _check_object(node_path, entry["md5"], f"{label}/{entry['relpath']}", remove, rehash)
                seen.add(entry["md5"])
                n += 1
        seen.add(md5)
    return n


def _fetch_objects(node, remote: str, commits: list) -> int:
    """DVC-fetch the objects of ``commits`` from ``remote`` and verify them; return files fetched."""
    from . import dvc

    try:
        n = dvc.fetch(node.path, remote, revs=[str(c.id) for c in commits])
    except IntegrityError:
        raise  # an object on the remote does not parse or hash right: that is the message
    except NodestoreError:
        # a failed download: name the object that is missing or bad, if we can
        for c in commits:
            verify_commit(node.path, node.git, c)
        raise
    seen: set = set()
    for c in commits:
        verify_commit(node.path, node.git, c, seen=seen)
    return n


# -- push -------------------------------------------------------------------

def _callbacks():
    """pygit2 callbacks: ssh keys from the ssh-agent; the remote's rejections of ref updates collected."""
    import getpass

    import pygit2

    class Callbacks(pygit2.RemoteCallbacks):
        def __init__(self):
            super().__init__()
            self.rejected = {}

        def credentials(self, url, username_from_url, allowed_types):
            if allowed_types & pygit2.enums.CredentialType.SSH_KEY:
                return pygit2.KeypairFromAgent(username_from_url or getpass.getuser())
            raise pygit2.Passthrough

        def push_update_reference(self, refname, message):
            if message:
                self.rejected[refname] = message

    return Callbacks()


def _push_refs(git_remote, specs: list[str]) -> dict:
    """Move the remote's refs (the last step of a push); {ref: rejection} for refused ones."""
    cb = _callbacks()
    git_remote.push(specs, callbacks=cb)
    return cb.rejected


def _dir_bytes(path: Path | None) -> int | None:
    if path is None:
        return None
    if not path.exists():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _remote_heads(node, url: str) -> dict[str, object]:
    """{refname: Oid} the remote advertises ({} for a repository not created yet)."""
    import pygit2

    local = _is_local_git(url)
    if local is not None and not (local / "HEAD").exists():
        return {}
    anon = node.git.remotes.create_anonymous(url)
    try:
        heads = anon.list_heads(callbacks=_callbacks())
    except pygit2.GitError as exc:
        raise NodestoreError(f"cannot reach {url}: {exc}") from None
    return {h.name: h.oid for h in heads if h.name and h.name != "HEAD"}


@locked
def push(node, remote: str = "origin", branch: str | None = None) -> dict:
    """Upload the objects the remote lacks, then move its branch (and tags) to ours."""
    import pygit2

    from . import dvc, git

    repo = node.git
    git_remote = _git_remote(node, remote)
    branch = branch or git.current_branch(repo)
    if branch is None:
        raise RevisionError("HEAD is detached: say which branch to push with --branch")
    if branch not in repo.branches.local:
        raise RevisionError(f"no branch {branch!r}")
    tip = repo.branches.local[branch].peel(pygit2.Commit)
    dvc_remote = remote if _dvc_url(node, remote) else None
    if dvc_remote is None:
        raise RevisionError(f"remote {remote!r} has no object storage (DVC remote); re-add it with --dvc-url")
    local_git = _is_local_git(git_remote.url)
    if local_git is not None and not (local_git / "HEAD").exists():
        with git.git_errors(f"create {local_git}"):
            pygit2.init_repository(str(local_git), bare=True, initial_head=branch)
    heads = _remote_heads(node, git_remote.url)

    ref = f"refs/heads/{branch}"
    theirs = heads.get(ref)
    if theirs is not None and theirs != tip.id:
        if theirs not in repo or not repo.descendant_of(tip.id, theirs):
            raise NodestoreError(f"push rejected: {remote}/{branch} has commits that {branch} lacks; "
                                 f"run `nodestore pull {remote}` first")

    # 1. objects: of every commit the remote does not hold yet (its refs are complete by construction)
    walker = repo.walk(tip.id, pygit2.enums.SortMode.TOPOLOGICAL)
    for oid in heads.values():
        if oid in repo:
            try:
                walker.hide(repo[oid].peel(pygit2.Commit).id)
            except (pygit2.GitError, ValueError):
                pass
    commits = list(walker)
    revs = [str(c.id) for c in commits]
    # every object sent is hashed first: a corrupted local object fails the push before any ref moves
    seen: set = set()
    for c in commits:
        verify_commit(node.path, repo, c, remove=False, seen=seen)
    local_objects = _local_path(_dvc_url(node, remote) or "")
    before = _dir_bytes(local_objects)
    objects = dvc.push(node.path, dvc_remote, revs=revs) if revs else 0
    # a local remote is checked object by object before any ref moves: what DVC skipped as "already
    # there" (a push killed mid-way can leave DVC believing so) is copied from the verified cache
    if local_objects is not None:
        objects += complete_local_remote(node, local_objects, commits)
    after = _dir_bytes(local_objects)

    # 2. refs: the branch, and the tags that point into its history and are new there
    specs = [f"{ref}:{ref}"] if theirs != tip.id else []
    tags_skipped = []
    for name, target in _tags_in_history(node, tip):
        tref = f"refs/tags/{name}"
        if tref not in heads:
            specs.append(f"{tref}:{tref}")
        elif heads[tref] != repo.references[tref].target:
            tags_skipped.append(name)
    rejected = {}
    if specs:
        with git.git_errors(f"push to {remote}"):
            rejected = _push_refs(git_remote, specs)
    if rejected:
        ref_, why = next(iter(rejected.items()))
        raise NodestoreError(f"{remote} refused {ref_}: {why}")
    repo.references.create(f"refs/remotes/{remote}/{branch}", tip.id, force=True)
    return {"remote": remote, "branch": branch, "commit": str(tip.id), "commits": len(revs),
            "objects": objects, "bytes": None if before is None else after - before,
            "refs": [s.split(":", 1)[1] for s in specs], "tags_skipped": tags_skipped}


def local_remote_objects(node, objects: Path, commits, verify: bool = False, repair=None):
    """Walk every object of ``commits`` on the local DVC remote at ``objects``, each once: the
    objects the commits name, then the entries of each ``.dir`` listing among them.  Yields
    ``(md5, label, path on the remote, problem, commit)``, where problem is ``None``,
    ``"missing"`` or ``"corrupted"``.  A listing is always checked against its hash (its entries
    are read from it); every other object only with ``verify``.  ``repair(md5, label, path)``,
    when given, is called for an object with a problem before its listing is read, and the walk
    goes on as if it had been there intact (what push does; fsck reports instead).  The one walk
    of push's ``complete_local_remote`` and of ``fsck --remote``."""
    import json

    from . import dvc

    base = objects / "files" / "md5"
    seen: set[str] = set()

    def problem_of(md5: str, path: Path):
        if not path.exists():
            return "missing"
        if (verify or md5.endswith(".dir")) and dvc.file_md5(path) != md5.removesuffix(".dir"):
            return "corrupted"
        return None

    def visit(md5: str, label: str):
        path = base / md5[:2] / md5[2:]
        problem = problem_of(md5, path)
        if problem and repair is not None:
            repair(md5, label, path)
            problem = None
        return path, problem

    for c in commits:
        for md5, label in commit_objects(node.path, node.git, c):
            if md5 in seen:
                continue
            seen.add(md5)
            path, problem = visit(md5, label)
            yield md5, label, path, problem, c
            if not md5.endswith(".dir") or problem is not None:
                continue
            for e in json.loads(path.read_text()):
                if e["md5"] in seen:
                    continue
                seen.add(e["md5"])
                sub = f"{label}/{e['relpath']}"
                epath, eproblem = visit(e["md5"], sub)
                yield e["md5"], sub, epath, eproblem, c


def complete_local_remote(node, objects: Path, commits) -> int:
    """Make sure the local DVC remote at ``objects`` holds every object of ``commits``: each one
    missing there, or a ``.dir`` listing whose content is not its hash, is copied from the local
    cache (verified already) through a temporary file and a rename.  Returns the objects copied."""
    import tempfile

    from . import dvc

    copied = 0

    def copy(md5: str, label: str, dst: Path) -> None:
        nonlocal copied
        src = dvc.cache_file(node.path, md5)
        if not src.exists():
            raise IntegrityError(f"object {md5} ({label}) is neither on the remote nor in the local cache; "
                                 "nothing was moved on the remote")
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        copied += 1

    for _ in local_remote_objects(node, objects, commits, repair=copy):
        pass
    return copied


def _tags_in_history(node, tip) -> list[tuple[str, str]]:
    import pygit2

    repo = node.git
    out = []
    for r in repo.references:
        if not r.startswith("refs/tags/"):
            continue
        try:
            target = repo.revparse_single(r).peel(pygit2.Commit).id
        except (pygit2.GitError, ValueError):
            continue
        if target == tip.id or repo.descendant_of(tip.id, target):
            out.append((r.removeprefix("refs/tags/"), str(target)))
    return sorted(out)


# -- fetch / pull -----------------------------------------------------------

def _fetch_git(node, remote: str, branch: str):
    """Take the remote branch's history into a staging ref; return (staging ref, commit)."""
    import pygit2

    from . import git

    url = _git_remote(node, remote).url
    heads = _remote_heads(node, url)
    if f"refs/heads/{branch}" not in heads:
        if not heads:
            raise RevisionError(f"remote {remote!r} ({url}) holds nothing yet: push to it first")
        raise RevisionError(f"remote {remote!r} has no branch {branch!r}")
    staging = f"{STAGING}/{remote}/{branch}"
    anon = node.git.remotes.create_anonymous(url)
    with git.git_errors(f"fetch {remote}/{branch}"):
        anon.fetch([f"+refs/heads/{branch}:{staging}", f"+refs/tags/*:{STAGING}-tags/{remote}/*"],
                   callbacks=_callbacks())
    return staging, node.git.references[staging].peel(pygit2.Commit)


def _land_tags(node, remote: str, tip) -> list[str]:
    """Create the fetched tags that point into ``tip``'s history and do not exist here."""
    import pygit2

    repo = node.git
    prefix = f"{STAGING}-tags/{remote}/"
    made = []
    for r in [r for r in repo.references if r.startswith(prefix)]:
        name = r.removeprefix(prefix)
        ref = repo.references[r]
        try:
            target = ref.peel(pygit2.Commit).id
        except (pygit2.GitError, ValueError):
            target = None
        if (target is not None and f"refs/tags/{name}" not in repo.references
                and (target == tip.id or repo.descendant_of(tip.id, target))):
            repo.references.create(f"refs/tags/{name}", ref.target)
            made.append(name)
        ref.delete()
    return made


def _drop_staging(node, remote: str) -> None:
    for r in [r for r in node.git.references if r.startswith((f"{STAGING}/{remote}/", f"{STAGING}-tags/{remote}/"))]:
        node.git.references.delete(r)


@locked
def fetch(node, remote: str = "origin", branch: str | None = None) -> dict:
    """Fetch ``remote``'s ``branch`` and the objects of its tip commit, verified, into refs/remotes."""
    from . import git

    branch = branch or git.current_branch(node.git) or "main"
    if not _dvc_url(node, remote):
        _git_remote(node, remote)
        raise RevisionError(f"remote {remote!r} has no object storage (DVC remote); re-add it with --dvc-url")
    try:
        staging, tip = _fetch_git(node, remote, branch)
        objects = _fetch_objects(node, remote, [tip])
        tags = _land_tags(node, remote, tip)
        node.git.references.create(f"refs/remotes/{remote}/{branch}", tip.id, force=True)
    finally:
        _drop_staging(node, remote)
    return {"remote": remote, "branch": branch, "commit": str(tip.id), "ref": f"{remote}/{branch}",
            "objects": objects, "tags": tags}


@locked
def pull(node, remote: str = "origin", branch: str | None = None, prefer: str | None = None) -> dict:
    """fetch, then fast-forward the current branch, or merge ``remote/branch`` into it."""
    import pygit2

    from . import dvc, git

    repo = node.git
    current = git.current_branch(repo)
    if current is None:
        raise RevisionError("HEAD is detached: check out a branch before pulling")
    st = node.status()
    if not st["clean"]:
        raise NodestoreError(f"the node has uncommitted changes ({', '.join(st['changed_files'])}); commit them first")
    branch = branch or current
    got = fetch(node, remote, branch)
    theirs = repo.get(got["commit"])
    head = git.head_commit(repo)
    out = {**got, "branch": current}
    if head.id == theirs.id or repo.descendant_of(head.id, theirs.id):
        return {**out, "result": "up to date"}
    if repo.descendant_of(theirs.id, head.id):
        with node.transaction(f"pull: fast-forward to {got['ref']}", worktree=True) as tx:
            tx.move_worktree(theirs, fast_forward=True)
        return {**out, "result": "fast-forward"}
    base = repo.merge_base(head.id, theirs.id)
    if base is not None:
        try:
            verify_commit(node.path, repo, repo[base], remove=True)
        except IntegrityError:
            _fetch_objects(node, remote, [repo[base]])
    merged = node.merge(got["ref"], prefer=prefer)
    return {**out, "result": "merged", "merge": merged}


# -- clone ------------------------------------------------------------------

BUNDLE_SUFFIXES = (".nsbundle", ".nsbundle.gz", ".nsbundle.tar", ".nsbundle.tgz")


def is_bundle(url) -> bool:
    return str(url).endswith(BUNDLE_SUFFIXES) and Path(url).is_file()


@classmethod
def clone(cls, url, path, branch: str | None = None):
    """A new node at ``path`` from a remote URL or a ``.nsbundle`` file; all or nothing."""
    import pygit2

    from . import dvc, git
    from .paths import NODE_YAML
    from .transaction import check_tree

    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValidationError(f"{path} exists and is not empty")
    if str(url).endswith(BUNDLE_SUFFIXES) and not Path(url).is_file():
        raise ValidationError(f"no bundle file {url}")
    if is_bundle(url):
        from .bundle import clone_bundle

        return clone_bundle(cls, Path(url), path, branch=branch)
    url = str(url)
    local = _local_path(url)
    if local is not None:
        url = str(local)
    git_url, dvc_url = split_url(url)
    if local is not None and not (local / GIT_DIR / "HEAD").exists():
        raise RevisionError(f"{url} holds no nodestore remote (no {GIT_DIR}): push to it first")
    created = not path.exists()
    try:
        with git.git_errors(f"clone {url}"):
            try:
                pygit2.clone_repository(git_url, str(path), checkout_branch=branch, callbacks=_callbacks())
            except pygit2.GitError as exc:
                if branch and "not found" in str(exc).lower():
                    raise RevisionError(f"remote {url} has no branch {branch!r}") from None
                raise
        node = cls(path)
        check_tree(node.git, git.head_commit(node.git))  # before anything is written through the tree
        if not (node.path / NODE_YAML).exists():
            raise ValidationError(f"{url} does not hold a nodestore node (no {NODE_YAML})")
        with node_lock(node.state_dir):
            node.git.config[f"remote.origin.{URL_KEY}"] = url
            dvc.set_remote(node.path, "origin", dvc_url, default=True)
            _fetch_objects(node, "origin", [git.head_commit(node.git)])
            dvc.checkout(node.path, force=True)
    except BaseException:
        discard(path, created)
        raise
    return node


def discard(path: Path, created: bool) -> None:
    """Undo a failed clone: remove what it made at ``path``."""
    if created:
        shutil.rmtree(path, ignore_errors=True)
    elif path.is_dir():
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink()
