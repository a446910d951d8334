"""Checkpoints in the node: content-addressed directories under models/.

To the repo layer a checkpoint is only a directory with a ``meta.json``;
what is inside is the models layer's business.  ``models/current.json`` names
the current checkpoint of each kind (forcefield, generator).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from nodestore.errors import NodestoreError, ValidationError

from .lock import node_lock


def checkpoint_hash(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def matches_its_id(directory: Path) -> bool:
    """Whether a checkpoint directory's files hash to the id in its name (``KIND-HASH16``); a name
    without a 16-character id is not checked."""
    want = Path(directory).name.rsplit("-", 1)[-1]
    return len(want) != 16 or checkpoint_hash(directory) == want


def read_checkpoints(models_dir: Path, verify: bool = False) -> list[dict]:
    """One dict per checkpoint directory of ``models_dir``; ``verify``: each also says in ``integrity``
    whether its files still hash to the id in its name ("ok", or what is wrong)."""
    models_dir = Path(models_dir)
    out = []
    current = {}
    cur_file = models_dir / "current.json"
    if cur_file.exists():
        current = json.loads(cur_file.read_text())
    if not models_dir.is_dir():
        return out
    for d in sorted(models_dir.iterdir()):
        meta = d / "meta.json"
        if d.is_dir() and not d.name.startswith(".") and meta.exists():
            try:
                m = json.loads(meta.read_text())
                if not isinstance(m, dict):
                    raise ValueError("not an object")
                problem = None
            except (OSError, ValueError) as exc:  # listed as damaged when verifying, else skipped
                if not verify:
                    continue
                m, problem = {}, f"meta.json unreadable ({type(exc).__name__})"
            kinds = [k for k, v in current.items() if v == d.name]
            out.append({
                "id": d.name,
                "kind": m.get("kind", ""),
                "backend": m.get("backend", ""),
                "architecture": m.get("architecture", ""),
                "hash": m.get("hash"),
                "parent": m.get("parent"),
                "training_frames": len(m.get("training_frames", []) or []),
                "metrics": m.get("metrics", {}),
                "energy_method": (m.get("reference_energies") or {}).get("method"),
                "current": kinds,
            })
            if verify:
                if problem is None and not matches_its_id(d):
                    problem = "its files do not hash to the id in its name"
                out[-1]["integrity"] = problem or "ok"
    # the parent as the id of its checkpoint in this node, where the node holds it
    by_hash = {r["hash"]: r["id"] for r in out if r["hash"]}
    for r in out:
        r["parent_id"] = by_hash.get(r["parent"])
    return out


def add_checkpoint(node, src: Path, kind: str, make_current: bool = True) -> str:
    """Copy checkpoint directory ``src`` into models/ under its content hash.

    Inside a transaction this is one of its writes; outside, a locked work-tree
    write that the next ``node.commit`` records.
    """
    from .transaction import _ACTIVE

    tx = _ACTIVE.get(str(node.path))
    if tx is not None:
        return tx.add_checkpoint(src, kind, make_current=make_current)
    with node_lock(node.state_dir):
        src = Path(src)
        if not (src / "meta.json").exists():
            raise ValidationError(f"{src} is not a checkpoint directory (no meta.json)")
        cid = f"{kind}-{checkpoint_hash(src)}"
        dest = node.path / "models" / cid
        if not dest.exists():
            tmp = dest.with_name(f".{cid}.tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            os.replace(tmp, dest)
        if make_current:
            _set_current(node, kind, cid)
        return cid


def set_current_model(node, kind: str, cid: str) -> None:
    from .transaction import _ACTIVE

    tx = _ACTIVE.get(str(node.path))
    if tx is not None:
        return tx.set_current_model(kind, cid)
    with node_lock(node.state_dir):
        _set_current(node, kind, cid)


def _set_current(node, kind: str, cid: str) -> None:
    models = node.path / "models"
    if not (models / cid / "meta.json").exists():
        raise NodestoreError(f"no checkpoint {cid!r} in {models}")
    cur = current_models(node)
    cur[kind] = cid
    tmp = models / ".current.json.tmp"
    tmp.write_text(json.dumps(cur, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, models / "current.json")


def current_models(node) -> dict:
    p = node.path / "models" / "current.json"
    return json.loads(p.read_text()) if p.exists() else {}


def list_checkpoints(node, rev: str | None = None, verify: bool = False) -> list[dict]:
    return read_checkpoints(node.models_at(rev), verify=verify)
