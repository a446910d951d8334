"""Bundles: a node's history and every object it names, in one tar file (``*.nsbundle``).

Layout, the same as a local nodestore remote plus a manifest::

    manifest.json                  format, version, system, node_id, branch, commit, objects {md5: size}
    node.git/...                   a bare git repository: one branch (and the tags in its history)
    objects/files/md5/xx/yyyy      the DVC objects of every commit of that history

Reading a bundle trusts nothing in it: members must be plain files or
directories under those three names (no absolute paths, no ``..``, no links,
no devices), only JSON is parsed, and every object is hashed against its name
before it enters the node's cache.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from nodestore.errors import IntegrityError, ValidationError

from .remote import GIT_DIR, OBJECTS_DIR

FORMAT = "nodestore-bundle"
VERSION = 1
MANIFEST = "manifest.json"
TOP_LEVEL = {MANIFEST, GIT_DIR, OBJECTS_DIR}
OBJECT_PREFIX = f"{OBJECTS_DIR}/files/md5/"


def history_objects(node, commits) -> dict[str, int]:
    """{md5: size} of every object (directory listings and their files) the commits name."""
    from . import dvc
    from .remote import commit_objects

    out: dict[str, int] = {}
    for c in commits:
        for md5, label in commit_objects(node.path, node.git, c):
            if md5 in out:
                continue
            f = dvc.cache_file(node.path, md5)
            if not f.exists():
                raise IntegrityError(f"object {md5} ({label}) of commit {str(c.id)[:10]} is not in the local cache: "
                                     "fetch it (`nodestore fetch`) before making a bundle")
            out[md5] = f.stat().st_size
            if md5.endswith(".dir"):
                for entry in dvc.dir_listing(node.path, md5):
                    e = dvc.cache_file(node.path, entry["md5"])
                    if not e.exists():
                        raise IntegrityError(f"object {entry['md5']} ({label}/{entry['relpath']}) is not in the "
                                             "local cache: fetch it before making a bundle")
                    out[entry["md5"]] = e.stat().st_size
    return out


def export_bundle(node, path, rev: str | None = None, compress: bool | None = None) -> dict:
    """Write the history up to ``rev`` (HEAD) and all its objects to the bundle file ``path``."""
    import pygit2

    from . import dvc, git
    from .init import now
    from .remote import _tags_in_history

    path = Path(path)
    repo = node.git
    tip = git.resolve(repo, rev)
    if rev is not None and rev in repo.branches.local:
        branch = rev
    else:
        branch = git.current_branch(repo) if rev is None else None
        branch = branch or git.MAIN
    commits = list(repo.walk(tip.id, pygit2.enums.SortMode.TOPOLOGICAL))
    objects = history_objects(node, commits)
    tags = _tags_in_history(node, tip)
    compress = path.name.endswith((".gz", ".tgz")) if compress is None else compress

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".nsbundle-", dir=path.parent) as tmp:
        bare = Path(tmp) / GIT_DIR
        with git.git_errors("bundle"):
            pygit2.init_repository(str(bare), bare=True, initial_head=branch)
            pack = pygit2.PackBuilder(repo)
            for c in commits:
                pack.add_recur(c.id)
            for name, _ in tags:
                target = repo.references[f"refs/tags/{name}"].target
                if target not in (c.id for c in commits):
                    pack.add(target)  # an annotated tag object
            pack.write(str(bare / "objects" / "pack"))
            dest = pygit2.Repository(str(bare))
            dest.references.create(f"refs/heads/{branch}", tip.id)
            for name, _ in tags:
                dest.references.create(f"refs/tags/{name}", repo.references[f"refs/tags/{name}"].target)
        manifest = {
            "format": FORMAT, "version": VERSION, "created": now(),
            "system": node.name, "node_id": node.config["node_id"],
            "branch": branch, "commit": str(tip.id), "commits": len(commits),
            "tags": [t for t, _ in tags], "objects": dict(sorted(objects.items())),
        }
        part = path.with_name(path.name + f".part{os.getpid()}")
        try:
            with tarfile.open(part, "w:gz" if compress else "w", format=tarfile.PAX_FORMAT) as tar:
                data = json.dumps(manifest, indent=1).encode()
                _add_bytes(tar, MANIFEST, data)
                for f in sorted(bare.rglob("*")):
                    if f.is_file():
                        _add_file(tar, f"{GIT_DIR}/{f.relative_to(bare).as_posix()}", f)
                for md5 in sorted(objects):
                    _add_file(tar, f"{OBJECT_PREFIX}{md5[:2]}/{md5[2:]}", dvc.cache_file(node.path, md5))
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)
    return {"path": str(path), "branch": branch, "commit": str(tip.id), "commits": len(commits),
            "objects": len(objects), "bytes": path.stat().st_size}


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.type = size, 0o644, tarfile.REGTYPE
    return info


def _add_bytes(tar, name: str, data: bytes) -> None:
    tar.addfile(_info(name, len(data)), io.BytesIO(data))


def _add_file(tar, name: str, src: Path) -> None:
    with open(src, "rb") as fh:
        tar.addfile(_info(name, os.fstat(fh.fileno()).st_size), fh)


# -- reading a bundle --------------------------------------------------------

def safe_extract(bundle: Path, dest: Path) -> dict:
    """Extract ``bundle`` into ``dest`` refusing anything but plain files and directories inside it."""
    dest = Path(dest).resolve()
    try:
        tar = tarfile.open(bundle, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise ValidationError(f"{bundle} is not a nodestore bundle ({exc})") from None
    with tar:
        try:
            for m in tar:
                target = _member_target(bundle, m, dest)
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                with open(target, "xb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        except (tarfile.TarError, EOFError, FileExistsError) as exc:
            raise ValidationError(f"{bundle} is damaged ({type(exc).__name__}: {exc})") from None
    mpath = dest / MANIFEST
    if not mpath.is_file():
        raise ValidationError(f"{bundle} is not a nodestore bundle (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValidationError(f"{bundle}: {MANIFEST} is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValidationError(f"{bundle} is not a nodestore bundle ({MANIFEST} does not say format {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise ValidationError(f"{bundle}: bundle version {manifest.get('version')!r} is not supported (want {VERSION})")
    return manifest


def _member_target(bundle: Path, m: tarfile.TarInfo, dest: Path) -> Path:
    name = m.name
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or name.startswith(("/", "\\")) or "\\" in name or ".." in pure.parts:
        raise ValidationError(f"{bundle}: refusing member {name!r} (absolute path or '..' escapes the bundle)")
    if m.issym() or m.islnk():
        raise ValidationError(f"{bundle}: refusing member {name!r} (a link)")
    if not (m.isfile() or m.isdir()):
        raise ValidationError(f"{bundle}: refusing member {name!r} (not a plain file or directory)")
    parts = [p for p in pure.parts if p != "."]
    if not parts or parts[0] not in TOP_LEVEL:
        raise ValidationError(f"{bundle}: unexpected member {name!r}")
    target = dest.joinpath(*parts)
    if os.path.commonpath([dest, target.resolve()]) != str(dest):
        raise ValidationError(f"{bundle}: refusing member {name!r} (leaves the bundle directory)")
    return target


def _bundle_objects(root: Path) -> dict[str, Path]:
    """{md5: file} of the extracted objects, each checked against its name."""
    from . import dvc

    base = root / OBJECTS_DIR / "files" / "md5"
    out = {}
    if not base.is_dir():
        return out
    for f in base.rglob("*"):
        if not f.is_file():
            continue
        rel = f.relative_to(base).parts
        md5 = rel[0] + rel[1] if len(rel) == 2 else ""
        if len(rel) != 2 or len(rel[0]) != 2 or dvc.file_md5(f) != md5.removesuffix(".dir"):
            raise IntegrityError(f"bundle object {'/'.join(rel)} is corrupted (hash mismatch)")
        out[md5] = f
    return out


def clone_bundle(cls, bundle: Path, path: Path, branch: str | None = None):
    """A new node at ``path`` from a bundle: the whole history and all objects, verified, offline."""
    import pygit2

    from . import dvc, git
    from .lock import node_lock
    from .paths import NODE_YAML
    from .remote import discard, verify_commit
    from .transaction import check_tree

    created = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".nsbundle-", dir=path.parent))
    try:
        manifest = safe_extract(bundle, tmp)
        objects = _bundle_objects(tmp)
        missing = sorted(set(manifest.get("objects") or {}) - set(objects))
        if missing:
            raise IntegrityError(f"bundle object {missing[0]} is missing")
        with git.git_errors(f"clone {bundle}"):
            try:
                repo = pygit2.clone_repository(str(tmp / GIT_DIR), str(path), checkout_branch=branch)
            except pygit2.GitError as exc:
                if branch:
                    raise ValidationError(f"bundle {bundle} has no branch {branch!r}") from None
                raise exc
            repo.remotes.delete("origin")  # it named the temporary extraction
            for ref in list(repo.references):
                if ref.startswith("refs/remotes/"):
                    repo.references.delete(ref)
        node = cls(path)
        check_tree(node.git, git.head_commit(node.git))  # before anything is written through the tree
        if not (node.path / NODE_YAML).exists():
            raise ValidationError(f"{bundle} does not hold a nodestore node (no {NODE_YAML})")
        with node_lock(node.state_dir):
            for md5, f in objects.items():
                target = dvc.cache_file(node.path, md5)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(f, target)
            seen: set = set()
            for c in node.git.walk(git.head_commit(node.git).id):
                # every file was hashed against its name above: here only completeness
                verify_commit(node.path, node.git, c, remove=True, seen=seen, rehash=False)
            dvc.checkout(node.path, force=True)
    except BaseException:
        discard(path, created)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return node
