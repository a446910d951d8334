"""``nodestore merge``: by content and structural equivalence, not by file.

Frames: the union of both sides by row key (frame hash @ method); a row on both
sides with equal labels is kept once; the same row with different labels is a
conflict.  Labels of different methods are different rows and are both kept.
Entries (curated structures): the same crystal on both sides (StructureMatcher)
becomes one entry, the lower-energy frame its representative.  Checkpoints:
the union; the current checkpoint of a kind changed on both sides is a conflict.

Everything is decided before anything is written.  A conflict without a policy
raises MergeConflict and leaves the node exactly as it was.  The node's files
are then changed, and HEAD moves once, at the end, to a commit with two parents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nodestore.errors import MergeConflict, NodestoreError, SchemaError

from .lock import node_lock
from .methods import merge_methods
from .results import MergeResult

POLICIES = (None, "ours", "theirs")


@dataclass
class Plan:
    new_segments: list = field(default_factory=list)  # [(id, rows, atoms)] of theirs_table
    theirs_table: object = None
    deletions: list = field(default_factory=list)  # "segid:rowkey"
    conflicts: list = field(default_factory=list)
    same_rows: int = 0
    annotations: dict = field(default_factory=dict)  # rowkey -> {col: value}
    models_to_copy: list = field(default_factory=list)
    current_models: dict = field(default_factory=dict)
    system: list = field(default_factory=list)
    entry_links: int = 0
    methods: dict = field(default_factory=dict)  # node.yaml's methods of the result


def _labels_equal(a, b, ia: int, ib: int) -> bool:
    """Same energy, stress and forces (NaN equal to NaN)."""
    def eq(x, y):
        return np.array_equal(x, y, equal_nan=True)

    if not eq(a["energy"][ia], b["energy"][ib]) or not eq(a["stress"][ia], b["stress"][ib]):
        return False
    fa = a["forces"][a.offsets[ia]:a.offsets[ia + 1]]
    fb = b["forces"][b.offsets[ib]:b.offsets[ib + 1]]
    return eq(fa, fb)


def merge(node, rev: str, prefer: str | None = None, allow_extend: bool = False,
          message: str | None = None) -> MergeResult:
    """Merge branch/commit ``rev`` into the current branch: planned under the lock, written as one transaction."""
    with node_lock(node.state_dir):
        return _merge(node, rev, prefer, allow_extend, message)


def _merge(node, rev, prefer, allow_extend, message) -> MergeResult:
    import pygit2

    from . import git
    from .transaction import recover

    recover(node)

    if prefer not in POLICIES:
        raise NodestoreError(f"--prefer must be 'ours' or 'theirs', not {prefer!r}")
    repo = node.git
    ours = git.resolve(repo, "HEAD")
    theirs = git.resolve(repo, rev)
    st = node.status()
    if not st["clean"]:
        raise NodestoreError(f"commit or discard your changes before merging ({', '.join(st['changed_files'])})")
    if ours.id == theirs.id or repo.descendant_of(ours.id, theirs.id):
        return MergeResult(result="up-to-date", commit=str(ours.id))
    _check_schema(node, theirs)
    try:
        base_oid = repo.merge_base(ours.id, theirs.id)
    except pygit2.GitError:
        base_oid = None
    if base_oid is not None and base_oid == ours.id:
        # fast-forward: the work tree moves to theirs, then the branch ref (or HEAD)
        with node.transaction(message or f"merge {rev}", worktree=True) as tx:
            tx.move_worktree(theirs, fast_forward=True)
        return MergeResult(result="fast-forward", commit=str(theirs.id))

    plan = _plan(node, ours, theirs, base_oid, rev, prefer, allow_extend)
    if plan.conflicts and prefer is None:
        raise MergeConflict(_report(plan.conflicts, rev), plan.conflicts)
    return _apply(node, plan, ours, theirs, rev, message)


def _check_schema(node, theirs) -> None:
    from . import git

    other = node.config_at(theirs)
    if not other:
        raise SchemaError("the other side has no node.yaml: not a nodestore node")
    mine = node.config
    if other.get("schema_version") != mine["schema_version"]:
        raise SchemaError(
            f"cannot merge across schema versions: ours is {mine['schema_version']}, "
            f"theirs is {other.get('schema_version')}; upgrade the older node first"
        )
    tman = git.read_blob(node.git, theirs, "data/table.dvc")
    if tman is None:
        raise SchemaError("the other side records no structure table")


def _plan(node, ours, theirs, base_oid, rev, prefer, allow_extend) -> Plan:
    from nodestore.config import parse_system

    plan = Plan()
    mine_cfg, their_cfg = node.config, node.config_at(theirs)
    mine_sys, their_sys = set(node.system), set(parse_system(their_cfg["system"]))
    if not their_sys <= mine_sys:
        if not (mine_sys < their_sys or allow_extend):
            raise NodestoreError(
                f"{rev} is a {'-'.join(sorted(their_sys))} node and this is {'-'.join(sorted(mine_sys))}: "
                "merge with --allow-extend to make the union system"
            )
    plan.system = sorted(mine_sys | their_sys)
    plan.methods, clashes = merge_methods(mine_cfg.get("methods"), their_cfg.get("methods"))
    if clashes:  # energies of one name computed two ways cannot share a hull: no policy picks a side
        raise MergeConflict(_report(clashes, rev), clashes)
    if their_cfg.get("reference_method") != mine_cfg.get("reference_method"):
        plan.conflicts.append({"kind": "reference_method", "ours": mine_cfg.get("reference_method"),
                               "theirs": their_cfg.get("reference_method")})

    t_ours = node.table
    t_theirs = node.table_at(str(theirs.id))
    our_keys = t_ours.row_keys()
    key_row = {k: i for i, k in enumerate(our_keys.tolist())}
    our_segs = set(t_ours.segment_ids)
    for s in t_theirs.manifest["segments"]:
        if s["id"] in our_segs:
            continue
        seg = t_theirs.segment(s["id"])
        keys = [f"{f}@{m}" for f, m in zip(seg.frame_column("frame_id"), seg.frame_column("method"))]
        clash = [(j, key_row[k]) for j, k in enumerate(keys) if k in key_row]
        if clash:
            tb = seg.read_all()
            ob = t_ours.read([i for _, i in clash], columns=["energy", "stress", "forces", "frame_id", "method"])
            for n, (j, i) in enumerate(clash):
                k = keys[j]
                if _labels_equal(ob, tb, n, j):
                    plan.same_rows += 1
                    plan.deletions.append(f"{s['id']}:{k}")
                    continue
                plan.conflicts.append({"kind": "label", "row": k, "ours_energy": _f(ob["energy"][n]),
                                       "theirs_energy": _f(tb["energy"][j])})
                if prefer == "theirs":
                    plan.deletions.append(f"{t_ours.segment_of(i)}:{k}")
                else:
                    plan.deletions.append(f"{s['id']}:{k}")
        plan.new_segments.append((s["id"], s["rows"], s["atoms"]))
    plan.theirs_table = t_theirs

    # mutable columns (annotations) of theirs, for rows they have
    over_t, _ = t_theirs.overlay()
    over_o, _ = t_ours.overlay()
    for k, row in over_t.items():
        mine = over_o.get(k, {})
        take = {c: v for c, v in row.items() if c not in mine or prefer == "theirs"}
        if take:
            plan.annotations[k] = take

    _plan_entries(node, plan, t_ours, t_theirs)
    _plan_models(node, plan, ours, theirs, base_oid, prefer)
    return plan


def _f(x):
    x = float(x)
    return None if not np.isfinite(x) else x


def _plan_entries(node, plan: Plan, t_ours, t_theirs) -> None:
    """Entries found on both sides as the same crystal become one entry."""
    ie_o = np.nonzero(t_ours.column("is_entry"))[0]
    ie_t = np.nonzero(t_theirs.column("is_entry"))[0]
    if not len(ie_o) or not len(ie_t):
        return
    bo, bt = t_ours.read(ie_o), t_theirs.read(ie_t)
    so, stt = bo.to_structures(), bt.to_structures()
    ours_ids = set(bo["frame_id"].tolist())
    match = {k: float(v) for k, v in (node.params.get("match") or {}).items() if k in ("ltol", "stol", "angle_tol")}
    for j, i in match_pairs(stt, so, match):
        if bt["frame_id"][j] == bo["frame_id"][i]:
            continue  # the same frame: one row already
        if bt["frame_id"][j] in ours_ids:
            continue
        e_o = bo["energy"][i] / bo["n_atoms"][i]
        e_t = bt["energy"][j] / bt["n_atoms"][j]
        same_method = bo["method"][i] == bt["method"][j]
        theirs_wins = same_method and np.isfinite(e_t) and (not np.isfinite(e_o) or e_t < e_o)
        rep, dup = (bt, bo) if theirs_wins else (bo, bt)
        ri, di = (j, i) if theirs_wins else (i, j)
        rep_key = f"{rep['frame_id'][ri]}@{rep['method'][ri]}"
        dup_key = f"{dup['frame_id'][di]}@{dup['method'][di]}"
        plan.annotations.setdefault(rep_key, {}).update({"is_entry": True, "duplicate_of": ""})
        plan.annotations.setdefault(dup_key, {}).update({"is_entry": False, "duplicate_of": rep["frame_id"][ri]})
        plan.entry_links += 1


def match_pairs(new, known, params: dict | None = None) -> list[tuple[int, int]]:
    """(i, j): new[i] is the same crystal as known[j], the first such j (exact StructureMatcher verdicts)."""
    from nodestore.chem.matcher import Matcher

    hits = Matcher(**(params or {})).match(new, known)
    return [(i, int(j)) for i, j in enumerate(hits) if j >= 0]


def _plan_models(node, plan: Plan, ours, theirs, base_oid, prefer) -> None:
    mo = node.models_at(str(ours.id))
    mt = node.models_at(str(theirs.id))
    cur_o = _read_current(mo)
    cur_t = _read_current(mt)
    cur_b = _read_current(node.models_at(str(base_oid))) if base_oid is not None else {}
    merged = dict(cur_o)
    for kind in set(cur_o) | set(cur_t):
        o, t, b = cur_o.get(kind), cur_t.get(kind), cur_b.get(kind)
        if o == t or t == b or t is None:
            continue
        if o == b or o is None:
            merged[kind] = t
            continue
        plan.conflicts.append({"kind": "checkpoint", "model": kind, "ours": o, "theirs": t})
        if prefer == "theirs":
            merged[kind] = t
    plan.current_models = merged
    for d in sorted(mt.iterdir()) if mt.is_dir() else []:
        if d.is_dir() and not (node.path / "models" / d.name).exists():
            plan.models_to_copy.append(d)


def _read_current(models_dir: Path) -> dict:
    p = Path(models_dir) / "current.json"
    return json.loads(p.read_text()) if p.exists() else {}


def _report(conflicts: list, rev: str) -> str:
    lines = [f"merge of {rev} stopped: {len(conflicts)} conflict(s); the node is unchanged."]
    for c in conflicts[:10]:
        if c["kind"] == "label":
            lines.append(f"  label conflict on {c['row']}: ours E={c['ours_energy']} theirs E={c['theirs_energy']}")
        elif c["kind"] == "checkpoint":
            lines.append(f"  checkpoint conflict on {c['model']}: ours {c['ours']} theirs {c['theirs']}")
        elif c["kind"] == "method":
            lines.append(f"  method {c['method']!r} stands for other settings on each side: "
                         f"{'; '.join(c['differences'])}")
        else:
            lines.append(f"  {c['kind']} conflict: ours {c['ours']} theirs {c['theirs']}")
    if len(conflicts) > 10:
        lines.append(f"  ... and {len(conflicts) - 10} more")
    if any(c["kind"] == "method" for c in conflicts):
        lines.append("  energies of one method name computed two ways cannot share a hull: relabel one side "
                     "under its own method name, then merge")
    else:
        lines.append("  resolve with --prefer ours or --prefer theirs")
    return "\n".join(lines)


def _apply(node, plan: Plan, ours, theirs, rev: str, message: str | None) -> MergeResult:
    from .init import now
    from .paths import MERGES_JSON

    record = {
        "merged": rev, "theirs": str(theirs.id), "segments_from_theirs": [s[0] for s in plan.new_segments],
        "rows_from_theirs": int(sum(s[1] for s in plan.new_segments)) - len(plan.deletions),
        "rows_on_both_sides": plan.same_rows, "conflicts_resolved": len(plan.conflicts),
        "entries_linked": plan.entry_links,
    }
    merges = node.path / MERGES_JSON
    history = json.loads(merges.read_text()) if merges.exists() else []
    cfg = node.config
    cfg["system"] = plan.system
    if plan.methods:
        cfg["methods"] = plan.methods
    cfg["lineage"] = [*cfg.get("lineage", []), {
        "event": "merge", "date": now(), "source": rev, "parent_commit": str(theirs.id),
        "parent_node": node.config_at(theirs).get("node_id", ""),
    }]
    msg = message or f"merge {rev}: +{record['rows_from_theirs']} rows, {plan.same_rows} on both sides"
    with node.transaction(msg, parents=[ours.id, theirs.id]) as tx:
        if plan.new_segments:
            tx.adopt(plan.theirs_table, ids=[s[0] for s in plan.new_segments])
        if plan.annotations or plan.deletions:
            tx.update_rows(plan.annotations, delete=plan.deletions)
        for d in plan.models_to_copy:
            tx.copy_checkpoint(d)
        tx.set_current_models(plan.current_models)
        tx.write_config(cfg)
        tx.write_text(MERGES_JSON, json.dumps([*history, record], indent=1) + "\n")
    return MergeResult(result="merged", commit=tx.commit_id, **record)
