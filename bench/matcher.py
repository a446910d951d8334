"""Bench: nodestore's bucketed matcher vs exhaustive StructureMatcher on Li–P–S structures.

    OMP_NUM_THREADS=1 python bench/matcher.py            # N = 500, 2000 (both), 20000 (ours only)
    OMP_NUM_THREADS=1 python bench/matcher.py --quick    # N = 200, 500
    OMP_NUM_THREADS=1 python bench/matcher.py --variants # stress set of near misses

The set for each N: random pyxtal crystals of 8 Li-P-S compositions (<= 24
atoms), 10 % 0.02 Å-perturbed copies of earlier items (true duplicates), plus
the shipped reference phases and 10 real PBE AIMD frames of Li27P12S44,
shuffled.  The crystals are generated once, in parallel, and cached in
1,000-crystal chunks: the first N = 20000 run spends ~12 min on 2 cores making
them (measured: 742 s); later runs read the cache.  ``--variants`` replaces
every crystal beyond the first 2,000 by a strained (0.6-1.6 per axis) and
displaced (0.5-1.5 Å) version of one of them.

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


#: pyxtal crystals are generated and cached in chunks of this size (one process each)
CHUNK = 1000


def _chunk_path(cache: Path, seed: int, c: int) -> Path:
    return cache / f"pyxtal-lips-chunk{CHUNK}-{seed}-{c}.json"


def _make_chunk(args) -> str:
    from nodestore.chem.synthetic import random_crystals

    cache, seed, c = args
    path = _chunk_path(cache, seed, c)
    out = random_crystals(CHUNK, seed=seed * 100_003 + c)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([x.as_dict() for x in out]))
    tmp.replace(path)
    return str(path)


def _cached_crystals(n: int, seed: int, cache: Path) -> list:
    """The first ``n`` pyxtal crystals of the (seeded) sequence, generated once in
    1,000-crystal chunks, in parallel over the cores, and cached as JSON."""
    from concurrent.futures import ProcessPoolExecutor

    from pymatgen.core import Structure

    cache.mkdir(parents=True, exist_ok=True)
    chunks = range((n + CHUNK - 1) // CHUNK)
    missing = [(cache, seed, c) for c in chunks if not _chunk_path(cache, seed, c).exists()]
    if missing:
        t0 = time.perf_counter()
        print(f"generating {len(missing) * CHUNK} pyxtal crystals (cached in {cache})...", file=sys.stderr, flush=True)
        with ProcessPoolExecutor(max_workers=min(len(missing), os.cpu_count() or 1)) as pool:
            list(pool.map(_make_chunk, missing))
        print(f"  done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    out = []
    for c in chunks:
        out.extend(Structure.from_dict(d) for d in json.loads(_chunk_path(cache, seed, c).read_text()))
    return out[:n]


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


def build_set(n: int, seed: int, cache: Path, variants: bool = False) -> list:
    """``n`` structures: pyxtal crystals, 10 % of them 0.02 Å-perturbed copies of
    earlier items, and the real reference phases and AIMD frames, shuffled.

    With ``variants``, at most 2,000 distinct pyxtal crystals are used and the rest
    are strained (0.6-1.6 per axis) and displaced (0.5-1.5 Å) versions of them: a
    stress test full of near misses, harder for any prefilter than random crystals.
    """
    from nodestore.chem.synthetic import perturbed, strained

    rng = np.random.default_rng(seed)
    real = _real_structures()
    n_copies = int(round(0.1 * n))
    n_base = n - n_copies - len(real)
    base = _cached_crystals(min(n_base, 2000) if variants else n_base, seed, cache)
    extra = []
    while len(base) + len(extra) < n_base:
        parent = base[int(rng.integers(len(base)))]
        extra.append(perturbed(strained(parent, rng.uniform(0.6, 1.6, 3)), float(rng.uniform(0.5, 1.5)), rng))
    items = base + extra + real
    for _ in range(n_copies):
        items.append(perturbed(items[int(rng.integers(len(items)))], 0.02, rng))
    order = rng.permutation(len(items))
    return [items[i] for i in order]


def warm_up() -> float:
    """Load (or, on a fresh install, compile) the matcher's numba kernels; seconds taken."""
    from nodestore.chem.hull import reference_structures
    from nodestore.chem.matcher import Matcher

    t0 = time.perf_counter()
    refs = reference_structures()
    Matcher().dedup(refs + refs)
    return time.perf_counter() - t0


def run(n: int, exhaustive: bool, seed: int, cache: Path, variants: bool = False) -> dict:
    from nodestore.chem.matcher import Matcher, exhaustive_dedup

    structs = build_set(n, seed, cache, variants)
    m = Matcher()
    t0 = time.perf_counter()
    ours = m.dedup(structs)
    t_ours = time.perf_counter() - t0
    st = m.stats
    row = {"N": n, "ours_s": round(t_ours, 2), "duplicates": int((ours >= 0).sum()),
           "pairs_in_buckets": st.pairs_in_buckets, "lattice_rejects": st.pairs_prefiltered,
           "site_rejects": st.extra.get("no_site_map", 0), "fits": st.fits,
           "fits_false": st.extra.get("fit_false", 0)}
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
    ap.add_argument("--variants", action="store_true",
                    help="stress set: beyond 2,000 crystals, strained and displaced variants of them")
    ap.add_argument("--sizes", type=int, nargs="+", help="custom N values (exhaustive run up to 2,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "nodestore-bench",
                    help="where generated pyxtal sets are cached (JSON)")
    args = ap.parse_args(argv)
    if os.environ.get("OMP_NUM_THREADS") is None:
        print("note: set OMP_NUM_THREADS=1 for stable timings", file=sys.stderr)
    sizes = args.sizes or ([200, 500] if args.quick else [500, 2000, 20000])
    print(f"kernels loaded in {warm_up():.2f} s (compiled on first use, then cached)", flush=True)
    rows = []
    for n in sizes:
        row = run(n, n <= 2000, args.seed, args.cache, args.variants)
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    for a, b in zip(rows, rows[1:]):
        k = np.log(b["ours_s"] / a["ours_s"]) / np.log(b["N"] / a["N"])
        print(f"growth N={a['N']}->{b['N']}: time x{b['ours_s'] / a['ours_s']:.1f} for N x{b['N'] / a['N']:.0f}"
              f" (t ~ N^{k:.2f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
