"""Electronic structure of the node's entries by its first-principles labeller.

For the chosen structures (the reference phases and the entries within ``max_e_hull`` of the hull,
or the frames named), the node's labeller (GPAW by default, with the node's method: functional,
cutoff, k-point rule and smearing; a denser mesh on request) runs one self-consistent calculation at the stored geometry
and returns the Kohn-Sham band gap (fundamental and direct, on the calculation's own k-point
mesh, so an upper bound of the gap over the whole Brillouin zone), the Fermi level and the
density of states (Gaussian broadening ``width``, energies relative to the Fermi level).

Results live in ``analyses/electronic.json``, keyed by frame, settings and the labeller's method:
they depend on the labeller, not on the force field, so a fine-tune leaves them current, and a
method recorded with other settings (another cutoff, another mesh) makes them recomputed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

from nodestore.errors import ValidationError

VERSION = 1
NAME = "electronic"


@dataclass(frozen=True)
class ElectronicSettings:
    width: float = 0.1  # eV, Gaussian broadening of the DOS
    npts: int = 801
    emin: float = -10.0  # eV relative to the Fermi level
    emax: float = 6.0
    #: k-point density (points per 1/Å) of the calculation, None: the node's method's; a denser
    #: mesh gives a smoother DOS and a gap closer to the Brillouin-zone gap (GPAW)
    kpt_density: float | None = None

    def __post_init__(self):
        if not (np.isfinite(self.width) and self.width > 0):
            raise ValidationError(f"the DOS broadening must be a finite number > 0 eV, not {self.width}")
        if int(self.npts) < 10:
            raise ValidationError(f"the DOS needs at least 10 points, not {self.npts}")
        if not (np.isfinite(self.emin) and np.isfinite(self.emax) and self.emin < self.emax):
            raise ValidationError(f"the DOS window needs emin < emax (eV): {self.emin}, {self.emax}")
        if self.kpt_density is not None and not (np.isfinite(self.kpt_density) and self.kpt_density > 0):
            raise ValidationError(f"the k-point density must be a finite number > 0, not {self.kpt_density}")

    def key(self, method_info: dict) -> str:
        doc = {**asdict(self), "version": VERSION,
               "method": {k: method_info.get(k) for k in ("name", "functional", "cutoff_ev", "kpoint_density",
                                                         "smearing_ev", "params")}}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ElectronicResult:
    computed: int
    cached: int
    failed: tuple  # (frame id, error)
    method: str
    settings: str
    entries: tuple  # one dict per structure: frame_id, formula, band_gap, band_gap_direct, fermi_level, ...
    commits: tuple
    plot: str | None = None


def frame_columns(node, rev: str | None = None) -> dict[str, dict[str, float]]:
    """``{column: {frame id: value}}`` for ``query``: ``band_gap``, ``band_gap_direct`` (eV) and
    ``fermi_level`` (eV, absolute, as the code reports it)."""
    from . import analyses

    out: dict[str, dict[str, float]] = {}
    for fid, rec in analyses.read(node, NAME, rev).items():
        res = rec.get("result") or {}
        for k in ("band_gap", "band_gap_direct", "fermi_level"):
            if res.get(k) is not None:
                out.setdefault(k, {})[fid] = float(res[k])
    return out


def analyze_electronic(node, settings: ElectronicSettings, max_e_hull: float = 0.05, frames: tuple = (),
                       chunk: int = 2, plot: str | None = None, progress: bool = True) -> ElectronicResult:
    """Band gaps and densities of states of the node's structures by its labeller, stored in
    ``analyses/electronic.json`` one commit per ``chunk`` structures (resumable; a rerun computes
    only what is missing)."""
    from . import analyses
    from .stages import load_labeller, make_executor

    table = node.table
    ids, images = analyses.select(node, table, max_e_hull, tuple(frames))
    if not ids:
        raise ValidationError(f"no reference phase and no entry within {max_e_hull} eV/atom of the hull")
    lab = load_labeller(node).with_electronic(settings.width, settings.npts, (settings.emin, settings.emax))
    if settings.kpt_density is not None:
        if "kpt_density" not in getattr(lab, "params", {}):
            raise ValidationError(f"the {lab.backend} labeller takes no k-point density")
        lab.params = {**lab.params, "kpt_density": float(settings.kpt_density)}
    info = lab.method_info
    method = info["name"]
    skey = settings.key(info)
    store = dict(analyses.read(node, NAME))
    p = analyses.plan(store, ids, skey, f"labeller:{method}")
    todo = list(p.todo)
    commits, failed = [], []
    with make_executor(node) as ex:
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            labels = lab.label([images[k] for k in part], executor=ex, progress=progress)
            for k, label in zip(part, labels):
                if not label["ok"]:
                    failed.append((ids[k], label.get("error") or "failed"))
                    continue
                el = dict(label["electronic"])
                el.update(formula=images[k].get_chemical_formula("metal"), n_atoms=len(images[k]),
                          energy_per_atom=label["energy"] / len(images[k]), kpoints=label.get("kpoints"),
                          seconds=label.get("seconds"), code_version=label["method_info"].get("version"))
                store[ids[k]] = {"checkpoint": f"labeller:{method}", "settings": skey,
                                 "settings_doc": {**asdict(settings), "method": method}, "result": el}
            commit = analyses.write(node, NAME, store, f"analyze electronic: {len(part)} structures ({method})")
            if commit:
                commits.append(commit)
    entries = []
    for i in ids:
        rec = store.get(i)
        if rec is None or rec["settings"] != skey:
            continue
        res = rec["result"]
        entries.append({"frame_id": i, "formula": res["formula"], "n_atoms": res["n_atoms"],
                        "band_gap": res["band_gap"], "band_gap_direct": res["band_gap_direct"],
                        "fermi_level": res["fermi_level"], "metal": bool(res["band_gap"] < 1e-3),
                        "kpoints": (res.get("kpoints") or {}).get("mesh")})
    entries.sort(key=lambda e: (-e["band_gap"], e["formula"]))
    path = plot_dos(store, [e["frame_id"] for e in entries], plot) if plot and entries else None
    return ElectronicResult(computed=len(todo) - len(failed), cached=p.cached, failed=tuple(failed), method=method,
                            settings=skey, entries=tuple(entries), commits=tuple(commits), plot=path)


def plot_dos(store: dict, ids, path) -> str:
    """One panel per structure: the density of states per atom against E - E_F, the gap shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = list(ids)
    fig, axes = plt.subplots(len(ids), 1, figsize=(6.5, 1.5 + 1.3 * len(ids)), sharex=True, squeeze=False)
    for ax, fid in zip(axes[:, 0], ids):
        res = store[fid]["result"]
        e = np.asarray(res["dos_energies"])
        d = np.asarray(res["dos"]) / max(1, res["n_atoms"])
        ax.fill_between(e, d, color="tab:blue", alpha=0.35, lw=0)
        ax.plot(e, d, color="tab:blue", lw=0.8)
        ax.axvline(0, color="k", lw=0.6, ls="--")
        gap = res["band_gap"]
        if gap > 1e-3:
            # the gap on the DOS grid: the empty stretch that holds the Fermi level
            occ = e[(e <= 0) & (d > 1e-3 * d.max())]
            lo = occ.max() if len(occ) else 0.0
            ax.axvspan(lo, lo + gap, color="tab:orange", alpha=0.2)
        ax.text(0.01, 0.85, f"{res['formula']} ({fid[:8]}): gap {gap:.2f} eV", transform=ax.transAxes, fontsize=8)
        ax.set_ylabel("states/eV/atom", fontsize=7)
    axes[-1, 0].set_xlabel("E − E_F (eV)")
    fig.suptitle("densities of states (Kohn-Sham, labeller's method)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
