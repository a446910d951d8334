"""Checkpoint directories: a few weight/state files plus ``meta.json``.

The checkpoint's hash is a content hash of every file except ``meta.json``
(the weights and state), so a child checkpoint can name its parent and two
checkpoints with the same weights have the same hash.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path

from nodestore.errors import BackendError, IntegrityError
from nodestore.schemas_util import load_document, validate

META = "meta.json"
FORMAT_VERSION = 1

# keys of meta.json, named once
K_FORMAT = "format_version"
K_KIND = "kind"
K_BACKEND = "backend"
K_ARCH = "architecture"
K_HASH = "hash"
K_PARENT = "parent"
K_FRAMES = "training_frames"
K_METRICS = "metrics"
K_CREATED = "created"
K_EXTRA = "extra"
K_REFS = "reference_energies"
K_FILES = "files"


def hash_files(directory: Path) -> tuple[str, dict[str, str]]:
    """(tree hash, {relative path: SHA-256}) of a checkpoint directory's files, meta.json excluded.

    Each file is read once; the tree hash is the content hash of every file with its path, the
    per-file digests say which file differs when the tree hash does not match.
    """
    directory = Path(directory)
    h = hashlib.sha256()
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != META):
        rel = path.relative_to(directory).as_posix()
        one = hashlib.sha256()
        h.update(rel.encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
                one.update(block)
        h.update(b"\0")
        files[rel] = one.hexdigest()
    return h.hexdigest()[:32], files


def tree_hash(directory: Path) -> str:
    """Content hash of the files of a checkpoint directory, meta.json excluded."""
    return hash_files(directory)[0]


def verify(directory: Path, meta: dict) -> None:
    """Raise IntegrityError (naming the checkpoint and its damaged files) when the directory's files
    do not hash to meta.json's ``hash``."""
    directory = Path(directory)
    found, files = hash_files(directory)
    if found == meta[K_HASH]:
        return
    recorded = meta.get(K_FILES)
    if recorded:
        names = sorted(n for n in set(files) | set(recorded) if files.get(n) != recorded.get(n))
        what = ", ".join(f"{n} ({'missing' if n not in files else 'not recorded' if n not in recorded else 'changed'})"
                         for n in names)
    else:  # a checkpoint written before per-file digests were recorded: any of its files
        what = "one of " + ", ".join(sorted(files)) if files else "its files (none left)"
    raise IntegrityError(f"checkpoint {directory} is corrupted: {what} does not match the hash in {META} "
                         f"({meta[K_HASH]}); restore it with `nodestore checkout --force HEAD` or "
                         f"`nodestore fsck --repair --remote NAME`")


def load_weights(path: Path) -> dict:
    """A checkpoint's state dict, read with ``torch.load(weights_only=True)``.

    A file that is not a weights-only state dict (a pickled object, a truncated or garbled
    archive) raises IntegrityError naming it: nothing in it is unpickled.
    """
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise IntegrityError(f"checkpoint {path.parent} is missing its weights file {path.name}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, AttributeError,
            ImportError, TypeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise IntegrityError(f"checkpoint {path.parent}: {path.name} is not a weights-only state dict "
                             f"({type(exc).__name__}: {reason}); it was not loaded") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise IntegrityError(f"checkpoint {path.parent}: {path.name} holds a {type(state).__name__}, "
                             f"not a state dict; it was not loaded")
    return state


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_meta(directory: Path, *, kind: str, backend: str, architecture: dict,
               parent: str | None, training_frames: list[str] | None = None,
               metrics: dict | None = None, extra: dict | None = None,
               reference_energies: dict | None = None) -> dict:
    """Hash the directory's files and write a validated meta.json; return it."""
    directory = Path(directory)
    digest, files = hash_files(directory)
    doc = {
        K_FORMAT: FORMAT_VERSION,
        K_KIND: kind,
        K_BACKEND: backend,
        K_ARCH: architecture,
        K_HASH: digest,
        K_FILES: files,
        K_PARENT: parent,
        K_FRAMES: list(training_frames or []),
        K_METRICS: _jsonable(metrics or {}),
        K_CREATED: now(),
        K_EXTRA: _jsonable(extra or {}),
    }
    if reference_energies:
        doc[K_REFS] = _jsonable(reference_energies)
    validate(doc, "checkpoint", where=str(directory / META))
    tmp = directory / (META + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    tmp.replace(directory / META)
    return doc


def read_meta(directory, kind: str | None = None, backend: str | None = None) -> dict:
    """Read and validate meta.json; raise BackendError when kind/backend differ."""
    directory = Path(directory)
    path = directory / META
    if not path.is_file():
        raise BackendError(f"{directory}: not a checkpoint directory (no {META})")
    doc = load_document(path, "checkpoint")
    if kind is not None and doc[K_KIND] != kind:
        raise BackendError(f"{directory}: a {doc[K_KIND]} checkpoint, not a {kind} checkpoint")
    if backend is not None and doc[K_BACKEND] != backend:
        raise BackendError(
            f"{directory}: checkpoint of backend {doc[K_BACKEND]!r} "
            f"(architecture {doc[K_ARCH].get('name')!r}) cannot be loaded by backend {backend!r}")
    return doc


def _jsonable(obj):
    """Plain JSON types only (numpy scalars and arrays become floats and lists)."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and obj != obj:
        return None
    return obj
