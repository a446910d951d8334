"""commit, log, status, show, diff."""

from __future__ import annotations

import datetime as _dt
import json

import numpy as np

from nodestore.config import parse_system, system_name
from nodestore.errors import NodestoreError

from .methods import is_prediction


def commit(node, message: str, allow_empty: bool = False) -> str:
    """Record the work tree (table, models, yaml files) as one commit."""
    if not message:
        raise NodestoreError("a commit needs a message (-m)")
    with node.transaction(message, require_change=not allow_empty, allow_empty=allow_empty) as tx:
        pass
    return tx.commit_id


def log(node, rev: str | None = None, limit: int | None = None) -> list[dict]:
    import pygit2

    from . import git

    start = git.resolve(node.git, rev)
    tags = _tags_by_commit(node)
    out = []
    walker = node.git.walk(start.id, pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.TIME)
    for c in walker:
        out.append({
            "commit": str(c.id),
            "parents": [str(p) for p in c.parent_ids],
            "author": c.author.name,
            "date": _dt.datetime.fromtimestamp(c.commit_time, _dt.timezone.utc).isoformat(),
            "message": c.message.strip(),
            "tags": tags.get(str(c.id), []),
        })
        if limit and len(out) >= limit:
            break
    return out


def _tags_by_commit(node) -> dict[str, list[str]]:
    import pygit2

    out: dict[str, list[str]] = {}
    for ref in node.git.references:
        if ref.startswith("refs/tags/"):
            target = node.git.revparse_single(ref).peel(pygit2.Commit)
            out.setdefault(str(target.id), []).append(ref.removeprefix("refs/tags/"))
    return out


def status(node) -> dict:
    """What the next commit would record, against HEAD."""
    from . import git

    head = git.head_commit(node.git)
    table = node.table
    out = {"branch": git.current_branch(node.git), "commit": str(head.id) if head else None,
           "changed_files": [], "frames_added": 0, "frames_removed": 0, "clean": True}
    committed = None
    if head is not None:
        try:
            committed = node.table_at("HEAD")
        except NodestoreError:
            committed = None
    if committed is not None and committed.manifest != table.manifest:
        a, b = set(committed.row_keys().tolist()), set(table.row_keys().tolist())
        out["frames_added"], out["frames_removed"] = len(b - a), len(a - b)
        out["changed_files"].append("data/table")
    models_md5 = node.artifact_md5(head, "models") if head is not None else None
    if models_md5 is not None and _dir_changed(node, models_md5, node.path / "models"):
        out["changed_files"].append("models")
    out["changed_files"] += [p for p in git.is_dirty(node.git) if not p.endswith(".dvc")]
    out["clean"] = not out["changed_files"]
    return out


def _dir_changed(node, dir_md5: str, path) -> bool:
    from . import dvc

    try:
        listing = {e["relpath"]: e["md5"] for e in dvc.dir_listing(node.path, dir_md5)}
    except NodestoreError:
        return True
    files = {p.relative_to(path).as_posix(): p for p in path.rglob("*") if p.is_file()}
    if set(files) != set(listing):
        return True
    return any(dvc.file_md5(p) != listing[rel] for rel, p in files.items())


def summary(node, table, models_dir) -> dict:
    energy = table.column("energy")
    method = table.column("method")
    labelled = np.isfinite(energy) & np.array([not is_prediction(m) and m != "" for m in method], dtype=bool)
    entries = table.column("is_entry")
    methods: dict[str, int] = {}
    for m, ok in zip(method, np.isfinite(energy)):
        if ok:
            methods[m] = methods.get(m, 0) + 1
    from .models_store import read_checkpoints

    return {
        "frames": len(table),
        "unique_configurations": len(set(table.column("frame_id").tolist())),
        "entries": int(entries.sum()),
        "labelled": int(labelled.sum()),
        "methods": methods,
        "segments": len(table.segment_ids),
        "models": [{"id": r["id"], "kind": r["kind"], "backend": r["backend"],
                    "architecture": (r["architecture"] or {}).get("name") if isinstance(r["architecture"], dict)
                    else r["architecture"], "parent": r["parent_id"] or r["parent"],
                    "training_frames": r["training_frames"], "current": r["current"]}
                   for r in read_checkpoints(models_dir)],
    }


def show(node, rev: str | None = None) -> dict:
    """A summary of the node at ``rev`` (HEAD's commit with the work tree's data by default)."""
    from . import git

    commit = git.resolve(node.git, rev or "HEAD")
    table = node.table_at(rev)
    models_dir = node.models_at(rev)
    cfg = node.config if rev is None else node.config_at(commit)
    out = {
        "system": system_name(parse_system(cfg["system"])),
        "node_id": cfg["node_id"],
        "reference_method": cfg["reference_method"],
        "commit": str(commit.id),
        "branch": git.current_branch(node.git) if rev is None else None,
        "message": commit.message.strip(),
    }
    out.update(summary(node, table, models_dir))
    metrics = _loop_metrics(node, rev)
    out["iterations"] = len(metrics)
    out["sun"] = {str(k): v.get("sun") for k, v in sorted(metrics.items())}
    out["lineage"] = cfg.get("lineage", [])
    return out


def _loop_metrics(node, rev) -> dict[int, dict]:
    """Per-iteration metrics the loop committed (loop/iter-K/metrics.json in git)."""
    from . import git

    out = {}
    if rev is None:
        base = node.path / "loop"
        if base.is_dir():
            for d in base.glob("iter-*/metrics.json"):
                try:
                    out[int(d.parent.name.split("-")[1])] = json.loads(d.read_text())
                except (ValueError, json.JSONDecodeError):
                    continue
        return out
    commit = git.resolve(node.git, rev)
    try:
        loop_tree = commit.tree["loop"]
    except KeyError:
        return out
    for entry in node.git[loop_tree.id]:
        if entry.name.startswith("iter-"):
            blob = git.read_blob(node.git, commit, f"loop/{entry.name}/metrics.json")
            if blob:
                try:
                    out[int(entry.name.split("-")[1])] = json.loads(blob)
                except (ValueError, json.JSONDecodeError):
                    continue
    return out


def diff(node, rev_a: str, rev_b: str | None = None) -> dict:
    """Frames added/removed and models changed between two revisions (b: work tree if None)."""
    ta, tb = node.table_at(rev_a), node.table_at(rev_b)
    ka, kb = set(ta.row_keys().tolist()), set(tb.row_keys().tolist())
    from .models_store import read_checkpoints

    ma = {c["id"]: c for c in read_checkpoints(node.models_at(rev_a))}
    mb = {c["id"]: c for c in read_checkpoints(node.models_at(rev_b))}
    ca, cb = _current(node.models_at(rev_a)), _current(node.models_at(rev_b))
    return {
        "a": rev_a,
        "b": rev_b or "work tree",
        "frames_added": len(kb - ka),
        "frames_removed": len(ka - kb),
        "segments_added": sorted(set(tb.segment_ids) - set(ta.segment_ids)),
        "segments_removed": sorted(set(ta.segment_ids) - set(tb.segment_ids)),
        "models_added": sorted(set(mb) - set(ma)),
        "models_removed": sorted(set(ma) - set(mb)),
        "current_models_changed": {k: [ca.get(k), cb.get(k)] for k in set(ca) | set(cb) if ca.get(k) != cb.get(k)},
    }


def _current(models_dir) -> dict:
    from .paths import CURRENT_MODELS

    p = models_dir / CURRENT_MODELS
    return json.loads(p.read_text()) if p.exists() else {}
