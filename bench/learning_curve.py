"""Learning curve of the node's force fields (the coevolution paper's Fig. 1e), every backend in one run.

    .venv/bin/python bench/learning_curve.py [--quick] [--sizes 5 10 20 50 100 160]
        [--backends sevenn-0 chgnet sevenn-l3i5 orb-tiny] [--curve-backends sevenn-0]
        [--datasets aimd li3ps4] [--out bench/out/learning_curve]

Data (shipped in nodestore/data/li-p-s/labelled, licences beside them):

* ``aimd``: 200 AIMD frames of Li27P12S44 (VASP-PBE).  Training frames are drawn
  (seeded) from the first 160; the held-out frames are the **last 40, one contiguous
  block**, so that neighbouring MD frames cannot leak into training.
* ``li3ps4``: the Li3PS4 sample frames (PBEsol), deduplicated by content (the
  source's train/val/test files share frames); held out: the frames of the test
  file that are in neither other file.

For every backend, in the same run and on the same held-out frames:

* ``pretrained``: the model as shipped, no fit at all;
* ``offset``: per-element reference energies fitted on the N training frames
  (``ForceField.fit_references``), no gradient step (the baseline to beat);
* ``finetuned``: ``ForceField.finetune`` with the node's default recipe on the N
  frames (it holds out ``val_fraction`` of them for early stopping, refits the
  references first), within ``--budget-per-frame`` x N seconds (clipped to
  ``--budget-min``/``--budget-max``; ``--other-budget`` for the backends not in
  ``--curve-backends``).

The fine-tuned curve runs over every size for ``--curve-backends`` and at the
largest size for the other backends (``pretrained`` and ``offset`` are exact for
every backend and size: one prediction pass each).  Prints one table, writes
``learning_curve.json`` and ``learning_curve.png``.  ``--quick``: sizes 10 and 50
of the AIMD set, one backend (under 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "nodestore" / "data" / "li-p-s" / "labelled"

BACKENDS = {
    "sevenn-0": ("sevenn", {"pretrained": "7net-0"}),
    "sevenn-l3i5": ("sevenn", {"pretrained": "7net-l3i5"}),
    "chgnet": ("chgnet", {"pretrained": "0.3.0"}),
    "orb-tiny": ("orb", {"architecture": "orb-v3-direct"}),  # no local orb weights: a tiny model from scratch
}


def _key(a):
    import numpy as np
    return (tuple(a.numbers), tuple(np.round(a.cell.array.ravel(), 6)), tuple(np.round(a.positions.ravel(), 6)))


def datasets(names):
    from ase.io import read

    out = {}
    if "aimd" in names:
        frames = read(DATA / "lips_aimd_Li27P12S44.extxyz", index=":")
        out["aimd"] = {"label": "AIMD Li27P12S44 (VASP-PBE), last 40 held out", "pool": frames[:160],
                       "test": frames[160:], "method": "vasp-pbe"}
    if "li3ps4" in names:
        parts = {f: read(DATA / f"Li3PS4_sample_{f}.xyz", index=":") for f in ("train", "val", "test")}
        seen, pool = set(), []
        for a in parts["train"] + parts["val"]:
            if _key(a) not in seen:
                seen.add(_key(a))
                pool.append(a)
        test = []
        for a in parts["test"]:
            if _key(a) not in seen:
                seen.add(_key(a))
                test.append(a)
        out["li3ps4"] = {"label": "Li3PS4 sample (PBEsol), test file held out", "pool": pool, "test": test,
                         "method": "pbesol"}
    return out


def _errors(pred_e, pred_f, frames, shift=None):
    import numpy as np

    de, df = [], []
    for e, f, a in zip(pred_e, pred_f, frames):
        s = shift(a.numbers) if shift else 0.0
        de.append((e + s - a.get_potential_energy()) / len(a))
        df.append((f - a.get_forces()).ravel())
    de, df = np.array(de), np.concatenate(df)
    return {"energy_rmse_mev": float(np.sqrt(np.mean(de ** 2)) * 1000),
            "energy_bias_mev": float(np.mean(de) * 1000), "force_rmse": float(np.sqrt(np.mean(df ** 2)))}


def run(args) -> list[dict]:
    import numpy as np
    import torch

    from nodestore.models import registry
    from nodestore.models.references import ReferenceEnergies, fit_shift

    torch.set_num_threads(args.threads)
    rows = []
    for dname, d in datasets(args.datasets).items():
        pool, test = d["pool"], d["test"]
        sizes = sorted({min(n, len(pool)) for n in args.sizes})
        rng = np.random.default_rng(args.seed)
        order = rng.permutation(len(pool))
        # nested training sets: the N frames of a smaller size are among those of a larger one
        train_sets = {n: [pool[i] for i in sorted(order[:n])] for n in sizes}
        print(f"\n== {d['label']}: pool {len(pool)}, held out {len(test)}, sizes {sizes}", flush=True)
        for bname in args.backends:
            backend, kw = BACKENDS[bname]
            t0 = time.perf_counter()
            ff = registry.create("forcefield", backend, **kw)
            pt = ff.predict(test)
            pp = ff.predict(pool)
            t_pred = time.perf_counter() - t0
            test_e, test_f = [p["energy"] for p in pt], [p["forces"] for p in pt]
            base = _errors(test_e, test_f, test)
            print(f"{bname}: pretrained E {base['energy_rmse_mev']:.1f} meV/atom, F {base['force_rmse']:.3f} eV/A "
                  f"({t_pred:.0f} s for {len(test) + len(pool)} predictions)", flush=True)
            for n in sizes:
                idx = [int(i) for i in sorted(order[:n])]
                shift, rec = fit_shift([pool[i].numbers for i in idx],
                                       [pool[i].get_potential_energy() - pp[i]["energy"] for i in idx])
                refs = ReferenceEnergies(shift=shift)
                off = _errors(test_e, test_f, test, refs.shift_of)
                row = {"dataset": dname, "backend": bname, "n": n, "pretrained": base, "offset": off,
                       "offset_rank": rec["rank"]}
                if bname in args.curve_backends or n == sizes[-1]:
                    t = time.perf_counter()
                    budget = args.budget(n) if bname in args.curve_backends else min(args.budget(n), args.other_budget)
                    tuned = ff.finetune(train_sets[n], method=d["method"], max_seconds=budget,
                                        seed=args.seed, **args.recipe)
                    t_ft = time.perf_counter() - t
                    pf = tuned.predict(test)
                    row["finetuned"] = _errors([p["energy"] for p in pf], [p["forces"] for p in pf], test)
                    m = tuned.metrics
                    row["finetune"] = {"seconds": round(t_ft, 1), "epochs": m["epochs"], "best_epoch": m["best_epoch"],
                                       "n_train": m["n_train"], "n_val": m["n_val"],
                                       "frozen_backbone": m["frozen_backbone"]}
                rows.append(row)
                if args.partial is not None:  # every row on disk as soon as it is measured
                    args.partial.write_text(json.dumps(rows, indent=1))
                ft = row.get("finetuned")
                print(f"  N={n:>3}: offset E {off['energy_rmse_mev']:.2f} meV/atom"
                      + (f" | fine-tuned E {ft['energy_rmse_mev']:.2f} meV/atom (bias {ft['energy_bias_mev']:+.2f}), F {ft['force_rmse']:.3f} eV/A "
                         f"({row['finetune']['seconds']:.0f} s, {row['finetune']['epochs']} epochs, best "
                         f"{row['finetune']['best_epoch']})" if ft else ""), flush=True)
            del ff
    return rows


def table(rows) -> str:
    lines = ["| data | backend | N | pretrained E (meV/atom) | offset-only E | fine-tuned E | pretrained F (eV/Å) "
             "| fine-tuned F | fine-tune s (epochs) |", "|" + "---|" * 9]
    for r in rows:
        ft, info = r.get("finetuned"), r.get("finetune")
        cells = [r["dataset"], r["backend"], str(r["n"]), f"{r['pretrained']['energy_rmse_mev']:.1f}",
                 f"{r['offset']['energy_rmse_mev']:.2f}", f"{ft['energy_rmse_mev']:.2f}" if ft else "-",
                 f"{r['pretrained']['force_rmse']:.3f}", f"{ft['force_rmse']:.3f}" if ft else "-",
                 f"{info['seconds']:.0f} ({info['epochs']})" if info else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dsets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(len(dsets), 2, figsize=(10, 3.6 * len(dsets)), squeeze=False)
    for i, dname in enumerate(dsets):
        for b in sorted({r["backend"] for r in rows if r["dataset"] == dname}):
            rs = [r for r in rows if r["dataset"] == dname and r["backend"] == b]
            n = [r["n"] for r in rs]
            line, = axes[i, 0].plot(n, [r["offset"]["energy_rmse_mev"] for r in rs], "--", alpha=0.7,
                                    label=f"{b} offset only")
            ft = [r for r in rs if "finetuned" in r]
            if ft:
                axes[i, 0].plot([r["n"] for r in ft], [r["finetuned"]["energy_rmse_mev"] for r in ft], "o-",
                                color=line.get_color(), label=f"{b} fine-tuned")
                axes[i, 1].plot([r["n"] for r in ft], [r["finetuned"]["force_rmse"] for r in ft], "o-",
                                color=line.get_color(), label=f"{b} fine-tuned")
            axes[i, 1].axhline(rs[0]["pretrained"]["force_rmse"], ls=":", color=line.get_color(), alpha=0.7,
                               label=f"{b} pretrained")
        for j, what in enumerate(("energy RMSE (meV/atom)", "force RMSE (eV/Å)")):
            ax = axes[i, j]
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("labelled frames of the method (N)")
            ax.set_ylabel(what)
            ax.set_title(f"{dname}: held-out {what.split(' (')[0]}")
            ax.grid(alpha=0.3, which="both")
        axes[i, 1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="AIMD, N = 10 and 50, the default backend only")
    p.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20, 50, 100, 160])
    p.add_argument("--backends", nargs="+", default=["sevenn-0", "chgnet", "sevenn-l3i5", "orb-tiny"],
                   choices=sorted(BACKENDS))
    p.add_argument("--curve-backends", nargs="+", default=["sevenn-0"],
                   help="backends fine-tuned at every size (the others at the largest size only)")
    p.add_argument("--datasets", nargs="+", default=["aimd", "li3ps4"], choices=["aimd", "li3ps4"])
    p.add_argument("--budget-per-frame", type=float, default=5.0,
                   help="fine-tune seconds per training frame (with --budget-min/--budget-max)")
    p.add_argument("--budget-min", type=float, default=60.0)
    p.add_argument("--budget-max", type=float, default=900.0)
    p.add_argument("--other-budget", type=float, default=450.0,
                   help="fine-tune seconds for the backends outside --curve-backends (at the largest size)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe default, e.g. --set energy_weight=100 --set freeze_backbone=true")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "learning_curve")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.datasets = [10, 50], ["aimd"]
        args.backends = args.curve_backends = ["sevenn-0"]
        args.budget_max = min(args.budget_max, 150.0)
    warnings.filterwarnings("ignore")
    from nodestore.models.forcefield import DEFAULT_RECIPE

    import yaml

    args.recipe = dict(DEFAULT_RECIPE)
    for item in args.overrides:
        key, _, value = item.partition("=")
        if key not in DEFAULT_RECIPE:
            p.error(f"--set {key}: not a recipe key ({', '.join(DEFAULT_RECIPE)})")
        args.recipe[key] = yaml.safe_load(value)
    args.budget = lambda n: max(args.budget_min, min(args.budget_max, args.budget_per_frame * n))
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    args.partial = args.out / "learning_curve.partial.json"
    rows = run(args)
    doc = {"recipe": args.recipe, "sizes": args.sizes, "seconds": round(time.perf_counter() - t0, 1), "rows": rows}
    (args.out / "learning_curve.json").write_text(json.dumps(doc, indent=1))
    plot(rows, args.out / "learning_curve.png")
    print("\n" + table(rows))
    print(f"\nrecipe {args.recipe}; total {doc['seconds']:.0f} s; wrote {args.out}/learning_curve.json and .png")


if __name__ == "__main__":
    main()
