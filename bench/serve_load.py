"""Loopback load test of `nodestore serve`: a node of N entries (default 50,000), C concurrent clients.

Builds a Li-P-S node of N distinct frames (the shipped reference structures and AIMD frames,
rattled and strained so that every frame is new, 5-83 atoms, vasp-pbe energies), serves it with
`nodestore serve` in a subprocess, and has C client threads issue requests for --seconds per kind:
three typical filters (first page of 20, as a client browsing would) and single-entry fetches.
Prints requests per second and p50/p99 latency per kind.

    python bench/serve_load.py                 # 50,000 entries, 8 clients
    python bench/serve_load.py --quick         # 5,000 entries, 4 clients, short runs
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FILTERS = {
    "elements HAS ALL": 'elements HAS ALL "Li","S"',
    "nsites AND energy": "nsites >= 40 AND _nodestore_energy < -100",
    "formula OR NOT": 'chemical_formula_reduced = "Li3PS4" OR NOT nelements = 3',
}


def build(path: Path, n: int) -> "object":
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import read

    from nodestore.frames import FrameBatch
    from nodestore.frames.io import read_file
    from nodestore.repo import Node

    data = ROOT / "nodestore" / "data" / "li-p-s"
    seeds = [a for f in sorted((data / "structures").glob("*")) if f.suffix in (".cif", ".json")
             for a in read_file(f)]
    seeds = [a for a in seeds if len(a) <= 90]
    seeds += read(data / "labelled" / "lips_aimd_Li27P12S44.extxyz", index="::20")
    node = Node.init("Li-P-S", path)
    rng = np.random.default_rng(0)
    done, chunk = 0, 10_000
    while done < n:
        images = []
        for i in range(min(chunk, n - done)):
            a = seeds[(done + i) % len(seeds)].copy()
            a.calc = None
            a.set_cell(a.cell * (1 + rng.normal(0, 0.01)), scale_atoms=True)
            a.positions += rng.normal(0, 0.02, a.positions.shape)
            a.calc = SinglePointCalculator(a, energy=float(-4.0 * len(a) + rng.normal(0, 0.5)))
            images.append(a)
        batch = FrameBatch.from_atoms(images, origin="imported").with_columns(method="vasp-pbe")
        with node.transaction(f"bench: {len(images)} frames") as tx:
            tx.append(batch)
        done += len(images)
        print(f"  built {done}/{n} frames", flush=True)
    return node


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def hammer(urls: list[str], clients: int, seconds: float) -> dict:
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(k: int):
        i = k
        mine = []
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                get(urls[i % len(urls)])
                mine.append(time.perf_counter() - t0)
            except Exception:  # noqa: BLE001 - counted
                with lock:
                    errors[0] += 1
            i += clients
        with lock:
            lat.extend(mine)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    a = np.array(lat) * 1000
    return {"requests": len(lat), "errors": errors[0], "rps": len(lat) / wall,
            "p50_ms": float(np.percentile(a, 50)) if len(a) else None,
            "p99_ms": float(np.percentile(a, 99)) if len(a) else None}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=50_000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.entries, args.clients, args.seconds = 5_000, 4, 5.0
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    t0 = time.perf_counter()
    node = build(tmp / "n", args.entries)
    print(f"node of {len(node.table)} frames built in {time.perf_counter() - t0:.0f} s")
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "nodestore", "-C", str(node.path), "serve", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        while True:
            try:
                get(base + "/info")
                break
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit(f"serve exited: {proc.stderr.read()}")
                time.sleep(0.2)
        print(f"server up in {time.perf_counter() - t0:.1f} s (columns of {args.entries} rows built once)")
        ids = [d["id"] for d in get(f"{base}/structures?page_limit=500&response_fields=id")["data"]]
        kinds = {name: [f"{base}/structures?" + urllib.parse.urlencode({"filter": f, "page_limit": 20})]
                 for name, f in FILTERS.items()}
        kinds["single entry"] = [f"{base}/structures/{i}" for i in ids]
        print(f"\n{args.clients} concurrent clients, {args.seconds:g} s per kind, loopback, one server process")
        print(f"{'request':<22}{'matches':>9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
        for name, urls in kinds.items():
            matches = get(urls[0])["meta"]["data_returned"]
            r = hammer(urls, args.clients, args.seconds)
            print(f"{name:<22}{matches:>9}{r['rps']:>9.1f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['errors']:>8}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
