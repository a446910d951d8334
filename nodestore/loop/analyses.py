"""The node's store of analysis results: one JSON file per analysis under ``analyses/``.

Every result is keyed by the frame id of the structure it is about, and records the force-field
checkpoint and the hash of the settings it was computed with::

    {"version": 1, "results": {frame_id: {"checkpoint", "settings", "settings_doc", "result"}}}

A result of the same settings and another checkpoint is *stale*: the current force field would
give another answer.  The file is written through the node's transaction, one commit per chunk
of structures, so a killed analysis keeps what it finished, and it can be read at any commit.
Analyses (``stability``, ``transport``, ``electronic``) share this module; ``columns`` turns their results into
per-row columns for ``query``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

VERSION = 1


def path_of(name: str) -> str:
    """The node-relative path of analysis ``name``'s results."""
    return f"analyses/{name}.json"


def read(node, name: str, rev: str | None = None) -> dict:
    """The stored results of analysis ``name`` (``{frame id: record}``), at ``rev`` (default: the
    work tree)."""
    rel = path_of(name)
    if rev is None:
        p = node.path / rel
        text = p.read_text() if p.is_file() else None
    else:
        from nodestore.repo import git

        commit = git.resolve(node.git, rev)
        try:
            text = node.git[commit.tree[rel].id].data.decode()
        except KeyError:
            text = None
    if not text:
        return {}
    doc = json.loads(text)
    return doc.get("results", {}) if isinstance(doc, dict) else {}


@dataclass(frozen=True)
class Plan:
    """What a run must compute: indices into the ids (``todo``), the stale ids, and how many
    results are reused."""

    todo: tuple
    stale: tuple
    cached: int


def plan(store: dict, ids, settings_key: str, checkpoint: str, keep_stale: bool = False) -> Plan:
    """The structures without a result of these settings and this checkpoint (a stale one is
    reused when ``keep_stale``)."""
    stale = tuple(i for i in ids if i in store and store[i]["settings"] == settings_key
                  and store[i]["checkpoint"] != checkpoint)
    stale_set = set(stale)
    todo = tuple(k for k, i in enumerate(ids)
                 if i not in store or store[i]["settings"] != settings_key or (i in stale_set and not keep_stale))
    return Plan(todo=todo, stale=stale, cached=len(ids) - len(todo))


def current_checkpoint(node, rev: str | None = None) -> str:
    """The current force-field checkpoint id at ``rev`` ("" when there is none)."""
    from nodestore.errors import NotANodeError
    from nodestore.repo.paths import CURRENT_MODELS

    if rev is None:
        return node.current_models().get("forcefield") or ""
    try:
        doc = json.loads((node.models_at(rev) / CURRENT_MODELS).read_text())
    except (OSError, ValueError, NotANodeError):  # a commit before any model
        return ""
    return (doc.get("forcefield") if isinstance(doc, dict) else "") or ""


def is_stale(recorded: str, current: str) -> bool:
    """Whether a result of checkpoint ``recorded`` is stale under the ``current`` one (results of
    the params.yaml force field, ``params:...``, are current while the node has no checkpoint)."""
    return recorded.startswith("params:") != (current == "") or (current != "" and recorded != current)


def select(node, table, max_e_hull: float, frames: tuple = ()):
    """(frame ids, Atoms without a calculator) an analysis is about: the frames named by id or
    unique prefix when ``frames`` is given, else the node's reference phases and its entries within
    ``max_e_hull`` of the hull of the reference method; one row per frame id, in table order."""
    from nodestore.errors import ValidationError

    ids_all = table.column("frame_id").astype(str)
    if frames:
        rows = []
        for f in frames:
            hit = np.nonzero(np.char.startswith(ids_all, f))[0] if f else []
            if len(hit) == 0:
                raise ValidationError(f"no frame {f!r} in the node")
            if len({ids_all[r] for r in hit}) > 1:
                raise ValidationError(f"frame prefix {f!r} is ambiguous")
            rows.append(int(hit[0]))
        rows = np.array(rows, dtype=np.int64)
    else:
        method = node.config["reference_method"]
        m = (table.column("method") == method) & np.isfinite(table.column("energy"))
        refs = m & (table.column("origin") == "reference")
        near = m & table.column("is_entry") & (table.column("e_hull") <= max_e_hull)
        rows = np.nonzero(refs | near)[0]
        _, first = np.unique(ids_all[rows], return_index=True)
        rows = rows[np.sort(first)]
    images = table.to_atoms(rows)
    for a in images:
        a.calc = None
    return [str(ids_all[r]) for r in rows], images


def write(node, name: str, store: dict, message: str) -> str | None:
    """Write the results through one transaction; the commit id (None when nothing changed)."""
    with node.transaction(message) as tx:
        tx.write_json(path_of(name), {"version": VERSION, "results": store})
    return tx.commit_id


def columns(node, table, rev: str | None = None) -> dict[str, np.ndarray]:
    """Per-row query columns from the stored analyses at ``rev``: each frame's value on every row
    of that frame id, NaN where there is none.  A stale result is included (it is what the node
    holds); ``*_stale`` columns say which."""
    from . import electronic, stability, transport

    per_frame: dict[str, dict[str, float]] = {}
    for fn in (stability.frame_columns, transport.frame_columns, electronic.frame_columns):
        for name, values in fn(node, rev).items():
            per_frame.setdefault(name, {}).update(values)
    if not per_frame:
        return {}
    ids = table.column("frame_id").astype(str)
    out = {}
    for name, values in per_frame.items():
        col = np.full(len(ids), np.nan)
        if values:
            keys = np.array(list(values), dtype=str)
            order = np.argsort(keys)
            sorted_keys = keys[order]
            pos = np.searchsorted(sorted_keys, ids)
            pos = np.clip(pos, 0, len(sorted_keys) - 1)
            hit = sorted_keys[pos] == ids
            vals = np.array([values[k] for k in sorted_keys], dtype=float)
            col[hit] = vals[pos[hit]]
        out[name] = col
    return out
