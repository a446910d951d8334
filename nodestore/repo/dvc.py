"""DVC's Python API, in process, for the node's large artifacts.

The structure table (``data/table``) and the checkpoints (``models``) are each
one DVC-tracked directory.  DVC's cache is content-addressed (md5 of each file
plus a ``.dir`` listing), so a commit that adds one segment adds one object.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from nodestore.errors import IntegrityError, NodestoreError

from .transaction import atomic_write

TRACKED = ("data/table", "models")

os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def _quiet():
    for name in ("dvc", "dvc_data", "dvc_objects", "scmrepo"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextmanager
def dvc_errors(what: str):
    from dvc.exceptions import DvcException
    from dvc_objects.errors import ObjectFormatError

    try:
        yield
    except ObjectFormatError as exc:  # an object that does not parse or hash right: exit 7
        raise IntegrityError(f"{what}: {str(exc).strip() or type(exc).__name__}") from None
    except DvcException as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NodestoreError(f"{what}: {msg}") from None


@contextmanager
def _silenced():
    """DVC prints hints meant for its own CLI (``git add ...``); ours are not those."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def repair_rwlock(path: Path, dry_run: bool = False) -> bool:
    """Remove DVC's ``.dvc/tmp/rwlock`` when it is not valid JSON; True if it was removed
    (``dry_run``: True if it is broken, and left as it is).

    DVC rewrites that file in place (under its ``rwlock.lock`` guard): a process killed while
    writing it leaves it truncated, and every later DVC command then fails with "Unable to read
    RWLock-file ... JSON structure is corrupted".  Checked under the same guard, so no DVC process
    is writing it; entries of dead processes in a readable file DVC removes itself."""
    import json

    tmp = Path(path) / ".dvc" / "tmp"
    f = tmp / "rwlock"
    if not f.is_file():
        return False
    from dvc.lock import make_lock

    with make_lock(str(tmp / "rwlock.lock"), tmp_dir=str(tmp)):
        try:
            json.loads(f.read_text() or "x")
            return False
        except (ValueError, UnicodeDecodeError):
            if not dry_run:
                f.unlink()
            return True


def _lock_stages(text: str, path: str) -> dict:
    """The stage entries of a dvc.lock text, validated against DVC's own lock-file schema."""
    from dvc.schema import COMPILED_LOCKFILE_SCHEMA
    from dvc.utils.serialize import parse_yaml

    doc = parse_yaml(text, path)
    if not isinstance(doc, dict):
        raise ValueError("not a mapping")
    return dict(COMPILED_LOCKFILE_SCHEMA(doc).get("stages") or {})


def lockfile_damage(path: Path, committed: str | None) -> str | None:
    """Why the work tree's ``dvc.lock`` is damaged, or None if it is not.

    DVC rewrites ``dvc.lock`` in place after each stage it runs (its ``modify_yaml`` opens the
    file for writing and dumps the whole document), so a ``dvc repro`` killed in that moment
    leaves a prefix of it: one that does not parse or fails DVC's schema (and every later
    ``dvc repro`` then stops with "dvc.lock validation failed"), or, cut between two entries, one
    that parses but has lost the entries of stages after the cut.  The second kind is caught by
    ``committed``, the text of the last commit's ``dvc.lock``: DVC only ever adds or updates
    entries, so an entry of a committed stage that is gone was cut off (and DVC would run that
    stage again, an iteration already committed)."""
    f = Path(path) / "dvc.lock"
    if not f.is_file():
        return None
    try:
        stages = _lock_stages(f.read_text(), str(f))
    except Exception as exc:  # noqa: BLE001 - YAML, schema and decoding errors alike
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"it does not parse as DVC's lock file ({detail})"
    if committed:
        try:
            before = _lock_stages(committed, "dvc.lock")
        except Exception:  # noqa: BLE001 - a committed lock file DVC cannot read: not ours to judge
            return None
        lost = [name for name in before if name not in stages]
        if lost:
            return (f"it has lost the entries of {len(lost)} committed stage(s) ({', '.join(lost[:3])}"
                    f"{', ...' if len(lost) > 3 else ''}): a prefix of it was written")
    return None


@contextmanager
def dvc_repo_lock(path: Path):
    """DVC's own repository lock (``.dvc/tmp/lock``), which ``dvc repro`` holds while it runs and
    writes ``dvc.lock``; raises :class:`~nodestore.errors.LockedError` if a DVC process holds it."""
    from dvc.lock import LockError, make_lock

    from nodestore.errors import LockedError

    tmp = Path(path) / ".dvc" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    lock = make_lock(str(tmp / "lock"), tmp_dir=str(tmp))
    try:
        lock.lock()
    except LockError:
        raise LockedError("a DVC process (dvc repro?) holds the node's DVC lock; try again when it ends") from None
    try:
        yield
    finally:
        lock.unlock()


def restore_lockfile(path: Path, committed: str | None) -> None:
    """Put the last commit's ``dvc.lock`` back (atomically), or remove a damaged one the last commit
    did not have.  The stages of the iteration in progress then run again on the next ``dvc repro``;
    the committed ones are not touched."""
    f = Path(path) / "dvc.lock"
    if committed is None:
        f.unlink(missing_ok=True)
        return
    atomic_write(f, committed)


@contextmanager
def open_dvc(path: Path):
    from dvc.repo import Repo

    _quiet()
    with dvc_errors("dvc"):
        repair_rwlock(path)
        repo = Repo(str(path))
    try:
        with _silenced():
            yield repo
    finally:
        repo.close()


def init(path: Path) -> None:
    from dvc.repo import Repo

    _quiet()
    with dvc_errors("dvc init"), _silenced():
        repo = Repo.init(str(path))
        with repo.config.edit("repo") as conf:
            conf["core"]["analytics"] = False
            conf["core"]["autostage"] = False
        repo.close()


def add(path: Path, targets=TRACKED) -> None:
    with open_dvc(path) as repo, dvc_errors("dvc add"):
        repo.add([str(Path(path) / t) for t in targets if (Path(path) / t).exists()])


def checkout(path: Path, force: bool = True) -> None:
    with open_dvc(path) as repo, dvc_errors("dvc checkout"):
        try:
            repo.checkout(force=force)
        except Exception as exc:  # CheckoutError lists missing objects
            from dvc.exceptions import CheckoutError

            if isinstance(exc, CheckoutError):
                raise IntegrityError(
                    "artifacts of this revision are not in the local cache: "
                    "run `nodestore pull` (or `nodestore fetch`) first"
                ) from None
            raise


def set_remote(path: Path, name: str, url: str, default: bool = False) -> None:
    with open_dvc(path) as repo, dvc_errors("dvc remote"):
        with repo.config.edit("local") as conf:
            conf.setdefault("remote", {})[name] = {"url": url}
            if default:
                conf.setdefault("core", {})["remote"] = name


def push(path: Path, remote: str, revs: list[str] | None = None) -> int:
    with open_dvc(path) as repo, dvc_errors("dvc push"):
        return repo.push(remote=remote, revs=revs, workspace=not revs)


def fetch(path: Path, remote: str, revs: list[str] | None = None) -> int:
    with open_dvc(path) as repo, dvc_errors("dvc fetch"):
        try:
            return repo.fetch(remote=remote, revs=revs, workspace=not revs)
        except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
            # DVC reads the .dir listings it downloads: a corrupted one fails as a parse error
            raise IntegrityError(f"an object on remote {remote!r} is corrupted ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:80] if str(exc) else ''}); repair the remote "
                                 "with `nodestore push` from an intact node") from None


# -- the cache, read directly (content-addressed: safe to read by hash) ------

def cache_dir(path: Path) -> Path:
    return Path(path) / ".dvc" / "cache" / "files" / "md5"


def cache_file(path: Path, md5: str) -> Path:
    return cache_dir(path) / md5[:2] / md5[2:]


def dvcfile_md5(text: str) -> tuple[str, int, int] | None:
    """(md5, size, nfiles) of the single out of a .dvc file's text."""
    import yaml

    doc = yaml.safe_load(text) or {}
    outs = doc.get("outs") or []
    if not outs:
        return None
    out = outs[0]
    return out.get("md5"), out.get("size", 0), out.get("nfiles", 0)


def dir_listing(path: Path, dir_md5: str) -> list[dict]:
    """The files of a tracked directory version: [{"md5", "relpath"}]."""
    f = cache_file(path, dir_md5)
    if not f.exists():
        raise IntegrityError(f"object {dir_md5} is not in the local cache: run `nodestore pull`")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError:
        raise IntegrityError(f"object {dir_md5} in the cache is corrupted") from None


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_objects(path: Path, dir_md5: str, listing: list[dict] | None = None) -> None:
    """Check that every object of a directory version is present and hashes to its name."""
    top = cache_file(path, dir_md5)
    if not top.exists():
        raise IntegrityError(f"object {dir_md5}.dir is missing from the cache")
    if file_md5(top) != dir_md5.removesuffix(".dir"):
        raise IntegrityError(f"object {dir_md5} is corrupted (hash mismatch)")
    for entry in listing if listing is not None else dir_listing(path, dir_md5):
        f = cache_file(path, entry["md5"])
        if not f.exists():
            raise IntegrityError(f"object {entry['md5']} ({entry['relpath']}) is missing")
        if file_md5(f) != entry["md5"]:
            raise IntegrityError(f"object {entry['md5']} ({entry['relpath']}) is corrupted (hash mismatch)")


def materialize(path: Path, dir_md5: str, dest: Path) -> Path:
    """Make ``dest`` a read-only view of a directory version, hard-linking cache files."""
    dest = Path(dest)
    if (dest / ".complete").exists():
        return dest
    listing = dir_listing(path, dir_md5)
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for entry in listing:
        src = cache_file(path, entry["md5"])
        if not src.exists():
            raise IntegrityError(f"object {entry['md5']} ({entry['relpath']}) is not in the local cache: run `nodestore pull`")
        target = tmp / entry["relpath"]
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, target)
        except OSError:
            shutil.copy2(src, target)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / ".complete").write_text(dir_md5)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest
