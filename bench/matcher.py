"""Bench: nodestore's bucketed matcher vs exhaustive StructureMatcher on Li–P–S structures.

    OMP_NUM_THREADS=1 python bench/matcher.py            # N = 500, 2000 (both), 20000 (ours only)
    OMP_NUM_THREADS=1 python bench/matcher.py --quick    # N = 200, 500

The set for each N: pyxtal crystals of 8 Li–P–S compositions (<= 24 atoms),
~10 % of them perturbed copies (0.02 Å), plus the shipped reference phases
and 10 real PBE AIMD frames of Li27P12S44 with 0.02 Å copies, shuffled.  At
N = 20000 pyxtal alone would take ~10 min, so 2000 pyxtal crystals are
reused as parents of strongly strained / displaced variants (distinct
structures by construction) plus the 10 % perturbed copies.

"exhaustive" is ``StructureMatcher.group_structures`` (every structure
reduced once, every structure fitted against every earlier group
representative of its formula); "ours" is ``Matcher.dedup`` with the same
settings and the same per-structure reduction, timed from raw structures to
verdicts.  ``identical`` compares the per-structure verdicts (-1 or index of
the representative).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")


def _cached_crystals(n: int, seed: int, cache: Path) -> list:
    from pymatgen.core import Structure

    from nodestore.chem.synthetic import random_crystals

    path = cache / f"pyxtal-lips-{n}-{seed}.json"
    if path.exists():
        return [Structure.from_dict(d) for d in json.loads(path.read_text())]
    out = random_crystals(n, seed=seed)
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([s.as_dict() for s in out]))
    return out


def _real_structures() -> list:
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    from nodestore.chem.hull import reference_structures

    root = Path(__file__).resolve().parents[1] / "nodestore" / "data" / "li-p-s"
    images = reference_structures() + read(root / "labelled" / "lips_aimd_Li27P12S44.extxyz", index="::20")
    out = []
    for a in images:
        a = a.copy()
        a.info = {}
        a.calc = None
        out.append(AseAtomsAdaptor.get_structure(a))
    return out


def build_set(n: int, seed: int, cache: Path) -> list:
    from nodestore.chem.synthetic import perturbed, strained

    rng = np.random.default_rng(seed)
    real = _real_structures()
    n_copies = int(round(0.1 * n))
    n_base = n - n_copies - len(real)
    n_pyxtal = min(n_base, 2000)
    base = _cached_crystals(n_pyxtal, seed, cache)
    variants = []
    while len(base) + len(variants) < n_base:  # only for N > ~2200
        parent = base[int(rng.integers(len(base)))]
        f = rng.uniform(0.6, 1.6, 3)
        v = strained(parent, f)
        variants.append(perturbed(v, float(rng.uniform(0.5, 1.5)), rng))
    items = base + variants + real
    for _ in range(n_copies):
        items.append(perturbed(items[int(rng.integers(len(items)))], 0.02, rng))
    order = rng.permutation(len(items))
    return [items[i] for i in order]


def run(n: int, exhaustive: bool, seed: int, cache: Path) -> dict:
    from nodestore.chem.matcher import Matcher, exhaustive_dedup

    structs = build_set(n, seed, cache)
    m = Matcher()
    t0 = time.perf_counter()
    ours = m.dedup(structs)
    t_ours = time.perf_counter() - t0
    row = {"N": n, "ours_s": round(t_ours, 2), "duplicates": int((ours >= 0).sum()),
           "pairs_in_buckets": m.stats.pairs_in_buckets, "lattice_bound_rejects": m.stats.pairs_prefiltered,
           "lattice_map_rejects": m.stats.extra.get("no_lattice_map", 0), "fits": m.stats.fits}
    if exhaustive:
        t0 = time.perf_counter()
        ref = exhaustive_dedup(structs)
        t_ex = time.perf_counter() - t0
        row.update(exhaustive_s=round(t_ex, 2), speedup=round(t_ex / t_ours, 1),
                   identical=bool(np.array_equal(ours, ref)))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 200 and 500 only (< 3 min)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "nodestore-bench",
                    help="where generated pyxtal sets are cached (JSON)")
    args = ap.parse_args(argv)
    if os.environ.get("OMP_NUM_THREADS") is None:
        print("note: set OMP_NUM_THREADS=1 for stable timings", file=sys.stderr)
    plan = [(200, True), (500, True)] if args.quick else [(500, True), (2000, True), (20000, False)]
    for n, ex in plan:
        row = run(n, ex, args.seed, args.cache)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
