"""The loop at scale: one full iteration of N candidates on a node of M frames.

The models are cheap stand-ins behind the same protocols, so that what is measured is nodestore's
own machinery (tables, matching, hulls, entropy, selection, commits), not a model:

- generator ``random`` (AIRSS-style random structures, ~600 cells/s);
- force field ``pair`` (classical Morse pairs in torch, batched; UnitCellFilter relaxations of
  ``--steps`` steps);
- labeller ``lj`` (ASE's Lennard-Jones run by the labeller's worker process, as a DFT code is).

The node (built once, cached under ``--workdir``) holds the reference phases labelled with LJ, a
tenth of its frames as LJ-labelled training frames and the rest as the relaxed candidates of
earlier iterations.  Each size N then runs on a fresh copy of that node: ``nodestore iterate``,
every stage as ``nodestore stage NAME 1`` in its own process (wall time and peak RSS from
``wait4``), ``nodestore commit`` and ``nodestore push`` to a local remote (bytes the remote
gained, against the size of the iteration's new segment).  The selection labels N/100 structures.
Model time (the stand-ins' own evaluations) is measured inside the stages and subtracted; the
growth exponent of each stage is fitted to its non-model time over the sizes run.

    python bench/loop_scale.py                    # N = 1,000, 3,000, 10,000 on 100,000 frames
    python bench/loop_scale.py --quick            # N = 1,000 on 20,000 frames (a few minutes)
    python bench/loop_scale.py --scheduler local:2  # screen and label on a 2-worker Dask LocalCluster
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LJ = "lj-s2-e0.05"
STAGES = ("generate", "screen", "select", "label", "train", "curate")


def params_for(n: int, steps: int) -> dict:
    from nodestore.config import default_params

    p = default_params()
    p["generate"] = {"n": n, "max_atoms": 16}
    p["generator"] = {"backend": "random", "max_atoms": 16}
    p["forcefield"] = {"backend": "pair", "finetune": {"epochs": 2, "max_seconds": 60, "batch_size": 16}}
    p["labeller"] = {"backend": "lj"}
    p["screen"] = {"fmax": 0.1, "steps": steps, "relax_cell": True, "cell_filter": "unit"}
    n_label = max(4, n // 100)
    p["select"] = {"n_lowest": n_label // 2, "n_diverse": n_label // 4, "n_uncertain": n_label - n_label // 2 - n_label // 4,
                   "uncertain_max_e_hull": 0.3, "max_atoms": 16}
    p["executor"] = {"backend": "local", "processes": 2}
    return p


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def build_node(path: Path, frames: int, seed: int = 0) -> None:
    """The base node: references labelled with LJ, then ``frames`` frames of history."""
    from ase.calculators.lj import LennardJones
    from ase.calculators.singlepoint import SinglePointCalculator

    from nodestore.frames import FrameBatch
    from nodestore.loop import create_node
    from nodestore.loop.actions import label_references
    from nodestore.loop.demo import reference_files
    from nodestore.models.registry import create

    t0 = time.perf_counter()
    node = create_node("Li-P-S", path, reference_method=LJ, params=params_for(1000, 20))
    node.import_files(reference_files(), origin="reference", message="reference phases")
    label_references(node)
    gen = create("generator", "random", elements=["Li", "P", "S"], max_atoms=16, seed=seed + 1)
    ff = create("forcefield", "pair")
    lj = LennardJones(sigma=2.0, epsilon=0.05, rc=5.0)
    rng = np.random.default_rng(seed)
    n_lab = frames // 10
    block = 10_000
    done = 0
    while done < frames:
        k = min(block, frames - done)
        images = gen.sample(k, conditions={"max_atoms": 16})
        lab = max(0, min(k, n_lab - done))
        for a in images[:lab]:  # LJ-labelled training frames (what a labeller's history holds)
            a.calc = lj
            e, f, s = a.get_potential_energy(), a.get_forces(), a.get_stress()
            a.calc = SinglePointCalculator(a, energy=e, forces=f, stress=s)
        for a, r in zip(images[lab:], ff.predict(images[lab:])):
            a.calc = SinglePointCalculator(a, energy=r["energy"], forces=r["forces"], stress=r["stress"])
        with node.transaction(f"history: frames {done}-{done + k}") as tx:
            if lab:
                tx.append(FrameBatch.from_atoms(images[:lab], method=LJ, origin="imported", iteration=0), dedup=False)
            if k > lab:
                rest = FrameBatch.from_atoms(images[lab:], method="ff:pair-morse-pairs", origin="relaxed",
                                             iteration=0, source="history")
                m = len(rest)
                rest = rest.with_columns(e_hull=rng.uniform(0.0, 0.6, m), e_form=rng.uniform(-0.5, 0.0, m),
                                         is_entry=np.ones(m, dtype=bool), novelty=np.array(["novel"] * m, dtype=object))
                tx.append(rest, dedup=False)
        done += k
        print(f"  base node: {done}/{frames} frames ({time.perf_counter() - t0:.0f} s)", flush=True)


def _warm_part(args) -> int:
    from nodestore.chem.matcher import Matcher, PreparedCache
    from nodestore.frames import FrameTable

    table_path, folder, rows = args
    table = FrameTable.open(table_path)
    ids = table.column("frame_id")[rows].astype(str).tolist()
    cache = PreparedCache(folder)
    cache.prepare(Matcher(), ids, lambda pos: table.structures(rows[pos]))
    return len(rows)


def warm_cache(path: Path, processes: int = 2) -> float:
    """Reduce the base node's entries for the matcher once (what curating them would have left
    in the node's cache); returns the seconds it took."""
    from concurrent.futures import ProcessPoolExecutor

    from nodestore.loop.stages import prepared_cache
    from nodestore.repo import Node

    t0 = time.perf_counter()
    node = Node.open(path)
    table = node.table
    rows = np.nonzero(table.column("is_entry") | (table.column("origin") == "reference"))[0]
    parts = [(table.path, prepared_cache(node), chunk) for chunk in np.array_split(rows, max(1, len(rows) // 5000))]
    with ProcessPoolExecutor(processes) as pool:
        done = 0
        for n in pool.map(_warm_part, parts):
            done += n
            print(f"  matcher cache: {done}/{len(rows)} entries ({time.perf_counter() - t0:.0f} s)", flush=True)
    return time.perf_counter() - t0


def run_child(node: Path, *args, env=None) -> dict:
    """Run ``nodestore -C node ARGS`` in a child: wall seconds and its peak RSS (``wait4``)."""
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "nodestore", "-C", str(node), *args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "2", **(env or {})})
    err = p.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(f"nodestore {' '.join(args)} failed ({p.returncode}):\n{err[-3000:]}")
    return {"seconds": wall, "peak_mb": usage.ru_maxrss / 1024}


def model_seconds(node: Path, stage: str) -> float:
    """Seconds the stand-in models spent inside a stage (what the stage recorded)."""
    d = node / "loop" / "iter-1"
    t = json.loads((d / "timings" / f"{stage}.json").read_text())
    return float(t.get("model_seconds") or 0.0)


def one_size(base: Path, work: Path, n: int, steps: int, scheduler: str | None) -> dict:
    import yaml

    node = work / f"node-{n}"
    shutil.rmtree(node, ignore_errors=True)
    shutil.copytree(base, node, symlinks=True)
    params = yaml.safe_load((node / "params.yaml").read_text())
    p = params_for(n, steps)
    for key in ("generate", "screen", "select"):
        params[key] = p[key]
    text = yaml.safe_dump(params, sort_keys=False)
    if text != (node / "params.yaml").read_text():
        (node / "params.yaml").write_text(text)
        run_child(node, "commit", "-m", f"bench: {n} candidates")
    run_child(node, "iterate")
    env = {"NODESTORE_SCHEDULER": scheduler} if scheduler else {}
    rows = {}
    for stage in STAGES:
        r = run_child(node, "stage", stage, "1", env=env)
        r["model_seconds"] = model_seconds(node, stage)
        rows[stage] = r
        print(f"  N={n:>6} {stage:<9} {r['seconds']:8.1f} s  model {r['model_seconds']:7.1f} s  "
              f"peak {r['peak_mb']:7.0f} MB", flush=True)
    seg_bytes = du(node / "loop" / "iter-1" / "curated")
    rows["commit"] = run_child(node, "commit")
    remote = work / f"remote-{n}"
    shutil.rmtree(remote, ignore_errors=True)
    run_child(node, "remote", "add", "origin", str(remote))
    # the remote first holds the node as it was before the iteration (a clone's state) ...
    subprocess.run(["git", "-C", str(node), "branch", "-f", "bench-before", "HEAD~1"], check=True,
                   capture_output=True)
    run_child(node, "push", "origin", "--branch", "bench-before")
    before = du(remote)
    # ... then the push of the iteration sends what is new
    rows["push"] = run_child(node, "push", "origin")
    rows["push"]["bytes_sent"] = du(remote) - before
    rows["push"]["new_segment_bytes"] = seg_bytes
    for stage in ("commit", "push"):
        r = rows[stage]
        r["model_seconds"] = 0.0
        print(f"  N={n:>6} {stage:<9} {r['seconds']:8.1f} s  peak {r['peak_mb']:7.0f} MB"
              + (f"  sent {r['bytes_sent'] / 1e6:.2f} MB (new segment {seg_bytes / 1e6:.2f} MB)" if stage == "push" else ""),
              flush=True)
    metrics = json.loads((node / "loop" / "iter-1" / "metrics.json").read_text())
    return {"n": n, "stages": rows, "labelled": metrics.get("labelled"), "screened": metrics.get("screened")}


def exponents(results: list[dict]) -> dict:
    """Least-squares slope of log(non-model seconds) against log N, per stage."""
    if len(results) < 2:
        return {}
    ns_ = np.log([r["n"] for r in results])
    out = {}
    for stage in results[0]["stages"]:
        t = np.array([max(1e-3, r["stages"][stage]["seconds"] - r["stages"][stage]["model_seconds"]) for r in results])
        out[stage] = float(np.polyfit(ns_, np.log(t), 1)[0])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000])
    ap.add_argument("--node-frames", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=20, help="force-field relaxation steps per candidate")
    ap.add_argument("--quick", action="store_true", help="N = 1,000 on a node of 20,000 frames")
    ap.add_argument("--scheduler", default=None,
                    help="a Dask scheduler address, or local:K for a LocalCluster of K workers started here")
    ap.add_argument("--workdir", default=os.environ.get("TMPDIR", "/tmp") + "/nodestore-loop-scale")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    a = ap.parse_args(argv)
    if a.quick:
        a.sizes, a.node_frames = [1000], min(a.node_frames, 20_000)
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    base = work / f"base-{a.node_frames}"
    if not (base / ".bench-complete").exists():
        shutil.rmtree(base, ignore_errors=True)
        print(f"building the base node of {a.node_frames} frames in {base} ...", flush=True)
        t = time.perf_counter()
        build_node(base, a.node_frames)
        (base / ".git" / "info" / "exclude").open("a").write(".bench-complete\n")
        (base / ".bench-complete").write_text(f"{time.perf_counter() - t:.1f}\n")
    if not (base / ".bench-warm").exists():
        print("reducing the base node's entries for the matcher once (a curated node has them cached) ...", flush=True)
        seconds = warm_cache(base)
        (base / ".git" / "info" / "exclude").open("a").write(".bench-warm\n")
        (base / ".bench-warm").write_text(f"{seconds:.1f}\n")
    warm_seconds = float((base / ".bench-warm").read_text())
    cluster = None
    scheduler = a.scheduler
    if scheduler and scheduler.startswith("local:"):
        from distributed import LocalCluster

        cluster = LocalCluster(n_workers=int(scheduler.split(":")[1]), threads_per_worker=1, processes=True)
        scheduler = cluster.scheduler_address
    results = []
    try:
        for n in a.sizes:
            results.append(one_size(base, work, n, a.steps, scheduler))
    finally:
        if cluster is not None:
            cluster.close()
    exp = exponents(results)
    print(f"\nloop at scale: node of {a.node_frames} frames, sizes {a.sizes}, {a.steps} relaxation steps"
          + (f", scheduler {a.scheduler}" if a.scheduler else ""))
    print(f"(once per node, not per iteration: reducing its entries for the matcher took {warm_seconds:.0f} s on 2 processes)")
    head = f"{'stage':<9}" + "".join(f" | N={r['n']:>6}: wall s, non-model s, peak MB" for r in results) + " | exponent"
    print(head)
    for stage in results[0]["stages"]:
        cells = "".join(f" | {r['stages'][stage]['seconds']:>15.1f} {r['stages'][stage]['seconds'] - r['stages'][stage]['model_seconds']:>11.1f} "
                        f"{r['stages'][stage]['peak_mb']:>7.0f}" for r in results)
        e = exp.get(stage)
        print(f"{stage:<9}{cells} | " + (f"{e:.2f}" if e is not None else "-"))
    for r in results:
        push = r["stages"]["push"]
        print(f"N={r['n']}: push sent {push['bytes_sent'] / 1e6:.2f} MB for a new segment of "
              f"{push['new_segment_bytes'] / 1e6:.2f} MB ({push['bytes_sent'] / max(1, push['new_segment_bytes']):.2f}x); "
              f"peak memory {max(s['peak_mb'] for s in r['stages'].values()):.0f} MB; labelled {r['labelled']}")
    if exp:
        worst = max(exp, key=exp.get)
        print(f"largest growth exponent: {worst} {exp[worst]:.2f} (target <= 1.2)")
    if a.json:
        Path(a.json).write_text(json.dumps({"node_frames": a.node_frames, "results": results, "exponents": exp,
                                              "matcher_cache_seconds": warm_seconds}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
