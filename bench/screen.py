"""Screening bench: batched relaxation vs one ASE calculator per structure, and
force-field energy errors on labelled Li-P-S frames before/after a fine-tune.

    .venv/bin/python bench/screen.py [--n 100] [--steps 30] [--fmax 0.1] [--threads 1]
                                     [--finetune-seconds 45] [--n-train 40] [--n-test 40]

What the defaults measure (about 7 minutes on a shared 2-core CPU box; with
``--steps 40 --finetune-seconds 60`` one run took 8.5 minutes):

* Relaxation throughput.  ``--n 100`` pyxtal Li-P-S candidates (<= 24 atoms,
  the generator's default density window) are relaxed twice with the same
  pretrained CHGNet 0.3.0, FIRE on a FrechetCellFilter, fmax 0.1 eV/A and at
  most 30 steps: once with ``ForceField.relax`` (one batched model call per
  step for all structures still relaxing, its volume/finiteness guards on)
  and once with one ASE calculator per structure, one structure after the
  other.  Both are timed after an untimed warm-up of both paths on the same
  candidates.  A 30-step cap is a screening pre-relaxation, not a converged
  one: the figure is "structures through a 30-step FIRE pre-relaxation per
  minute"; the model evaluations of each mode are printed too.
* Accuracy.  Per data set, never mixed: the AIMD Li27P12S44 frames (VASP-PBE)
  and the Li3PS4_sample frames (PBEsol).  Frames are deduplicated by their
  numbers/cell/positions first (the Li3PS4 sample's train/val/test files share
  27 identical frames), then split into disjoint train and test parts (AIMD:
  the first and last blocks of the trajectory, a gap between them, since
  neighbouring AIMD frames are correlated; Li3PS4: a seeded random split).
  Energy MAE/RMSE per atom and force RMSE of pretrained CHGNet on the test
  part, then the same after ``finetune(train, max_seconds=--finetune-seconds)``.

Torch runs with ``--threads 1`` by default: on a CPU shared with other jobs,
two OpenMP threads spin-wait on each other whenever one is descheduled, which
made single CHGNet calls 10-100x slower (that, not neighbour-graph blow-up,
is what kept the old bench from finishing).
"""

from __future__ import annotations

import argparse
import os
import random
import time
import warnings
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "nodestore" / "data" / "li-p-s" / "labelled"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100, help="candidates to relax")
    p.add_argument("--steps", type=int, default=30, help="FIRE step limit per structure")
    p.add_argument("--fmax", type=float, default=0.1)
    p.add_argument("--max-atoms", type=int, default=24)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared CPU)")
    p.add_argument("--n-train", type=int, default=40, help="fine-tune frames per data set (at most)")
    p.add_argument("--n-test", type=int, default=40, help="test frames per data set (at most)")
    p.add_argument("--finetune-seconds", type=float, default=45.0, help="fine-tune time limit per data set")
    p.add_argument("--epochs", type=int, default=50, help="epoch cap (the time limit usually stops first)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import numpy as np
    import torch
    from ase.filters import FrechetCellFilter
    from ase.io import read
    from ase.optimize import FIRE

    from nodestore.models import registry
    from nodestore.models.generator import PyxtalGenerator

    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    ff = registry.create("forcefield", "chgnet")

    t = time.perf_counter()
    cands = PyxtalGenerator(max_atoms=args.max_atoms, seed=args.seed).sample(args.n)
    vpa = np.array([a.get_volume() / len(a) for a in cands])
    print(f"generated {len(cands)} pyxtal Li-P-S candidates ({np.mean([len(a) for a in cands]):.1f} atoms on "
          f"average, <= {args.max_atoms}; {vpa.min():.1f}-{vpa.max():.1f} A^3/atom) "
          f"in {time.perf_counter() - t:.1f} s", flush=True)

    # untimed warm-up of both paths (torch's one-time costs, allocator growth)
    t = time.perf_counter()
    ff.predict(cands)
    for a in cands[:8]:
        b = a.copy()
        b.calc = ff.as_calculator()
        b.get_forces()
        b.get_stress()
    print(f"warm-up {time.perf_counter() - t:.1f} s", flush=True)

    t, c = time.perf_counter(), time.process_time()
    batched = ff.relax(cands, fmax=args.fmax, steps=args.steps)
    t_batch, c_batch = time.perf_counter() - t, time.process_time() - c
    evals_b = sum(r["steps"] + 1 for r in batched)

    t, c = time.perf_counter(), time.process_time()
    single_steps, single_conv, evals_s = [], [], 0
    for a in cands:
        b = a.copy()
        b.calc = ff.as_calculator()
        opt = FIRE(FrechetCellFilter(b), logfile=None)
        single_conv.append(bool(opt.run(fmax=args.fmax, steps=args.steps)))
        single_steps.append(opt.nsteps)
        evals_s += opt.nsteps + 1
    t_single, c_single = time.perf_counter() - t, time.process_time() - c

    n = len(cands)
    rate_b, rate_s = 60 * n / t_batch, 60 * n / t_single
    reasons = {}
    for r in batched:
        key = r["reason"] if r["reason"] in ("converged", "max_steps", "time_limit") else "guard"
        reasons[key] = reasons.get(key, 0) + 1
    print(f"\nrelaxation of the same {n} candidates: FIRE + FrechetCellFilter, fmax {args.fmax} eV/A, "
          f"<= {args.steps} steps, {args.threads} torch thread(s)")
    print(f"  batched ForceField.relax:  {t_batch:6.1f} s wall ({c_batch:6.1f} s CPU)  {rate_b:6.1f} structures/min"
          f"  converged {sum(r['converged'] for r in batched)}/{n}  model evaluations {evals_b}  stops {reasons}")
    print(f"  one calculator/structure:  {t_single:6.1f} s wall ({c_single:6.1f} s CPU)  {rate_s:6.1f} structures/min"
          f"  converged {sum(single_conv)}/{n}  model evaluations {evals_s}")
    print(f"  speed-up batched / per-structure: {rate_b / rate_s:.2f}x wall, {c_single / c_batch:.2f}x CPU", flush=True)

    aimd = _dedup(read(DATA / "lips_aimd_Li27P12S44.extxyz", index=":"))
    li3ps4 = _dedup([a for f in ("train", "val", "test") for a in read(DATA / f"Li3PS4_sample_{f}.xyz", index=":")])
    sets = {
        "AIMD Li27P12S44 (VASP-PBE)": _block_split(aimd, args.n_train, args.n_test),
        "Li3PS4_sample (PBEsol)": _random_split(li3ps4, args.n_train, args.n_test, args.seed),
    }
    print("\npretrained CHGNet vs DFT on held-out frames, per data set (energy eV/atom, forces eV/A):")
    for name, (train, test) in sets.items():
        assert not {_key(a) for a in train} & {_key(a) for a in test}
        before = ff.evaluate(test)
        t = time.perf_counter()
        child = ff.finetune(train, val_fraction=0.2, epochs=args.epochs, patience=3, lr=1e-4, batch_size=4,
                            seed=args.seed, max_seconds=args.finetune_seconds)
        dt = time.perf_counter() - t
        after = child.evaluate(test)
        m = child.metrics
        print(f"  {name}: {len(train)} train ({m['n_train']} fit + {m['n_val']} early-stopping) / "
              f"{len(test)} test frames; fine-tune {dt:.0f} s, {m['epochs']} epochs (best {m['best_epoch']})")
        for label, e in (("before", before), ("after ", after)):
            print(f"    {label}: energy MAE {e['energy_mae_per_atom']:.4f}  RMSE {e['energy_rmse_per_atom']:.4f}"
                  f"   force RMSE {e['force_rmse']:.3f}", flush=True)
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")


def _key(atoms):
    import numpy as np
    return (atoms.numbers.tobytes(), np.round(atoms.cell.array, 5).tobytes(),
            np.round(atoms.positions, 5).tobytes())


def _dedup(frames):
    """Frames with distinct numbers/cell/positions, first occurrence kept."""
    seen, out = set(), []
    for a in frames:
        k = _key(a)
        if k not in seen:
            seen.add(k)
            out.append(a)
    return out


def _block_split(frames, n_train, n_test):
    """AIMD frames are correlated in time: train on the first block, test on the last,
    with the frames between them (at least a tenth of the run) left out."""
    gap = max(len(frames) // 10, 1)
    n_train = min(n_train, (len(frames) - gap) // 2)
    n_test = min(n_test, len(frames) - gap - n_train)
    return frames[:n_train], frames[len(frames) - n_test:]


def _random_split(frames, n_train, n_test, seed):
    order = list(range(len(frames)))
    random.Random(seed).shuffle(order)
    n_test = min(n_test, len(frames) // 2)
    test = [frames[i] for i in order[:n_test]]
    train = [frames[i] for i in order[n_test:n_test + n_train]]
    return train, test


if __name__ == "__main__":
    main()
