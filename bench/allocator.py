"""Allocator bench: force-field work with glibc's default allocator vs nodestore's tuning.

    .venv/bin/python bench/allocator.py [--backend sevenn] [--pretrained 7net-0] [--n 40]
                                        [--passes 3] [--steps 20] [--threads 2]

Every ``ForceField`` tunes glibc's malloc when it is built (``nodestore/models/_allocator.py``:
blocks up to 32 MiB from the heap, a padded and untrimmed heap).  The setting is process-wide
and cannot be undone, so each mode runs in a fresh child process on the same inputs: the
reference phases shipped with nodestore plus ``--n`` candidates of the demo's search (seeded),
``--passes`` batched predictions of all of them (after one untimed pass), then a batched
FIRE relaxation with the cell (``--steps`` steps) as the loop's screen makes it.  It prints
the seconds, the user and system CPU seconds of each mode and the ratios default / tuned.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def child(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from _demo_cells import demo_cells, forcefield

    from nodestore.models._allocator import tune_allocator

    images = demo_cells(args.n, args.seed)
    ff = forcefield(args.backend, args.pretrained)
    ff.predict(images)  # warm-up
    c0, t0 = os.times(), time.perf_counter()
    for _ in range(args.passes):
        ff.predict(images)
    c1, t1 = os.times(), time.perf_counter()
    ff.relax(images, fmax=0.05, steps=args.steps, relax_cell=True)
    c2, t2 = os.times(), time.perf_counter()
    return {"tuned": tune_allocator(), "structures": len(images), "atoms": sum(len(a) for a in images),
            "predict_s": (t1 - t0) / args.passes, "predict_user_s": (c1.user - c0.user) / args.passes,
            "predict_sys_s": (c1.system - c0.system) / args.passes,
            "relax_s": t2 - t1, "relax_user_s": c2.user - c1.user, "relax_sys_s": c2.system - c1.system}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="sevenn")
    ap.add_argument("--pretrained", default="7net-0")
    ap.add_argument("--n", type=int, default=40, help="candidates of the demo's search")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20, help="FIRE steps of the relaxation")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    results = {}
    for mode, flag in (("default", "0"), ("tuned", "1")):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
        env["NODESTORE_MALLOC_TUNING"] = flag
        env.setdefault("OMP_NUM_THREADS", str(args.threads))
        out = subprocess.run([sys.executable, __file__, "--child", *sys.argv[1:]], env=env, check=True,
                             capture_output=True, text=True).stdout
        results[mode] = json.loads(out.strip().splitlines()[-1])
    d, t = results["default"], results["tuned"]
    print(f"{args.backend} {args.pretrained or ''}: {d['structures']} structures, {d['atoms']} atoms, "
          f"{args.threads} torch threads; glibc tuning applied: {t['tuned']}")
    print(f"{'':28s}{'default':>10s}{'tuned':>10s}{'ratio':>8s}")
    for key, label in (("predict_s", "batched predict, s/pass"), ("predict_sys_s", "  system CPU s/pass"),
                       ("relax_s", f"relax {args.steps} FIRE steps, s"), ("relax_sys_s", "  system CPU s")):
        ratio = d[key] / t[key] if t[key] > 0 else float("nan")
        print(f"{label:28s}{d[key]:10.2f}{t[key]:10.2f}{ratio:7.2f}x")


if __name__ == "__main__":
    main()
