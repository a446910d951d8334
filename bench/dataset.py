"""Training-loader benchmark: one shuffled epoch over N frames, nodestore's datasets against an
ASE-SQLite-backed torch Dataset, in the same run.

The frames are bench/store.py's (perturbed copies of the 200 real Li27P12S44 AIMD frames, 83
atoms each), written once to a nodestore table and once to an ASE SQLite database.  Each
loader yields batches of ASE Atoms with energy, forces and metadata, in a shuffled order:

* ``nodestore map``: ``table.dataset().loader(batch_size, shuffle=True)`` (one table read per batch);
* ``nodestore iterable``: ``table.iterable(shuffle=True)`` (contiguous block reads, shuffled buffer);
* ``ase-sqlite``: a map-style Dataset whose item ``i`` is ``db.get_atoms(id=i + 1)``.

Each is run with 0 and ``--workers`` loader processes.  The ratio is SQLite's epoch time over
nodestore's.

    python bench/dataset.py               # N = 100,000 (about 8 minutes on 2 cores)
    python bench/dataset.py --n 20000     # quicker
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
sys.path.insert(0, str(ROOT / "bench"))

from store import make_frames  # noqa: E402

from nodestore.frames import FrameBatch, FrameTable  # noqa: E402
from nodestore.frames.dataset import collate_list  # noqa: E402
from nodestore.frames.segment import clear_cache  # noqa: E402


class SQLiteDataset:
    """A torch map-style Dataset over an ASE database (opened lazily in each worker)."""

    def __init__(self, path: str, n: int):
        self.path, self.n, self._db = path, n, None

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self._db is None:
            from ase.db import connect

            self._db = connect(self.path)
            self._db.__enter__()  # one connection kept open, as a training loop would
        return self._db.get_atoms(id=int(i) + 1)

    def __getstate__(self):
        return {**self.__dict__, "_db": None}


def epoch(loader) -> tuple[float, int]:
    t = time.perf_counter()
    n = 0
    for batch in loader:
        for a in batch if isinstance(batch, list) else [batch]:
            n += 1
    return time.perf_counter() - t, n


def main():
    import torch.utils.data as tud

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--segments", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="nodestore-bench-ds-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"building {args.n} frames of 83 atoms ...", flush=True)
    images = make_frames(args.n, np.random.default_rng(0))
    tdir = work / "table"
    shutil.rmtree(tdir, ignore_errors=True)
    t = FrameTable.create(tdir)
    for s in range(args.segments):
        t.append(FrameBatch.from_atoms(images[s::args.segments], method="vasp-pbe"), dedup=False)
    dbp = work / "frames.db"
    if dbp.exists():
        dbp.unlink()
    from ase.db import connect

    with connect(str(dbp)) as db:
        for a in images:
            db.write(a)
    del images
    table = FrameTable.open(tdir)
    bs = args.batch_size
    runs = {}
    for w in (0, args.workers):
        clear_cache()
        runs[f"nodestore map, {w} workers"] = epoch(table.dataset().loader(batch_size=bs, shuffle=True, num_workers=w))
        clear_cache()
        it = table.iterable(shuffle=True, seed=0)
        runs[f"nodestore iterable, {w} workers"] = epoch(
            tud.DataLoader(it, batch_size=bs, num_workers=w, collate_fn=collate_list))
        sq = SQLiteDataset(str(dbp), args.n)
        runs[f"ase-sqlite map, {w} workers"] = epoch(
            tud.DataLoader(sq, batch_size=bs, shuffle=True, num_workers=w, collate_fn=collate_list))
    print(f"\none shuffled epoch over {args.n} frames, batches of {bs} Atoms")
    print(f"{'loader':34s} {'epoch s':>9s} {'frames/s':>10s}")
    for k, (dt, n) in runs.items():
        assert n == args.n, (k, n)
        print(f"{k:34s} {dt:9.1f} {n / dt:10.0f}")
    for w in (0, args.workers):
        base = runs[f"ase-sqlite map, {w} workers"][0]
        for kind in ("map", "iterable"):
            print(f"{w} workers: nodestore {kind} vs ase-sqlite: {base / runs[f'nodestore {kind}, {w} workers'][0]:.1f}x faster")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
