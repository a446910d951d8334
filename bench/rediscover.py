"""Rediscovery: does the loop find known phases it was never shown?

A node is built whose every source of known structure leaves the held-out phases out:

- the reference phases (imported and labelled), by structure match against each held-out phase;
- the labelled training frames of the force field (the AIMD and Li3PS4 frames shipped with
  nodestore), frame by frame, by the same match;
- the generator's prototypes: every AFLOW prototype of the substitution generator whose structure
  type is a held-out phase's (anonymous match) is dropped by its AFLOW label.  (The framework
  generator has no prototypes: it knows the fcc, hcp and bcc lattices and fills their holes.)

Then K iterations of the loop run with the real labeller (GPAW) and force field (the node's
default), as ``nodestore iterate --run`` runs them.  For each held-out phase the bench reports
whether the loop found it -- a relaxed candidate of the screen, a labelled frame or an entry that
matches it exactly (pymatgen's StructureMatcher, the node's ``match`` settings) -- in which
iteration, and after how many candidates and labels; per iteration it reports S.U.N. at E_hull
<= 0, 0.025 and 0.1 eV/atom, the force field's error on the new labels and the wall time of each
stage.

    python bench/rediscover.py --quick                       # one small iteration, < 15 min on 2 cores
    python bench/rediscover.py                               # 3 iterations of 200 candidates, 12 labels
    python bench/rediscover.py --holdout my_phase.cif ...    # hold out other phases

The default held-out phases are gamma-Li3PS4 (Pmn2_1, 16 atoms, shipped; the ternary) and
antifluorite Li2S (the binary, built from a = 5.70 A as the node builds it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nodestore.loop.demo import search_generator  # noqa: E402  (after the path: a checkout runs it)

STRUCTURES = ROOT / "nodestore" / "data" / "li-p-s" / "structures"
DEFAULT_HOLDOUTS = [STRUCTURES / "Li3PS4_gamma_Pmn21.cif", "Li2S_antifluorite"]

#: the search: cations in the holes of S frameworks, motif-built thiophosphates, AFLOW prototype
#: substitutions, symmetric pyxtal crystals (the demo's, at 24 atoms)
GENERATOR = search_generator(24)


def sizes(quick: bool, a) -> dict:
    if quick:
        return {"iterations": a.iterations or 1, "candidates": a.candidates or 48, "labels": a.labels or 6,
                "steps": a.steps or 60}
    return {"iterations": a.iterations or 3, "candidates": a.candidates or 200, "labels": a.labels or 12,
            "steps": a.steps or 100}


def params_for(size: dict, generator: dict, labeller: dict | None) -> dict:
    from nodestore.config import default_params
    from nodestore.loop.demo import DEMO_PARAMS

    p = default_params()
    p.update(json.loads(json.dumps(DEMO_PARAMS)))
    n_label = size["labels"]
    p["generate"] = {"n": size["candidates"], "max_atoms": 24}
    p["generator"] = json.loads(json.dumps(generator))
    p["screen"] = {"fmax": 0.05, "steps": size["steps"], "relax_cell": True}
    p["select"] = {"n_lowest": n_label // 2, "n_diverse": n_label // 4,
                   "n_uncertain": n_label - n_label // 2 - n_label // 4, "uncertain_max_e_hull": 0.3,
                   "max_e_hull": 0.5, "max_atoms": 24}
    if labeller:
        p["labeller"] = labeller
    return p


def read_holdouts(items) -> list:
    """Held-out phases as (name, Atoms): structure files, or the name of a built-in phase."""
    from nodestore.chem.hull import reference_structures
    from nodestore.frames.io import read_file

    builtin = {a.info["name"]: a for a in reference_structures()}
    out = []
    for item in items:
        if str(item) in builtin:
            out.append((str(item), builtin[str(item)]))
            continue
        images = read_file(Path(item))
        if len(images) != 1:
            raise SystemExit(f"{item}: a held-out phase is one structure, the file has {len(images)}")
        out.append((Path(item).stem, images[0]))
    return out


def matches_any(matcher, structures, holdouts, anonymous=False) -> list[int]:
    """For each structure, the index of the held-out phase it matches, or -1."""
    if not structures:
        return []
    return [int(h) for h in matcher.match(structures, [h for _, h in holdouts], anonymous=anonymous)]


def reference_key(labeller, phases) -> str:
    return hashlib.sha256(json.dumps({"method": labeller.method_info, "phases": [
        [a.info["name"], a.get_chemical_formula(), np.round(a.cell.array, 4).tolist(), np.round(a.positions, 4).tolist()]
        for a in phases]}, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_node(path: Path, holdouts, params: dict, matcher, echo, cache: Path):
    """The node without the held-out phases, and what was removed from which source."""
    from ase.io import read, write

    from nodestore.chem.hull import reference_structures
    from nodestore.frames.io import read_file
    from nodestore.loop import create_node
    from nodestore.loop.actions import label_files
    from nodestore.loop.demo import labelled_files, reference_files
    from nodestore.models.generator import aflow_prototypes
    from nodestore.models.registry import from_config

    removed: dict = {"reference_files": [], "reference_phases": [], "labelled_frames": {}, "prototypes": []}
    method = from_config("labeller", params["labeller"]).method
    # the generator's prototypes: drop the AFLOW structure types of the held-out phases
    members = params["generator"].get("members", [params["generator"]])
    for m in members:
        if m.get("backend") == "substitution" and m.get("library") == "aflow":
            protos = aflow_prototypes(max_elements=3, max_sites=int(m.get("max_sites", 24)))
            hit = matches_any(matcher, protos, holdouts, anonymous=True)
            drop = sorted({p.properties["aflow"] for p, h in zip(protos, hit) if h >= 0})
            m["exclude"] = sorted(set(m.get("exclude", [])) | set(drop))
            removed["prototypes"] += drop
    node = create_node("Li-P-S", path, reference_method=method, params=params)
    files = []
    for f in reference_files():
        if any(h >= 0 for h in matches_any(matcher, read_file(f), holdouts)):
            removed["reference_files"].append(f.name)
        else:
            files.append(f)
    node.import_files(files, origin="reference", message="reference phases minus the held-out ones")
    with tempfile.TemporaryDirectory(prefix="rediscover-") as tmp:
        for m, paths in labelled_files().items():
            keep_files = []
            for f in paths:
                frames = read(f, ":")
                hit = matches_any(matcher, frames, holdouts)
                keep = [a for a, h in zip(frames, hit) if h < 0]
                removed["labelled_frames"][f.name] = len(frames) - len(keep)
                if keep:
                    out = Path(tmp) / f.name
                    write(out, keep, format="extxyz")
                    keep_files.append(out)
            if keep_files:
                node.import_files(keep_files, method=m, message=f"labelled frames ({m}) minus the held-out phases")
    refs = reference_structures(node.system)
    hit = matches_any(matcher, refs, holdouts)
    removed["reference_phases"] = [a.info["name"] for a, h in zip(refs, hit) if h >= 0]
    keep = [a for a, h in zip(refs, hit) if h < 0]
    for a in keep:
        a.info["source"] = a.info.get("name", "reference")
    t = time.perf_counter()
    # the labels of the reference phases are the same in every run with the same labeller and
    # phases: kept beside the work directory, keyed by the labeller's settings and the structures
    lab = from_config("labeller", params["labeller"])
    cached = cache / f"references-{method}-{reference_key(lab, keep)}.extxyz"
    if cached.exists():
        node.import_files([cached], method=method, origin="reference",
                          message=f"reference phases labelled by {method} (cached from an earlier run)")
        echo(f"[rediscover] {len(keep)} reference labels reused from {cached}")
        removed["reference_labels"] = f"cached ({cached.name})"
        return node, removed
    echo(f"[rediscover] labelling {len(keep)} reference phases with {method} ...")
    r = label_files(node, [], images=keep, origin="reference", message="label the reference phases (held-out ones left out)")
    echo(f"[rediscover] labelled {r.labelled} reference phases in {time.perf_counter() - t:.0f} s, "
         f"{len(r.failures)} failed")
    removed["reference_labels"] = f"labelled in {time.perf_counter() - t:.0f} s"
    if not r.failures:
        table = node.table
        rows = np.nonzero((table.column("origin") == "reference") & (table.column("method") == method))[0]
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        write(tmp, table.to_atoms(rows), format="extxyz")
        tmp.replace(cached)
    return node, removed


def find(node, holdouts, matcher) -> list[dict]:
    """Where each held-out phase turned up: the first iteration with a matching relaxed candidate,
    labelled frame or entry."""
    table = node.table
    origin = table.column("origin")
    method = node.config["reference_method"]
    methods = table.column("method")
    iteration = table.column("iteration")
    rows = np.nonzero(np.isin(origin, ["relaxed", "labelled"]) & (iteration > 0))[0]
    hit = matches_any(matcher, table.structures(rows), holdouts) if len(rows) else []
    e_hull = table.column("e_hull")
    is_entry = table.column("is_entry")
    out = []
    for h, (name, atoms) in enumerate(holdouts):
        mine = [r for r, x in zip(rows, hit) if x == h]
        rec = {"phase": name, "formula": atoms.get_chemical_formula("metal"), "n_atoms": len(atoms), "found": bool(mine)}
        relaxed = [r for r in mine if origin[r] == "relaxed"]
        labelled = [r for r in mine if origin[r] == "labelled" and methods[r] == method]
        if relaxed:
            r = min(relaxed, key=lambda r: (iteration[r], e_hull[r]))
            rec["screened_in_iteration"] = int(iteration[r])
            rec["screen_e_hull"] = float(e_hull[r])
        if labelled:
            r = min(labelled, key=lambda r: iteration[r])
            rec["labelled_in_iteration"] = int(iteration[r])
            rec["label_e_hull"] = float(e_hull[r])
            rec["entry"] = bool(is_entry[r])
        out.append(rec)
    return out


def iteration_rows(node) -> list[dict]:
    from nodestore.loop.demo import summarize

    rows = summarize(node)
    for row in rows:
        met = json.loads((node.path / "loop" / f"iter-{row['iteration']}" / "metrics.json").read_text())
        by = (met.get("sun") or {}).get("by_threshold") or {}
        row["sun"] = {t: (by.get(t) or {}).get("sun") for t in sorted(by, key=float)}
        row["strategies"] = met.get("strategies") or {}
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--holdout", nargs="+", default=None, metavar="FILE",
                    help="structure files of the phases to hold out (or Li2S_antifluorite, Li_bcc)")
    ap.add_argument("--quick", action="store_true", help="one iteration of 48 candidates and 6 labels")
    ap.add_argument("--iterations", type=int)
    ap.add_argument("--candidates", type=int)
    ap.add_argument("--labels", type=int)
    ap.add_argument("--steps", type=int, help="force-field relaxation steps per candidate")
    ap.add_argument("--stop-when-found", action="store_true",
                    help="stop after the iteration in which every held-out phase has been found")
    ap.add_argument("--generator", default=None, help="a generator config as JSON (default: the mixture)")
    ap.add_argument("--labeller", default=None, help="a labeller backend instead of gpaw (lj: a fast dry run)")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "nodestore-rediscover"))
    ap.add_argument("--json", default=None, help="also write the report to this file")
    ap.add_argument("--cache", default=None,
                    help="where the reference phases' labels are kept between runs (default: WORKDIR-cache)")
    a = ap.parse_args(argv)
    from nodestore.chem.matcher import Matcher
    from nodestore.loop.iterate import iterate
    from nodestore.loop.stages import _match_params

    t_all = time.perf_counter()
    size = sizes(a.quick, a)
    generator = json.loads(a.generator) if a.generator else GENERATOR
    params = params_for(size, generator, {"backend": a.labeller} if a.labeller else None)
    holdouts = read_holdouts(a.holdout or DEFAULT_HOLDOUTS)
    work = Path(a.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    match = {k: float(v) for k, v in params.get("match", {}).items() if k in ("ltol", "stol", "angle_tol")}
    matcher = Matcher(**match)
    print(f"[rediscover] holding out {', '.join(f'{n} ({h.get_chemical_formula()})' for n, h in holdouts)}; "
          f"{size['iterations']} iteration(s) of {size['candidates']} candidates and {size['labels']} labels", flush=True)
    t = time.perf_counter()
    node, removed = build_node(work / "node", holdouts, params, matcher, lambda s: print(s, flush=True),
                               Path(a.cache) if a.cache else work.parent / (work.name + "-cache"))
    build_seconds = time.perf_counter() - t
    print(f"[rediscover] removed: {json.dumps(removed)} ({build_seconds:.0f} s to build the node)", flush=True)
    matcher = Matcher(**_match_params(node))
    found_at: dict = {}
    for k in range(1, size["iterations"] + 1):
        t = time.perf_counter()
        iterate(node, run=True)
        print(f"[rediscover] iteration {k}: {time.perf_counter() - t:.0f} s", flush=True)
        for rec in find(node, holdouts, matcher):
            if rec["found"] and rec["phase"] not in found_at:
                found_at[rec["phase"]] = k
        if a.stop_when_found and len(found_at) == len(holdouts):
            print(f"[rediscover] every held-out phase found by iteration {k}: stopping", flush=True)
            break
    rows = iteration_rows(node)
    found = find(node, holdouts, matcher)
    for rec in found:
        k = min([rec[x] for x in ("screened_in_iteration", "labelled_in_iteration") if x in rec], default=None)
        if k is not None:
            rec["candidates_until"] = int(sum(r["candidates"] or 0 for r in rows if r["iteration"] <= k))
            rec["labels_until"] = int(sum(r["labelled"] or 0 for r in rows if r["iteration"] <= k))
    report = {"holdouts": [n for n, _ in holdouts], "size": size, "iterations_run": len(rows), "generator": generator, "removed": removed,
              "build_seconds": round(build_seconds, 1), "found": found, "iterations": rows,
              "total_seconds": round(time.perf_counter() - t_all, 1)}
    print("\nheld-out phase        found  screened@k  E_hull(FF)  labelled@k  E_hull(label)  entry  candidates  labels")
    for rec in found:
        def f(key, fmt="{}"):
            return fmt.format(rec[key]) if key in rec else "-"
        print(f"{rec['phase'][:20]:<20}  {'yes' if rec['found'] else 'no':<5}  {f('screened_in_iteration'):>10}  "
              f"{f('screen_e_hull', '{:.3f}'):>10}  {f('labelled_in_iteration'):>10}  {f('label_e_hull', '{:.3f}'):>13}  "
              f"{f('entry'):>5}  {f('candidates_until'):>10}  {f('labels_until'):>6}")
    print("\niteration  candidates  screened  labelled  S.U.N.(0 / 0.025 / 0.1)  FF(k-1) RMSE  stage seconds")
    for r in rows:
        sun = " / ".join(str(v) for v in r["sun"].values())
        stages = ", ".join(f"{k[2:-2]} {v:.0f}" for k, v in r.items() if k.startswith("t_") and k.endswith("_s"))
        rmse = r.get("ff_prev_on_new_labels_rmse")
        print(f"{r['iteration']:>9}  {r['candidates'] or 0:>10}  {r['screened'] or 0:>8}  {r['labelled'] or 0:>8}  "
              f"{sun:>23}  {'-' if rmse is None else f'{rmse:.3f}':>12}  {stages}")
    print("\niteration  strategy      candidates  screened  predicted stable  labelled  confirmed")
    for r in rows:
        for name, v in r["strategies"].items():
            print(f"{r['iteration']:>9}  {name:<12}  {v['candidates']:>10}  {v['screened']:>8}  "
                  f"{v['predicted_stable']:>16}  {v['labelled']:>8}  {v['confirmed']:>9}")
    print(f"\ntotal {report['total_seconds']:.0f} s (node built in {build_seconds:.0f} s)")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
