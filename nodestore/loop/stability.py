"""Phase stability at finite temperature and pressure, from the node's force field.

For each structure: relax it with the force field under each pressure ``P`` (ASE's
``FrechetCellFilter`` with a scalar pressure), so that its enthalpy is ``H = E + PV``; then the
harmonic phonons of the relaxed cell (phonopy: finite displacements in a supercell at least
``supercell_min_length`` long, forces from the force field in one batched call) give the
vibrational free energy ``F_vib(T)`` and the lowest frequency.  ``G(T, P) = H + F_vib(T)`` of every
analysed structure makes one convex hull per ``(T, P)`` (pymatgen), and each structure's distance
above it is its ``E_hull(T, P)``.

A structure with modes below ``-imaginary_tol_thz`` is dynamically unstable at that pressure: it is
flagged, and phonopy's free energy leaves those modes out, so its ``G`` is a lower bound on a
structure that is not a minimum.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np

from nodestore.errors import ValidationError

#: kJ/mol (phonopy's free energy, per mole of unit cells) in eV per cell
KJ_PER_MOL = 1.0 / 96.485332
VERSION = 1


@dataclass(frozen=True)
class StabilitySettings:
    """What a result depends on, besides the structure and the force field."""

    temperatures: tuple = (0.0, 300.0, 600.0, 900.0)  # K
    pressures: tuple = (0.0,)  # GPa
    supercell_min_length: float = 8.0  # Å, each supercell vector at least this long
    displacement: float = 0.01  # Å
    mesh: float = 30.0  # phonopy's mesh length (Å): q-points per reciprocal direction
    fmax: float = 0.01  # eV/Å, relaxation before phonons
    steps: int = 400
    imaginary_tol_thz: float = 0.1

    def __post_init__(self):
        temps = tuple(float(t) for t in self.temperatures)
        press = tuple(float(p) for p in self.pressures)
        if not temps or any(not np.isfinite(t) or t < 0 for t in temps):
            raise ValidationError(f"temperatures must be finite and >= 0 K: {self.temperatures}")
        if not press or any(not np.isfinite(p) or p < -5 for p in press):
            raise ValidationError(f"pressures must be finite GPa (>= -5): {self.pressures}")
        object.__setattr__(self, "temperatures", tuple(sorted(set(temps))))
        object.__setattr__(self, "pressures", tuple(sorted(set(press))))

    def key(self) -> str:
        doc = {**asdict(self), "version": VERSION}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Phonons:
    f_vib: tuple  # eV per cell, one per temperature
    min_frequency_thz: float
    imaginary_modes: int  # (q-point, band) pairs below -tol on the mesh
    supercell: tuple
    n_displacements: int


def supercell_for(atoms, min_length: float) -> tuple:
    """The diagonal supercell whose vectors are each at least ``min_length`` long."""
    return tuple(max(1, int(np.ceil(min_length / max(L, 1e-6)))) for L in atoms.cell.lengths())


def relax_at_pressure(ff, atoms, pressure_gpa: float, fmax: float, steps: int):
    """(relaxed copy, energy eV, converged) under ``pressure_gpa``; energies on ``ff``'s scale."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from ase.units import GPa

    if not ff.supports_stress:
        raise ValidationError(f"the {ff.backend} force field has no stress: it cannot relax a cell under pressure")
    a = atoms.copy()
    a.calc = ff.as_calculator()
    filt = FrechetCellFilter(a, scalar_pressure=pressure_gpa * GPa)
    opt = FIRE(filt, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    e = float(a.get_potential_energy())
    if not np.isfinite(e):
        raise ValidationError(f"{a.get_chemical_formula()}: non-finite energy while relaxing at {pressure_gpa} GPa")
    return a, e, converged


def harmonic_phonons(ff, atoms, settings: StabilitySettings) -> Phonons:
    """Finite-displacement phonons of ``atoms`` (relaxed) with ``ff``'s forces."""
    from ase import Atoms
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    unit = PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=np.array(atoms.cell),
                        scaled_positions=atoms.get_scaled_positions())
    sc = supercell_for(atoms, settings.supercell_min_length)
    ph = Phonopy(unit, supercell_matrix=np.diag(sc), primitive_matrix="P")  # per the given cell
    ph.generate_displacements(distance=settings.displacement)
    cells = [Atoms(symbols=s.symbols, cell=s.cell, scaled_positions=s.scaled_positions, pbc=True)
             for s in ph.supercells_with_displacements]
    # batches of at most ~1,000 atoms: a model's batched graph of 32 large supercells took GBs
    batch = max(1, 1024 // max(1, len(cells[0]))) if cells else 1
    forces = np.array([r["forces"] for r in ff.predict(cells, batch_size=batch)])
    if not np.all(np.isfinite(forces)):
        raise ValidationError(f"{atoms.get_chemical_formula()}: non-finite forces in a displaced supercell")
    forces -= forces.mean(axis=1, keepdims=True)  # no net force: translational invariance
    ph.forces = forces
    ph.produce_force_constants()
    ph.symmetrize_force_constants()
    ph.run_mesh(settings.mesh, is_gamma_center=True)
    freqs = np.asarray(ph.get_mesh_dict()["frequencies"])
    try:  # the three zero-frequency acoustic modes at Gamma are translations, not vibrations
        ph.run_thermal_properties(temperatures=list(settings.temperatures), exclude_gamma_acoustic=True)
    except TypeError:  # a phonopy before that option
        ph.run_thermal_properties(temperatures=list(settings.temperatures))
    tp = ph.get_thermal_properties_dict()
    f_vib = tuple(float(x) * KJ_PER_MOL for x in tp["free_energy"])
    if not all(np.isfinite(f_vib)):
        raise ValidationError(f"{atoms.get_chemical_formula()}: the phonon free energy is not finite")
    return Phonons(f_vib=f_vib, min_frequency_thz=float(freqs.min()),
                   imaginary_modes=int((freqs < -settings.imaginary_tol_thz).sum()),
                   supercell=sc, n_displacements=len(cells))


def stability_of(ff, atoms, settings: StabilitySettings) -> dict:
    """Enthalpy and harmonic free energies of one structure at every ``(T, P)`` of ``settings``
    (a JSON-ready dict; energies per atom, eV)."""
    from ase.units import GPa

    n = len(atoms)
    out = {"formula": atoms.get_chemical_formula("metal"), "n_atoms": n, "pressures": []}
    for p in settings.pressures:
        relaxed, e, converged = relax_at_pressure(ff, atoms, p, settings.fmax, settings.steps)
        v = float(relaxed.get_volume())
        h = e + p * GPa * v
        ph = harmonic_phonons(ff, relaxed, settings)
        out["pressures"].append({
            "pressure_gpa": p, "energy_per_atom": e / n, "volume_per_atom": v / n, "enthalpy_per_atom": h / n,
            "relax_converged": converged,
            "f_vib_per_atom": [f / n for f in ph.f_vib],
            "g_per_atom": [(h + f) / n for f in ph.f_vib],
            "min_frequency_thz": ph.min_frequency_thz, "imaginary_modes": ph.imaginary_modes,
            "dynamically_stable": ph.imaginary_modes == 0,
            "supercell": list(ph.supercell), "n_displacements": ph.n_displacements,
        })
    return out


def _task(args):
    ff, atoms, settings = args
    try:
        return {"ok": True, **stability_of(ff, atoms, settings)}
    except ValidationError as exc:
        return {"ok": False, "error": str(exc)}


@dataclass(frozen=True)
class StabilityMap:
    """``e_hull[i][p][t]``: structure ``i``'s distance above the ``G(T, P)`` hull, eV/atom."""

    keys: tuple
    formulas: tuple
    temperatures: tuple
    pressures: tuple
    e_hull: tuple
    stable: tuple = field(default=())  # per (p, t): the formulas on the hull


def g_hulls(results: dict, settings: StabilitySettings) -> StabilityMap:
    """One pymatgen hull per ``(T, P)`` over every result (``{key: stability_of(...)}``)."""
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    keys = [k for k, r in results.items() if r.get("ok", True) and r.get("pressures")]
    comps = [Composition(results[k]["formula"]) for k in keys]
    elements = sorted({el.symbol for c in comps for el in c.elements})
    missing = [el for el in elements if not any(c.is_element and c.elements[0].symbol == el for c in comps)]
    if missing:
        raise ValidationError(f"no analysed phase of element(s) {', '.join(missing)}: the G(T, P) hull "
                              "needs every element's own phase (analyse the node's references too)")
    e_hull = [[[float("nan")] * len(settings.temperatures) for _ in settings.pressures] for _ in keys]
    stable = []
    for ip, _ in enumerate(settings.pressures):
        row = []
        for it, _ in enumerate(settings.temperatures):
            entries = []
            for k, c in zip(keys, comps):
                g = results[k]["pressures"][ip]["g_per_atom"][it]
                entries.append(PDEntry(c, g * c.num_atoms, name=k))
            pd = PhaseDiagram(entries)
            for i, e in enumerate(entries):
                e_hull[i][ip][it] = float(pd.get_e_above_hull(e, allow_negative=True))
            row.append(sorted({e.composition.reduced_formula for e in pd.stable_entries}))
        stable.append(row)
    return StabilityMap(keys=tuple(keys), formulas=tuple(c.reduced_formula for c in comps),
                        temperatures=settings.temperatures, pressures=settings.pressures,
                        e_hull=tuple(tuple(tuple(x) for x in r) for r in e_hull),
                        stable=tuple(tuple(tuple(s) for s in r) for r in stable))


def column_name(kind: str, t: float, p: float) -> str:
    """Query name of one ``(T, P)`` value, e.g. ``g_hull_300K_0GPa``."""
    return f"{kind}_{t:g}K_{p:g}GPa".replace("-", "m").replace(".", "p")


def plot_map(smap: StabilityMap, results: dict, path) -> str:
    """E_hull(T) of every structure, one panel per pressure; dynamically unstable ones dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(smap.pressures)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4), squeeze=False, sharey=True)
    for ip, p in enumerate(smap.pressures):
        ax = axes[0][ip]
        for i, k in enumerate(smap.keys):
            res = results[k]["pressures"][ip]
            ax.plot(smap.temperatures, [1000 * x for x in smap.e_hull[i][ip]], marker="o", ms=3,
                    ls="-" if res["dynamically_stable"] else "--", label=f"{smap.formulas[i]} {k[:6]}")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("T (K)")
        ax.set_title(f"P = {p:g} GPa")
    axes[0][0].set_ylabel("E_hull(T, P) (meV/atom)")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle("harmonic G(T, P) hull (dashed: imaginary modes)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


# ---------------------------------------------------------------------- the node analysis
#: the node's cache of results, one per structure (frame id), with what they were computed with
NAME = "stability"
CACHE = f"analyses/{NAME}.json"


@dataclass(frozen=True)
class StabilityResult:
    computed: int  # structures computed in this run
    cached: int  # results reused (same settings, same force field)
    stale: tuple  # frame ids whose stored result is of another force field (recomputed unless kept)
    failed: tuple  # (frame id, error)
    checkpoint: str
    settings: str
    entries: tuple  # one dict per structure on the hull: frame id, formula, flags, E_hull(T, P)
    stable: tuple  # per pressure, per temperature: the formulas on the G(T, P) hull
    temperatures: tuple
    pressures: tuple
    commits: tuple
    plot: str | None = None


def read_cache(node, rev: str | None = None) -> dict:
    """The stored results (``{frame id: {"checkpoint", "settings", "result"}}``), at ``rev``."""
    from . import analyses

    return analyses.read(node, NAME, rev)


def frame_columns(node, rev: str | None = None) -> dict[str, dict[str, float]]:
    """``{column: {frame id: value}}`` for ``query``: ``g_hull_<T>K_<P>GPa`` from the stored results
    (one G hull per settings they were computed with), ``dynamically_stable`` (1/0) and
    ``min_frequency_thz``, ``stability_stale`` (1 where the result is of another force field than
    the current one)."""
    from . import analyses

    store = read_cache(node, rev)
    if not store:
        return {}
    current = analyses.current_checkpoint(node, rev)
    out: dict[str, dict[str, float]] = {"dynamically_stable": {}, "min_frequency_thz": {}, "stability_stale": {}}
    groups: dict[str, dict] = {}
    for fid, rec in store.items():
        res = rec.get("result") or {}
        if not res.get("pressures"):
            continue
        groups.setdefault(rec["settings"], {})[fid] = rec
        out["dynamically_stable"][fid] = float(all(p["dynamically_stable"] for p in res["pressures"]))
        out["min_frequency_thz"][fid] = min(p["min_frequency_thz"] for p in res["pressures"])
        out["stability_stale"][fid] = float(analyses.is_stale(rec["checkpoint"], current))
    for recs in groups.values():
        doc = next(iter(recs.values())).get("settings_doc") or {}
        try:
            settings = StabilitySettings(temperatures=tuple(doc.get("temperatures", ())),
                                         pressures=tuple(doc.get("pressures", ())))
            smap = g_hulls({k: r["result"] for k, r in recs.items()}, settings)
        except (ValidationError, TypeError, KeyError, IndexError):
            continue  # a group without every element's phase has no hull
        for i, fid in enumerate(smap.keys):
            for ip, p in enumerate(smap.pressures):
                for it, t in enumerate(smap.temperatures):
                    out.setdefault(column_name("g_hull", t, p), {})[fid] = smap.e_hull[i][ip][it]
    return out


def plot_stored(node, path, rev: str | None = None) -> str | None:
    """The stability map of the stored results at ``rev`` (the settings with the most structures);
    None when there is none or its structures hold no hull."""
    store = read_cache(node, rev)
    groups: dict[str, dict] = {}
    for fid, rec in store.items():
        if (rec.get("result") or {}).get("pressures"):
            groups.setdefault(rec["settings"], {})[fid] = rec
    if not groups:
        return None
    recs = max(groups.values(), key=len)
    doc = next(iter(recs.values())).get("settings_doc") or {}
    try:
        settings = StabilitySettings(temperatures=tuple(doc.get("temperatures", ())),
                                     pressures=tuple(doc.get("pressures", ())))
        results = {k: r["result"] for k, r in recs.items()}
        return plot_map(g_hulls(results, settings), results, path)
    except (ValidationError, TypeError, KeyError, IndexError):
        return None


def _structures(node, table, max_e_hull: float):
    """(frame ids, Atoms): the node's reference phases and its entries within ``max_e_hull`` of
    the hull of the reference method, one row per frame."""
    from . import analyses

    return analyses.select(node, table, max_e_hull)


def analyze_stability(node, settings: StabilitySettings, max_e_hull: float = 0.1, keep_stale: bool = False,
                      chunk: int = 4, plot: str | None = None, progress: bool = True) -> StabilityResult:
    """G(T, P) hulls of the node's references and near-stable entries with its current force field.

    Results are stored in the node (``analyses/stability.json``), one commit per ``chunk``
    structures, so that a killed run keeps what it finished; a rerun computes only the
    structures without a result of these settings and this force field (``keep_stale``: a
    result of an earlier force field is used as it is, and reported stale).
    """
    from . import analyses
    from .stages import current_forcefield, make_executor, on_method_scale

    table = node.table
    ids, images = _structures(node, table, max_e_hull)
    if not ids:
        raise ValidationError("no reference phase or entry of the reference method to analyse")
    cid, ff = current_forcefield(node)
    ff = on_method_scale(ff, table, node.config["reference_method"])
    checkpoint = cid or f"params:{ff.method}"
    skey = settings.key()
    store = dict(read_cache(node))
    todo_plan = analyses.plan(store, ids, skey, checkpoint, keep_stale)
    todo, stale, cached = list(todo_plan.todo), todo_plan.stale, todo_plan.cached
    commits, failed = [], []
    with make_executor(node) as ex:
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            out = ex.map(_task, [(ff, images[k], settings) for k in part], progress=progress)
            for k, r in zip(part, out):
                if r.get("ok"):
                    store[ids[k]] = {"checkpoint": checkpoint, "settings": skey, "settings_doc": asdict(settings),
                                     "result": r}
                else:
                    failed.append((ids[k], r.get("error", "")))
            commit = analyses.write(node, NAME, store, f"analyze stability: {len(part)} structures ({checkpoint})")
            if commit:
                commits.append(commit)
    results = {i: store[i]["result"] for i in ids if i in store and store[i]["settings"] == skey}
    smap = g_hulls(results, settings)
    entries = []
    for i, k in enumerate(smap.keys):
        rec = store[k]
        res = rec["result"]
        row = {"frame_id": k, "formula": smap.formulas[i], "stale": rec["checkpoint"] != checkpoint,
               "dynamically_stable": all(p["dynamically_stable"] for p in res["pressures"]),
               "min_frequency_thz": min(p["min_frequency_thz"] for p in res["pressures"])}
        for ip, p in enumerate(smap.pressures):
            for it, t in enumerate(smap.temperatures):
                row[column_name("g_hull", t, p)] = smap.e_hull[i][ip][it]
        entries.append(row)
    path = plot_map(smap, results, plot) if plot else None
    return StabilityResult(computed=len(todo) - len(failed), cached=cached, stale=stale, failed=tuple(failed),
                           checkpoint=checkpoint, settings=skey, entries=tuple(entries), stable=smap.stable,
                           temperatures=smap.temperatures, pressures=smap.pressures, commits=tuple(commits),
                           plot=path)
