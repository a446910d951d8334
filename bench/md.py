"""Molecular-dynamics bench: the batched NVT of ``analyze transport`` vs a plain ASE loop.

    .venv/bin/python bench/md.py [--backend sevenn] [--pretrained 7net-0] [--steps 40]
                                 [--temperatures 600 800 1000] [--threads 2]

One Li-P-S structure of the shipped data (beta-Li3PS4, Pnma, mp-985583), repeated to at least 8 A a
side, is run at each temperature for ``--steps`` steps of 2 fs, twice with the same force field:

* batched: ``nodestore.loop.transport.run_nvt``, every temperature's system advanced together,
  one ``ForceField.predict`` call per step for all of them (what ``analyze transport`` does);
* baseline: ASE's ``ase.md.bussi.Bussi`` on ``ForceField.as_calculator()``, one system after
  the other, one calculator call per system per step (what one would write by hand).

Both run after an untimed warm-up of each path.  It prints MD steps per second (system steps:
one system advanced by one time step) for each and their ratio.  Same thermostat (Bussi), same
time step; the positions are not compared (the random streams differ).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="sevenn")
    ap.add_argument("--pretrained", default="7net-0")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[600.0, 800.0, 1000.0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import numpy as np
    import torch
    from ase import units
    from ase.md.bussi import Bussi
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from nodestore.frames.io import read_file
    from nodestore.loop.transport import TransportSettings, run_nvt, supercell
    from nodestore.models.registry import from_config

    torch.set_num_threads(args.threads)
    data = Path(__file__).resolve().parents[1] / "nodestore" / "data" / "li-p-s" / "structures"
    cif = sorted(data.glob("*985583*")) or sorted(data.glob("Li3PS4*"))
    atoms = read_file(cif[0])[0]
    atoms.calc = None
    cfg = {"backend": args.backend}
    if args.pretrained and args.backend in ("sevenn", "chgnet"):
        cfg["pretrained"] = args.pretrained
    ff = from_config("forcefield", cfg)
    big, reps = supercell(atoms, 8.0)
    temps = list(args.temperatures)
    n = len(temps)
    print(f"{atoms.get_chemical_formula()} x {reps} = {len(big)} atoms, {n} temperatures, "
          f"{args.steps} steps of 2 fs, {args.backend} {args.pretrained or ''}, {args.threads} threads")

    def batched(steps):
        s = TransportSettings(temperatures=tuple(temps), equilibration_ps=0.0, production_ps=steps * 0.002,
                              sample_every=1)
        t = time.perf_counter()
        run_nvt(ff, [big] * n, temps, s)
        return time.perf_counter() - t

    def plain(steps):
        t = time.perf_counter()
        for k, temp in enumerate(temps):
            a = big.copy()
            a.calc = ff.as_calculator()
            MaxwellBoltzmannDistribution(a, temperature_K=temp, rng=np.random.default_rng(k))
            md = Bussi(a, 2.0 * units.fs, temperature_K=temp, taut=100 * units.fs, rng=np.random.default_rng(k))
            md.run(steps)
        return time.perf_counter() - t

    if args.steps < 20:
        ap.error("--steps must be at least 20 (the MD settings need 20 samples)")
    warm = 20
    batched(warm)
    plain(warm)
    tb = batched(args.steps)
    tp = plain(args.steps)
    sb, sp = n * args.steps / tb, n * args.steps / tp
    print(f"batched run_nvt:     {tb:8.1f} s  {sb:8.2f} system-steps/s  "
          f"({sb * len(big) * 0.002 * 86400 / 1000:.0f} atom-ns/day)")
    print(f"ASE Bussi per system: {tp:8.1f} s  {sp:8.2f} system-steps/s")
    print(f"ratio batched / ASE: {sb / sp:.2f}x")


if __name__ == "__main__":
    main()
