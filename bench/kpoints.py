"""Bench: k-point convergence of a node's GPAW labels.

Relabels the node's frames of its GPAW method at the node's own k-point density and at a denser
one (the other settings as params.yaml gives them), and prints per frame the change of the energy
per atom.  A label whose energy moves by more than the loop's stability window between the two
densities is not converged, and neither is any force field fitted to it: the elemental references
are the first to check, since every formation energy rests on them.

    python bench/kpoints.py --node demo/Li-P-S                    # densities 2 and 4 (1/Å)
    python bench/kpoints.py --node demo/Li-P-S --dense 6 --max-atoms 12
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--node", required=True)
    ap.add_argument("--dense", type=float, default=4.0, help="the denser k-point density (points per 1/Å)")
    ap.add_argument("--max-atoms", type=int, default=20)
    args = ap.parse_args()

    from nodestore.loop.stages import section
    from nodestore.models.labeller import GpawLabeller
    from nodestore.repo import Node

    node = Node.open(args.node)
    cfg = dict(section(node.params, "labeller"))
    if cfg.pop("backend", "gpaw") != "gpaw":
        raise SystemExit("the node's labeller is not GPAW")
    method = node.config["reference_method"]
    t = node.table
    rows = np.nonzero((t.column("method") == method) & np.isfinite(t.column("energy"))
                      & (t.column("n_atoms") <= args.max_atoms))[0]
    _, first = np.unique(t.column("frame_id")[rows].astype(str), return_index=True)
    rows = rows[np.sort(first)]
    images = t.to_atoms(rows)
    base = float(cfg.get("kpt_density", 3.0))
    labs = {d: GpawLabeller(**{**cfg, "kpt_density": d}) for d in (base, args.dense)}
    print(f"{len(images)} frames of {method}; k-point densities {base:g} and {args.dense:g} per 1/A")
    print(f"{'formula':<14}{'atoms':>6}{'origin':>11}{'E/atom ' + format(base, 'g'):>16}"
          f"{'E/atom ' + format(args.dense, 'g'):>16}{'change meV/atom':>17}{'s':>8}")
    changes = []
    for a, r in zip(images, rows):
        t0 = time.perf_counter()
        e = {}
        for d, lab in labs.items():
            res = lab.label([a])[0]
            e[d] = res["energy"] / len(a) if res.get("ok") else float("nan")
        dmev = 1000 * (e[args.dense] - e[base])
        changes.append(dmev)
        print(f"{a.get_chemical_formula('metal'):<14}{len(a):>6}{t.column('origin')[r]:>11}{e[base]:>16.5f}"
              f"{e[args.dense]:>16.5f}{dmev:>17.2f}{time.perf_counter() - t0:>8.1f}", flush=True)
    ch = np.abs(np.array(changes))
    print(f"largest change {np.nanmax(ch):.2f} meV/atom; median {np.nanmedian(ch):.2f}")


if __name__ == "__main__":
    main()
