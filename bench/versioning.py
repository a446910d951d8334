"""Versioning benchmark: branch, checkout, merge and push on a node of >= 50,000 frames.

Builds a node of N frames (default 50,000: perturbed copies of the 200 real Li27P12S44 AIMD
frames, 83 atoms each, written as N/10,000 commits of one segment each), then measures in one run:

* ``branch`` and ``checkout`` between two branches (and back to an older tag);
* ``merge`` of two branches that each added 10,000 frames, against the alternative of merging by
  re-importing the frames of both branches into a fresh node (read + dedup + write + commit);
* ``push`` to a local remote: the whole node first, then one new iteration of 1,000 frames,
  whose bytes sent are compared with the bytes of those frames (the new segment file and the raw
  frame arrays): only the new segment should travel.

    python bench/versioning.py             # N = 50,000 (about 3-4 minutes on 2 cores)
    python bench/versioning.py --n 20000   # quicker
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("GIT_AUTHOR_NAME", "nodestore-bench")
os.environ.setdefault("GIT_AUTHOR_EMAIL", "bench@nodestore.invalid")

from store import du, make_frames, timed  # noqa: E402

from nodestore.frames import FrameBatch  # noqa: E402

CHUNK = 10_000


def batch(n: int, seed: int) -> FrameBatch:
    return FrameBatch.from_atoms(make_frames(n, np.random.default_rng(seed)), method="vasp-pbe")


def add_commit(node, b: FrameBatch, message: str) -> str:
    """Append one batch as a new segment and commit it (what an import or a loop iteration does)."""
    node.table.append(b)
    return node.commit(message)


def raw_bytes(b: FrameBatch) -> int:
    return sum(a.nbytes for a in b.columns.values() if a.dtype != object)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000, help="frames of the base node")
    ap.add_argument("--branch-frames", type=int, default=10_000, help="frames each branch adds")
    ap.add_argument("--iteration-frames", type=int, default=1_000, help="frames of the pushed iteration")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    from nodestore.loop import create_node
    from nodestore.repo import Node

    work = Path(args.workdir or tempfile.mkdtemp(prefix="nodestore-vbench-"))
    work.mkdir(parents=True, exist_ok=True)
    for d in ("node", "fresh", "remote"):
        shutil.rmtree(work / d, ignore_errors=True)
    t_total = time.perf_counter()

    # --- the base node: N frames in commits of 10,000 -------------------------
    print(f"building a node of {args.n} frames of 83 atoms ...", flush=True)
    node = create_node("Li-P-S", work / "node")
    t_build = 0.0
    for k, start in enumerate(range(0, args.n, CHUNK)):
        b = batch(min(CHUNK, args.n - start), seed=100 + k)
        dt, _ = timed(lambda: add_commit(node, b, f"frames {start}..{start + len(b)}"))
        t_build += dt
    node.tag("base")
    size = du(node.path / "data/table") / 1e6
    print(f"  {len(node.table)} frames in {len(node.log()) - 1} commits; table {size:.0f} MB; "
          f"writing + committing took {t_build:.1f} s", flush=True)

    # --- branch and checkout ---------------------------------------------------
    t_branch_a, _ = timed(lambda: node.branch("low-T"))
    node.branch("high-T")
    a_frames, b_frames = batch(args.branch_frames, 1), batch(args.branch_frames, 2)
    t_co1, _ = timed(lambda: node.checkout("low-T"))
    add_commit(node, a_frames, f"low-T: {args.branch_frames} frames")
    t_co2, _ = timed(lambda: node.checkout("high-T"))
    add_commit(node, b_frames, f"high-T: {args.branch_frames} frames")
    t_co3, _ = timed(lambda: node.checkout("low-T"))
    t_co_base, _ = timed(lambda: node.checkout("base"))
    node.checkout("low-T")
    print(f"\nbranch: {t_branch_a * 1e3:.0f} ms")
    print(f"checkout to a new branch at the same commit: {t_co1:.2f} s")
    print(f"checkout between branches that differ by {args.branch_frames} frames each: "
          f"{t_co2:.2f} s, {t_co3:.2f} s (table of {len(node.table)} frames)")
    print(f"checkout of the older tag 'base' ({args.n} frames): {t_co_base:.2f} s")

    # --- merge vs re-import ------------------------------------------------------
    if hasattr(Node, "merge"):
        t_merge, r = timed(lambda: node.merge("high-T", message="merge high-T"))
        print(f"\nmerge of two branches that each added {args.branch_frames} frames: {t_merge:.2f} s "
              f"({r.get('result')}, {r.get('rows_from_theirs')} rows from theirs) -> {len(node.table)} frames")
    else:
        t_merge = None
        print("\nmerge: Node.merge is not available in this tree; not measured")

    def reimport():
        fresh = create_node("Li-P-S", work / "fresh")
        ta, tb = node.table_at("low-T"), node.table_at("high-T")
        for t in (ta, tb):  # all frames of both branches, deduplicated on the way in
            fresh.table.append(t.read())
        fresh.commit("union of low-T and high-T by re-import")
        return fresh

    t_re, fresh = timed(reimport)
    print(f"merge by re-importing both branches' frames into a fresh node: {t_re:.2f} s -> {len(fresh.table)} frames"
          + (f"; merge is {t_re / t_merge:.1f}x faster" if t_merge else ""))

    # --- push: the whole node, then one iteration ---------------------------------
    node.remote_add("origin", str(work / "remote"))
    t_push_all, full = timed(lambda: node.push())
    print(f"\npush of the whole node ({full['commits']} commits): {full['objects']} objects, "
          f"{full['bytes'] / 1e6:.1f} MB in {t_push_all:.1f} s")
    it = batch(args.iteration_frames, 3)
    before = set(node.table.segment_ids)
    add_commit(node, it, f"iteration: {args.iteration_frames} frames")
    new_seg = [s for s in node.table.segment_ids if s not in before]
    seg_bytes = sum(f.stat().st_size for f in node.table.files() if any(s in str(f) for s in new_seg))
    t_push_it, inc = timed(lambda: node.push())
    raw = raw_bytes(it)
    print(f"push of one iteration of {args.iteration_frames} frames: {inc['objects']} objects, {inc['bytes']} bytes "
          f"in {t_push_it:.2f} s")
    print(f"  = {inc['bytes'] / seg_bytes:.3f}x the new segment file ({seg_bytes} bytes), "
          f"{inc['bytes'] / raw:.3f}x the raw frame arrays ({raw} bytes), "
          f"{inc['bytes'] / full['bytes']:.4f}x the whole node")
    print(f"\ntotal {time.perf_counter() - t_total:.0f} s; work dir {work}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
