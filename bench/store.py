"""Structure-table benchmark: nodestore's Zarr segments against ASE SQLite and extxyz.

Builds N frames (default 100,000) as perturbed copies of the 200 real Li27P12S44 AIMD frames
(83 atoms each) and measures, in one run, for each store: write time, size on disk, time to read
all positions and energies, and time to read 1,000 random frames as ASE Atoms with their
energy, forces and stress (what ASE's database returns; nodestore cold, nothing cached; its
figure with all metadata columns in ``atoms.info`` is printed beside it).  Then appends one
segment of 1,000 frames to the table and counts the bytes written against the raw bytes of those
frames.  Every figure is printed with its ratio to the baseline measured here.

    python bench/store.py            # N = 100,000 (about 5 minutes on 2 cores)
    python bench/store.py --n 20000  # quicker
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nodestore.frames import FrameBatch, FrameTable  # noqa: E402
from nodestore.frames.io import read_file  # noqa: E402
from nodestore.frames.segment import clear_cache  # noqa: E402


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def make_frames(n: int, rng) -> list:
    """n perturbed copies of the real AIMD frames, as ASE Atoms with energy and forces."""
    from ase.calculators.singlepoint import SinglePointCalculator

    base = read_file(ROOT / "nodestore/data/li-p-s/labelled/lips_aimd_Li27P12S44.extxyz")
    out = []
    for i in range(n):
        src = base[i % len(base)]
        a = src.copy()
        a.positions += rng.normal(0, 0.01, a.positions.shape)
        e = src.get_potential_energy() + rng.normal(0, 0.01)
        a.calc = SinglePointCalculator(a, energy=e, forces=src.get_forces() + rng.normal(0, 0.01, (len(a), 3)))
        out.append(a)
    return out


def timed(fn):
    t = time.perf_counter()
    r = fn()
    return time.perf_counter() - t, r


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--segments", type=int, default=10, help="the N frames are written as this many segments")
    ap.add_argument("--random", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3, help="random reads: the best of this many draws, every store")
    ap.add_argument("--extxyz-random-sample", type=int, default=20,
                    help="extxyz random reads are timed on this many frames and scaled (each costs a full scan)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="nodestore-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"building {args.n} frames of 83 atoms ...", flush=True)
    images = make_frames(args.n, rng)
    n_atoms = sum(len(a) for a in images)
    rows = np.sort(rng.choice(args.n, size=args.random, replace=False))
    rng.shuffle(rows)
    results = {}

    # --- nodestore --------------------------------------------------------
    t_conv, batches = timed(lambda: [FrameBatch.from_atoms(images[s::args.segments], method="vasp-pbe")
                                     for s in range(args.segments)])
    tdir = work / "table"
    shutil.rmtree(tdir, ignore_errors=True)

    def write_table():
        t = FrameTable.create(tdir)
        for b in batches:
            t.append(b, dedup=False)
        return t

    t_write, _ = timed(write_table)

    def read_all_ns():
        t = FrameTable.open(tdir)
        b = t.read(columns=["positions", "energy"])
        return b["positions"].shape, b["energy"].shape

    t_all, _ = timed(read_all_ns)
    # random access, cold (nothing of the table cached in this process), as ASE SQLite returns
    # it: Atoms with energy, forces and stress (ASE's db.write keeps no atoms.info).  Each random
    # figure is the best of --repeat draws of fresh rows, for every store alike (as timeit does):
    # a single draw on a shared 2-core machine varies by a factor of two.
    labels = ["energy", "forces", "stress"]
    draws = [rows] + [rng.choice(args.n, size=args.random, replace=False) for _ in range(args.repeat - 1)]

    def cold(r, columns=None):
        clear_cache()
        got = FrameTable.open(tdir).to_atoms(r, columns=columns)
        assert len(got) == args.random and got[0].calc is not None

    t_rand = min(timed(lambda: cold(r, labels))[0] for r in draws)
    # the same with all 20 metadata columns in atoms.info (frame id, method, origin, ...), cold and warm
    t_full = min(timed(lambda: cold(r))[0] for r in draws)
    t_warm = min(timed(lambda: FrameTable.open(tdir).to_atoms(r))[0] for r in draws)
    results["nodestore"] = dict(write=t_write, size=du(tdir), read_all=t_all, random=t_rand,
                                note=f"+{t_conv:.1f} s building columns from Atoms; random with all metadata in "
                                     f"info: {t_full:.2f} s cold, {t_warm:.2f} s warm")

    # --- ASE SQLite -------------------------------------------------------
    from ase.db import connect

    dbp = work / "frames.db"
    if dbp.exists():
        dbp.unlink()

    def write_db():
        with connect(str(dbp)) as db:
            for a in images:
                db.write(a)

    t_write, _ = timed(write_db)

    def read_all_db():
        pos, en = [], []
        with connect(str(dbp)) as db:
            for row in db.select():
                pos.append(row.positions)
                en.append(row.energy)
        return len(pos)

    t_all, _ = timed(read_all_db)

    def rand_db(r):
        with connect(str(dbp)) as db:
            return [db.get_atoms(id=int(i) + 1) for i in r]

    t_rand = min(timed(lambda: rand_db(r))[0] for r in draws)
    results["ase-sqlite"] = dict(write=t_write, size=du(dbp), read_all=t_all, random=t_rand, note="")

    # --- extxyz -----------------------------------------------------------
    from ase.io import iread, read, write

    xp = work / "frames.extxyz"
    t_write, _ = timed(lambda: write(str(xp), images, format="extxyz"))

    def read_all_xyz():
        pos, en = [], []
        for a in iread(str(xp), format="extxyz"):
            pos.append(a.positions)
            en.append(a.get_potential_energy())
        return len(pos)

    t_all, _ = timed(read_all_xyz)
    sample = rows[: args.extxyz_random_sample]
    t_s, _ = timed(lambda: [read(str(xp), index=int(r), format="extxyz") for r in sample])
    t_rand = t_s * args.random / len(sample)
    results["extxyz"] = dict(write=t_write, size=du(xp), read_all=t_all, random=t_rand,
                             note=f"random: {len(sample)} reads timed once, scaled to {args.random}")

    # --- report -----------------------------------------------------------
    print(f"\n{args.n} frames, {n_atoms} atoms, {args.segments} segments; {args.random} random frames")
    print(f"{'store':12s} {'write s':>9s} {'size MB':>9s} {'read all s':>11s} {'random s':>9s}  note")
    for k, r in results.items():
        print(f"{k:12s} {r['write']:9.2f} {r['size'] / 1e6:9.1f} {r['read_all']:11.2f} {r['random']:9.2f}  {r['note']}")
    ns = results["nodestore"]
    for base in ("ase-sqlite", "extxyz"):
        b = results[base]
        print(f"nodestore vs {base}: write {b['write'] / ns['write']:.1f}x faster, "
              f"size {ns['size'] / b['size']:.2f}x, read-all {b['read_all'] / ns['read_all']:.1f}x faster, "
              f"random {b['random'] / ns['random']:.1f}x faster")

    # --- append one segment of 1,000 frames ------------------------------
    extra = FrameBatch.from_atoms(make_frames(1000, np.random.default_rng(1)), method="vasp-pbe")
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in tdir.rglob("*") if p.is_file()}
    FrameTable.open(tdir).append(extra)
    after = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in tdir.rglob("*") if p.is_file()}
    new_or_changed = [p for p in after if before.get(p) != after[p]]
    written = sum(after[p][0] for p in new_or_changed)
    raw = sum(a.nbytes for name, a in extra.columns.items() if a.dtype != object)
    rewritten = [p.name for p in new_or_changed if p in before and p.name != "manifest.json"]
    print(f"append 1,000 frames: {written / 1e6:.2f} MB written in {len(new_or_changed)} files "
          f"(new segment + manifest) for {raw / 1e6:.2f} MB of raw frame arrays = {written / raw:.2f}x; "
          f"existing files rewritten: {len(rewritten)}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
