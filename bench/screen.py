"""Screening bench: batched relaxation vs one ASE calculator per structure, and
force-field energy errors on labelled Li-P-S frames before/after a fine-tune.

    .venv/bin/python bench/screen.py [--n 100] [--steps 100] [--fmax 0.1] [--threads 2]
                                     [--n-train 40] [--n-test 40] [--epochs 3]

Both relaxation modes use the same CHGNet model, optimizer (FIRE +
FrechetCellFilter), fmax and step limit on the same pyxtal candidates.
Fine-tuning is per data set (AIMD frames are VASP-PBE, Li3PS4_sample is PBEsol):
train on one part, evaluate on a disjoint part.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "nodestore" / "data" / "li-p-s" / "labelled"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100, help="candidates to relax")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--fmax", type=float, default=0.1)
    p.add_argument("--max-atoms", type=int, default=24)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-train", type=int, default=40)
    p.add_argument("--n-test", type=int, default=40)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")

    import numpy as np
    import torch
    from ase.filters import FrechetCellFilter
    from ase.io import read
    from ase.optimize import FIRE

    from nodestore.models import registry
    from nodestore.models.generator import PyxtalGenerator

    torch.set_num_threads(args.threads)
    ff = registry.create("forcefield", "chgnet")

    t = time.perf_counter()
    cands = PyxtalGenerator(max_atoms=args.max_atoms, seed=args.seed).sample(args.n)
    print(f"generated {len(cands)} pyxtal Li-P-S candidates ({np.mean([len(a) for a in cands]):.1f} atoms "
          f"on average, <= {args.max_atoms}) in {time.perf_counter() - t:.1f} s")

    ff.predict(cands)  # warm-up (first calls pay torch's one-time costs); untimed for both modes
    ff.predict(cands[:1])
    t = time.perf_counter()
    batched = ff.relax(cands, fmax=args.fmax, steps=args.steps)
    t_batch = time.perf_counter() - t

    t = time.perf_counter()
    single_steps, single_conv = [], []
    for a in cands:
        b = a.copy()
        b.calc = ff.as_calculator()
        opt = FIRE(FrechetCellFilter(b), logfile=None)
        single_conv.append(opt.run(fmax=args.fmax, steps=args.steps))
        single_steps.append(opt.nsteps)
    t_single = time.perf_counter() - t

    n = len(cands)
    rate_b, rate_s = 60 * n / t_batch, 60 * n / t_single
    print(f"batched relax:            {t_batch:7.1f} s  {rate_b:6.1f} structures/min  "
          f"converged {sum(r['converged'] for r in batched)}/{n}  steps {sum(r['steps'] for r in batched)}")
    print(f"one calculator/structure: {t_single:7.1f} s  {rate_s:6.1f} structures/min  "
          f"converged {sum(single_conv)}/{n}  steps {sum(single_steps)}")
    print(f"speed-up batched / per-structure: {rate_b / rate_s:.2f}x  "
          f"(fmax {args.fmax} eV/A, <= {args.steps} steps, {args.threads} torch threads)")

    sets = {
        "AIMD Li27P12S44 (VASP-PBE)": _split(read(DATA / "lips_aimd_Li27P12S44.extxyz", index=":"),
                                              args.n_train, args.n_test),
        "Li3PS4_sample (PBEsol)": (read(DATA / "Li3PS4_sample_train.xyz", index=":")[:args.n_train],
                                   read(DATA / "Li3PS4_sample_test.xyz", index=":")
                                   + read(DATA / "Li3PS4_sample_val.xyz", index=":")),
    }
    print("\nenergy error per atom on held-out frames (eV/atom), force RMSE (eV/A):")
    for name, (train, test) in sets.items():
        before = ff.evaluate(test)
        t = time.perf_counter()
        child = ff.finetune(train, val_fraction=0.2, epochs=args.epochs, patience=2, lr=1e-4, batch_size=4)
        dt = time.perf_counter() - t
        after = child.evaluate(test)
        print(f"  {name}: train {len(train)} / test {len(test)} frames, fine-tune {dt:.0f} s "
              f"({child.metrics['epochs']} epochs)")
        print(f"    before: MAE {before['energy_mae_per_atom']:.4f}  RMSE {before['energy_rmse_per_atom']:.4f}"
              f"  F-RMSE {before['force_rmse']:.3f}")
        print(f"    after:  MAE {after['energy_mae_per_atom']:.4f}  RMSE {after['energy_rmse_per_atom']:.4f}"
              f"  F-RMSE {after['force_rmse']:.3f}")


def _split(frames, n_train, n_test):
    """AIMD frames are correlated in time: train on the first block, test on the last."""
    return frames[:n_train], frames[-n_test:]


if __name__ == "__main__":
    main()
