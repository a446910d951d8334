"""Relaxation-overhead bench: the screen's batched FIRE relaxation with the cell, with and without
nodestore's two savings outside the model.

    .venv/bin/python bench/relax_overhead.py [--backend sevenn] [--pretrained 7net-0] [--n 40]
                                             [--steps 40] [--threads 2] [--filter frechet]

``ForceField.relax`` (``nodestore/models/forcefield.py``) (1) computes each structure's cell-filter
gradient once per geometry, where ASE's optimizer loop asks it twice per step (the convergence
test, then the step), and (2) runs scipy's BLAS on one thread around the filters' 3x3 algebra,
which otherwise meets torch's OpenMP threads.  Both modes relax the same structures in the same
process (the reference phases shipped with nodestore plus ``--n`` seeded candidates of the demo's
search), baseline first after an untimed warm-up; the trajectories must agree to rounding.
It prints wall seconds, the model's seconds and the rest, for each mode, and the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="sevenn")
    ap.add_argument("--pretrained", default="7net-0")
    ap.add_argument("--n", type=int, default=40, help="candidates of the demo's search")
    ap.add_argument("--steps", type=int, default=40, help="FIRE steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--filter", default="frechet", choices=["frechet", "unit"])
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from _demo_cells import demo_cells, forcefield

    from nodestore.models import forcefield as ffmod

    images = demo_cells(args.n, args.seed)
    ff = forcefield(args.backend, args.pretrained)
    ff.relax(images[:4], steps=2, relax_cell=True, cell_filter=args.filter)  # warm-up, untimed
    once, one_thread = ffmod._once_per_geometry, ffmod._one_blas_thread
    runs = {}
    for mode in ("baseline", "nodestore"):
        if mode == "baseline":
            ffmod._once_per_geometry = lambda cls: cls
            ffmod._one_blas_thread = contextlib.nullcontext
        else:
            ffmod._once_per_geometry, ffmod._one_blas_thread = once, one_thread
        m0, t0 = ff.model_seconds, time.perf_counter()
        out = ff.relax(images, fmax=0.05, steps=args.steps, relax_cell=True, cell_filter=args.filter)
        wall, model = time.perf_counter() - t0, ff.model_seconds - m0
        runs[mode] = {"wall": wall, "model": model, "rest": wall - model, "out": out}
    b, n = runs["baseline"], runs["nodestore"]
    # the model's threaded sums differ in the last bits from call to call, so the paths agree to
    # rounding, not bit for bit (tests/models/test_relax_overheads.py checks bit equality on a
    # deterministic force field)
    dev = max(float(np.abs(x["atoms"].positions - y["atoms"].positions).max()) for x, y in zip(b["out"], n["out"]))
    de = max(abs(x["energy"] - y["energy"]) / len(x["atoms"]) for x, y in zip(b["out"], n["out"]))
    same = f"largest position difference {dev:.1e} A, energy {de:.1e} eV/atom"
    steps = sum(r["steps"] for r in n["out"])
    print(f"{args.backend} {args.pretrained or ''}: {len(images)} structures, {sum(len(a) for a in images)} atoms, "
          f"{steps} optimizer steps in all ({args.steps} at most each), {args.filter} cell filter, "
          f"{args.threads} torch threads; {same}")
    print(f"{'':24s}{'baseline':>10s}{'nodestore':>10s}{'ratio':>8s}")
    for key, label in (("wall", "relaxation, s"), ("model", "  in the model, s"), ("rest", "  outside it, s")):
        print(f"{label:24s}{b[key]:10.2f}{n[key]:10.2f}{b[key] / max(n[key], 1e-9):7.2f}x")


if __name__ == "__main__":
    main()
