"""Li-ion transport from the node's force field: NVT molecular dynamics, diffusivity, Arrhenius.

For each Li-containing structure (the node's reference phases and near-stable entries, or the
frames asked for), a supercell at least ``supercell_min_length`` long in each direction is run at
each temperature: velocity Verlet with the stochastic velocity-rescaling thermostat of Bussi,
Donadio and Parrinello (J. Chem. Phys. 126, 014101, 2007), whose global rescaling leaves the
dynamics, and so the diffusion, close to Newtonian.  All systems of a run (every structure at
every temperature) advance together, one batched force call per step, which is what makes a
machine-learned force field fast (``bench/md.py`` measures it against a plain ASE loop).

After equilibration, the Li positions sampled every ``sample_every`` steps go to kinisi
(McCluskey et al.), which estimates the tracer diffusivity ``D*`` from the mean-squared
displacement with its covariance, as posterior samples (uncertainties included).  The Arrhenius
fit ``D = D0 exp(-Ea / kT)`` is made on each joint draw of those samples, so the activation
energy and the extrapolated room-temperature diffusivity come with credible intervals.  The
conductivity is Nernst-Einstein's from the tracer diffusivity (a Haven ratio of 1):
``sigma = n q^2 D / (k T)``.

A temperature whose ``D*`` is not resolved from zero (its posterior mean under twice its standard
deviation, or a final mean-squared displacement under ``MIN_MSD``: vibration, not diffusion) is reported as such and left out of the fit.
MD runs at the stored cell (the labeller's volume): NVT, no pressure control.

Each temperature's result is stored on its own (per structure, settings and checkpoint), so a run
at new temperatures adds to the earlier ones and the fit spans them all: an Arrhenius window
(where one mechanism holds) is chosen by the temperatures asked for, not by one run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

from nodestore.errors import ValidationError

VERSION = 2  # 2: a D* is resolved only with a mean-squared displacement beyond MIN_MSD
NAME = "transport"
#: the Li mean-squared displacement (Å^2) at the end of the production run below which a D* is
#: vibration, not diffusion (a Li hop is 2-3 Å; thermal vibration alone gives 0.2-0.6 Å^2)
MIN_MSD = 1.0
#: room temperature of the extrapolation (K)
ROOM = 300.0
#: Boltzmann constant (eV/K) and elementary charge (C), CODATA
K_B = 8.617333262e-5
E_CHARGE = 1.602176634e-19


@dataclass(frozen=True)
class TransportSettings:
    """What a result depends on, besides the structure and the force field."""

    temperatures: tuple = (600.0, 800.0, 1000.0)  # K
    supercell_min_length: float = 8.0  # Å
    timestep_fs: float = 2.0
    equilibration_ps: float = 1.0
    production_ps: float = 10.0
    sample_every: int = 10  # MD steps between the positions given to kinisi
    thermostat_fs: float = 100.0  # Bussi's time constant
    fit_start: float = 0.2  # fraction of the production time where the MSD fit starts
    specie: str = "Li"
    seed: int = 0

    def __post_init__(self):
        temps = tuple(float(t) for t in self.temperatures)
        if not temps or any(not np.isfinite(t) or t <= 0 for t in temps):
            raise ValidationError(f"temperatures must be finite and > 0 K: {self.temperatures}")
        object.__setattr__(self, "temperatures", tuple(sorted(set(temps))))
        for name in ("supercell_min_length", "timestep_fs", "production_ps", "thermostat_fs"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValidationError(f"{name} must be a finite number > 0, not {v}")
        if not (np.isfinite(self.equilibration_ps) and self.equilibration_ps >= 0):
            raise ValidationError(f"equilibration_ps must be >= 0, not {self.equilibration_ps}")
        if self.timestep_fs > 5:
            raise ValidationError(f"a {self.timestep_fs} fs time step is too long for Li (at most 5 fs)")
        if int(self.sample_every) < 1 or self.n_samples < 20:
            raise ValidationError(f"{self.n_samples} samples of the production run (production_ps / "
                                  "(timestep_fs * sample_every)): at least 20 are needed for an MSD fit")
        if not 0 < self.fit_start < 0.9:
            raise ValidationError(f"fit_start is a fraction of the production time in (0, 0.9), not {self.fit_start}")

    @property
    def n_equilibration(self) -> int:
        return int(round(1000 * self.equilibration_ps / self.timestep_fs))

    @property
    def n_production(self) -> int:
        n = int(round(1000 * self.production_ps / self.timestep_fs))
        return n - n % int(self.sample_every)

    @property
    def n_samples(self) -> int:
        return self.n_production // max(1, int(self.sample_every))

    def key(self) -> str:
        """Hash of what a result depends on besides the structure, the force field and the
        temperature.  Each temperature's result is stored on its own under this key, so a later
        run of the same settings at other temperatures adds to it, and the Arrhenius fit can use
        temperatures from several runs."""
        return run_key(asdict(self))

    def doc(self) -> dict:
        """The settings without the temperatures (what ``key`` hashes), for the stored record."""
        return _run_settings(asdict(self))


def _run_settings(doc: dict) -> dict:
    """A settings document without its temperatures."""
    return {k: v for k, v in doc.items() if k != "temperatures"}


def run_key(doc: dict) -> str:
    """``TransportSettings.key`` of a settings document (its temperatures, if any, left out)."""
    return hashlib.sha256(json.dumps({**_run_settings(doc), "version": VERSION}, sort_keys=True).encode()).hexdigest()[:12]


def supercell(atoms, min_length: float):
    """``atoms`` repeated along each cell vector until each perpendicular width is at least
    ``min_length`` (so that no atom sees its own image within that distance)."""
    cell = np.asarray(atoms.cell.array)
    vol = abs(np.linalg.det(cell))
    widths = [vol / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)]
    reps = tuple(max(1, int(np.ceil(min_length / max(w, 1e-6) - 1e-9))) for w in widths)
    return atoms.repeat(reps), reps


# ---------------------------------------------------------------------- batched NVT
def _bussi_factor(kinetic: float, target: float, ndof: int, c: float, rng) -> float:
    """Bussi-Donadio-Parrinello rescaling factor of the velocities for one step."""
    if kinetic <= 0:
        return 1.0
    r1 = rng.standard_normal()
    s = rng.chisquare(ndof - 1) if ndof > 1 else 0.0
    new = (kinetic * c + target / ndof * (1 - c) * (r1 * r1 + s)
           + 2 * r1 * np.sqrt(c * (1 - c) * kinetic * target / ndof))
    return float(np.sqrt(max(new, 0.0) / kinetic))


def run_nvt(ff, systems, temperatures, settings: TransportSettings, progress: bool = False,
            thermostat: bool = True, record=None) -> list[dict]:
    """NVT molecular dynamics of every system at its temperature, one batched force call per step.

    ``systems``: ASE Atoms (periodic); ``temperatures``: one per system (K).  Returns per system
    ``{"positions": (n_samples + 1, N, 3) wrapped positions sampled every ``sample_every``
    steps of production (the first at its start), "temperature": mean kinetic temperature of
    production, "steps": steps run}``.  ``thermostat=False`` runs NVE (a test of the integrator);
    ``record(step, energies, kinetic)`` is called every step when given.
    """
    from ase import units

    rng = np.random.default_rng(settings.seed)
    dt = settings.timestep_fs * units.fs
    c = float(np.exp(-settings.timestep_fs / settings.thermostat_fs))
    cells = [s.copy() for s in systems]
    masses = [a.get_masses()[:, None] for a in cells]
    ndof = [3 * len(a) - 3 for a in cells]
    targets = [0.5 * nd * units.kB * t for nd, t in zip(ndof, temperatures)]
    vel = []
    for a, m, t in zip(cells, masses, temperatures):  # Maxwell-Boltzmann, no net momentum
        v = rng.standard_normal((len(a), 3)) * np.sqrt(units.kB * t / m)
        v -= (m * v).sum(axis=0) / m.sum()
        vel.append(v)
    pos = [a.positions.copy() for a in cells]
    inv_cells = [np.linalg.inv(a.cell.array) for a in cells]

    def wrapped(i):
        frac = pos[i] @ inv_cells[i]
        return (frac - np.floor(frac)) @ cells[i].cell.array

    def forces():
        for i, a in enumerate(cells):
            a.positions = wrapped(i)
        out = ff.predict(cells, batch_size=max(1, len(cells)))
        f = [np.asarray(r["forces"], dtype=float) for r in out]
        e = [float(r["energy"]) for r in out]
        if not all(np.isfinite(x).all() for x in f):
            raise ValidationError("non-finite forces in molecular dynamics: the force field left its domain")
        return f, e

    n_eq, n_prod, every = settings.n_equilibration, settings.n_production, int(settings.sample_every)
    total = n_eq + n_prod
    f, e = forces()
    samples = [[] for _ in cells]
    kin_trace = np.zeros((len(cells), n_prod))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"MD {len(cells)} systems", unit="step", leave=False)
    for step in range(total):
        for i in range(len(cells)):
            if thermostat:  # half of the thermostat before the Verlet step, half after
                k = 0.5 * float((masses[i] * vel[i] ** 2).sum())
                vel[i] *= _bussi_factor(k, targets[i], ndof[i], np.sqrt(c), rng)
            vel[i] += 0.5 * dt * f[i] / masses[i]
            pos[i] += dt * vel[i]
        f, e = forces()
        kin = np.zeros(len(cells))
        for i in range(len(cells)):
            vel[i] += 0.5 * dt * f[i] / masses[i]
            k = 0.5 * float((masses[i] * vel[i] ** 2).sum())
            if thermostat:
                vel[i] *= _bussi_factor(k, targets[i], ndof[i], np.sqrt(c), rng)
                k = 0.5 * float((masses[i] * vel[i] ** 2).sum())
            kin[i] = k
        if record is not None:
            record(step, e, kin)
        if step >= n_eq:
            kin_trace[:, step - n_eq] = kin
            if (step - n_eq) % every == 0:
                for i in range(len(cells)):
                    samples[i].append(wrapped(i))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    for i in range(len(cells)):
        samples[i].append(wrapped(i))
    to_kelvin = [2 / (nd * units.kB) for nd in ndof]
    return [{"positions": np.array(samples[i]), "steps": total,
             "temperature": float(kin_trace[i].sum() / max(n_prod, 1) * to_kelvin[i]),
             "temperature_sem": blocking_sem(kin_trace[i] * to_kelvin[i])}
            for i in range(len(cells))]


def blocking_sem(x) -> float:
    """Standard error of the mean of a correlated series by Flyvbjerg-Petersen blocking: the
    series is halved by averaging neighbours until fewer than 16 blocks are left, and the
    largest naive standard error over the levels is taken (it grows until the blocks are longer
    than the correlation time).  NaN for fewer than 16 points."""
    x = np.asarray(x, dtype=float)
    best = float("nan")
    while len(x) >= 16:
        se = float(np.std(x, ddof=1) / np.sqrt(len(x)))
        best = se if not np.isfinite(best) else max(best, se)
        n = len(x) // 2 * 2
        x = 0.5 * (x[:n:2] + x[1:n:2])
    return best


# ---------------------------------------------------------------------- statistics
def diffusivity(atoms, positions, settings: TransportSettings, n_keep: int = 400) -> dict:
    """kinisi's tracer diffusivity of ``settings.specie`` from sampled positions (wrapped, Å).

    Returns ``{"d_mean", "d_std", "d_samples" (at most ``n_keep``), "msd_time_ps", "msd",
    "msd_final", "resolved"}``, D in cm^2/s."""
    import scipp as sc
    from ase import Atoms
    from kinisi.analyze import DiffusionAnalyzer

    frames = [Atoms(numbers=atoms.numbers, positions=p, cell=atoms.cell, pbc=True) for p in positions]
    an = DiffusionAnalyzer.from_ase(frames, specie=settings.specie,
                                    time_step=sc.scalar(float(settings.timestep_fs), unit="fs"),
                                    step_skip=sc.scalar(int(settings.sample_every)), progress=False)
    t = an.da.coords["time interval"].values  # fs
    start = settings.fit_start * t[-1]
    an.diffusion(start_dt=sc.scalar(float(start), unit="fs"), progress=False,
                 random_state=np.random.RandomState(settings.seed))
    d = an.D
    values = np.asarray(sc.to_unit(sc.array(dims=["s"], values=np.asarray(d.values), unit=d.unit),
                                   "cm^2/s").values, dtype=float)
    msd = np.asarray(an.msd.values, dtype=float)
    keep = np.linspace(0, len(values) - 1, min(n_keep, len(values))).astype(int)
    idx = np.linspace(0, len(t) - 1, min(60, len(t))).astype(int)
    mean, std = float(values.mean()), float(values.std())
    return {"d_mean": mean, "d_std": std, "d_samples": values[keep].tolist(),
            "msd_time_ps": (t[idx] / 1000).tolist(), "msd": msd[idx].tolist(), "msd_final": float(msd[-1]),
            "resolved": bool(mean > 2 * std and mean > 0 and float(msd[-1]) >= MIN_MSD)}


def conductivity(atoms, d_cm2_s: float, temperature: float, specie: str = "Li") -> float:
    """Nernst-Einstein conductivity (S/cm) of ``specie`` (charge +1) at tracer diffusivity D."""
    n = sum(1 for s in atoms.get_chemical_symbols() if s == specie) / (atoms.get_volume() * 1e-24)  # per cm^3
    return n * E_CHARGE ** 2 * d_cm2_s / (K_B * E_CHARGE * temperature)


@dataclass(frozen=True)
class Arrhenius:
    ea: float  # eV, posterior median
    ea_err: float  # half the 68 % credible interval
    d_room: float  # cm^2/s at ROOM, median
    d_room_lo: float
    d_room_hi: float
    temperatures: tuple  # those in the fit
    #: reduced chi-square of the weighted straight line through the mean ln D* at each temperature
    #: (weights: the posterior variance of ln D*); None for two temperatures.  Well above 1 (say 4),
    #: ln D* is not linear in 1/T over these temperatures: another mechanism, a transition or a
    #: melt in part of the range, and Ea is an average over regimes.
    chi2_red: float | None = None


def arrhenius(temperatures, samples, room: float = ROOM, seed: int = 0) -> Arrhenius | None:
    """Fit ``ln D = ln D0 - Ea / (k T)`` on joint draws of the per-temperature posterior samples of
    D (only positive draws count); None with fewer than two temperatures.  With three or more, the
    reduced chi-square says how well one straight line holds them."""
    if len(temperatures) < 2:
        return None
    rng = np.random.default_rng(seed)
    n = min(len(s) for s in samples)
    draws = np.array([rng.permutation(np.asarray(s, dtype=float))[:n] for s in samples])  # (T, n)
    ok = (draws > 0).all(axis=0)
    if ok.sum() < 10:
        return None
    x = 1.0 / (K_B * np.asarray(temperatures, dtype=float))
    y = np.log(draws[:, ok])
    design = np.vstack([np.ones_like(x), -x]).T
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)  # per draw: ln D0, Ea
    ea = coef[1]
    d_room = np.exp(coef[0] - coef[1] / (K_B * room))
    lo, med, hi = np.percentile(ea, [16, 50, 84])
    chi2 = None
    if len(x) > 2:
        mean, var = y.mean(axis=1), np.maximum(y.var(axis=1), 1e-12)
        w = 1.0 / var
        line, *_ = np.linalg.lstsq(design * np.sqrt(w)[:, None], mean * np.sqrt(w), rcond=None)
        chi2 = float((w * (mean - design @ line) ** 2).sum() / (len(x) - 2))
    return Arrhenius(ea=float(med), ea_err=float((hi - lo) / 2),
                     d_room=float(np.median(d_room)), d_room_lo=float(np.percentile(d_room, 16)),
                     d_room_hi=float(np.percentile(d_room, 84)), temperatures=tuple(float(t) for t in temperatures),
                     chi2_red=chi2)


def fit_of(result: dict, temperatures, atoms, settings: "TransportSettings") -> dict | None:
    """The Arrhenius fit (a JSON-ready dict, with the room-temperature conductivity) over the
    stored temperatures of ``result`` that are in ``temperatures`` and resolved; None with fewer
    than two of them."""
    want = {float(t) for t in temperatures}
    use = [d for d in result["temperatures"] if float(d["temperature"]) in want and d["resolved"]]
    fit = arrhenius([d["temperature"] for d in use], [d["d_samples"] for d in use], seed=settings.seed)
    if fit is None:
        return None
    return {**asdict(fit), "temperatures": list(fit.temperatures),
            "sigma_room_s_cm": conductivity(atoms, fit.d_room, ROOM, settings.specie)}


def transport_of(ff, atoms, settings: TransportSettings, progress: bool = False) -> dict:
    """MD at every temperature (one batch), diffusivities, the Arrhenius fit (a JSON-ready dict)."""
    if settings.specie not in atoms.get_chemical_symbols():
        raise ValidationError(f"{atoms.get_chemical_formula()} holds no {settings.specie}")
    big, reps = supercell(atoms, settings.supercell_min_length)
    runs = run_nvt(ff, [big] * len(settings.temperatures), settings.temperatures, settings, progress=progress)
    temps = []
    for t, run in zip(settings.temperatures, runs):
        d = diffusivity(big, run["positions"], settings)
        d["temperature"] = t
        d["md_temperature"] = run["temperature"]
        # the kinetic temperature's standard error (blocking): a mean several of these away from
        # the target is a thermostat or force-field problem, not the small cell's fluctuations
        d["md_temperature_sem"] = run["temperature_sem"]
        d["sigma_s_cm"] = conductivity(big, d["d_mean"], t, settings.specie)
        temps.append(d)
    out = {"formula": atoms.get_chemical_formula("metal"), "n_atoms": len(big), "supercell": list(reps),
           "temperatures": temps}
    out["arrhenius"] = fit_of(out, settings.temperatures, big, settings)
    return out


def _task(args):
    ff, atoms, settings = args
    try:
        return {"ok": True, **transport_of(ff, atoms, settings)}
    except ValidationError as exc:
        return {"ok": False, "error": str(exc)}


# ---------------------------------------------------------------------- the node analysis
def column_name(t: float) -> str:
    """Query name of the diffusivity at ``t``, e.g. ``li_diffusivity_600K``."""
    return f"li_diffusivity_{t:g}K".replace(".", "p")


def frame_columns(node, rev: str | None = None) -> dict[str, dict[str, float]]:
    """``{column: {frame id: value}}`` for ``query``: ``li_diffusivity_<T>K`` (cm^2/s),
    ``li_ea`` (eV), ``li_ea_err``, ``li_diffusivity_300K`` and ``li_conductivity_300K`` (S/cm,
    extrapolated), ``transport_stale``."""
    from . import analyses

    store = analyses.read(node, NAME, rev)
    current = analyses.current_checkpoint(node, rev)
    out: dict[str, dict[str, float]] = {}
    for fid, rec in store.items():
        res = rec.get("result") or {}
        for d in res.get("temperatures", ()):
            out.setdefault(column_name(d["temperature"]), {})[fid] = d["d_mean"]
        fit = res.get("arrhenius")
        if fit:
            out.setdefault("li_ea", {})[fid] = fit["ea"]
            out.setdefault("li_ea_err", {})[fid] = fit["ea_err"]
            out.setdefault("li_diffusivity_300K", {})[fid] = fit["d_room"]
            out.setdefault("li_conductivity_300K", {})[fid] = fit["sigma_room_s_cm"]
        out.setdefault("transport_stale", {})[fid] = float(analyses.is_stale(rec["checkpoint"], current))
    return out


@dataclass(frozen=True)
class TransportResult:
    computed: int  # structures that ran MD in this call (at one or more of the temperatures)
    cached: int  # structures whose every temperature was stored already
    stale: tuple
    failed: tuple  # (frame id, error)
    checkpoint: str
    settings: str
    entries: tuple  # one dict per structure, ranked by extrapolated conductivity (then by D at the top T)
    temperatures: tuple
    commits: tuple
    plot: str | None = None
    runs_computed: int = 0  # (structure, temperature) MD runs made in this call
    runs_cached: int = 0  # ... and reused from the store


def _normalised(rec: dict) -> dict:
    """A stored record keyed by ``TransportSettings.key`` of its settings document (records of
    the first format were keyed with their temperatures in the hash)."""
    doc = rec.get("settings_doc")
    if isinstance(doc, dict):
        rec = {**rec, "settings": run_key(doc), "settings_doc": _run_settings(doc)}
    return rec


def _merged(rec: dict | None, new: dict, checkpoint: str, settings: "TransportSettings") -> dict:
    """``new``'s temperatures added to those of ``rec`` when ``rec`` holds the same settings and
    checkpoint (a new run of a temperature replaces the stored one); else ``new`` alone."""
    temps = {}
    if rec is not None and rec.get("settings") == settings.key() and rec.get("checkpoint") == checkpoint:
        temps = {float(d["temperature"]): d for d in rec["result"]["temperatures"]}
    for d in new["temperatures"]:
        temps[float(d["temperature"])] = d
    result = {k: v for k, v in new.items() if k != "ok"}
    result["temperatures"] = [temps[t] for t in sorted(temps)]
    return {"checkpoint": checkpoint, "settings": settings.key(), "settings_doc": settings.doc(), "result": result}


def _structures(node, table, max_e_hull: float, frames: tuple, specie: str):
    """(frame ids, Atoms) of the Li-containing compounds to analyse: ``frames`` when given, else the
    reference phases and the entries within ``max_e_hull`` of the hull (reference method)."""
    from . import analyses

    ids, images = analyses.select(node, table, max_e_hull, frames)
    keep = []
    for fid, a in zip(ids, images):
        syms = set(a.get_chemical_symbols())
        if specie in syms and len(syms) > 1:
            keep.append((fid, a))
        elif frames:
            raise ValidationError(f"frame {fid[:10]} ({a.get_chemical_formula()}) is not a compound "
                                  f"of {specie}: no {specie}-ion transport to compute")
    return [k for k, _ in keep], [a for _, a in keep]


def _rank_key(row):
    sigma = row.get("li_conductivity_300K")
    top = row.get("d_top") or 0.0
    return (0 if sigma is not None else 1, -(sigma or 0.0), -top)


def analyze_transport(node, settings: TransportSettings, max_e_hull: float = 0.05, frames: tuple = (),
                      keep_stale: bool = False, chunk: int = 2, plot: str | None = None,
                      progress: bool = True) -> TransportResult:
    """Li diffusivities and Arrhenius fits of the node's Li compounds with its current force field,
    stored in ``analyses/transport.json`` one commit per ``chunk`` structures (resumable).

    Each (structure, temperature) result is stored on its own, keyed by the settings other than
    the temperatures and by the checkpoint: a rerun runs MD only at the temperatures that are
    missing, so temperatures can be added run by run, and the Arrhenius fit is made over the
    temperatures asked for in this call, wherever their results came from.  A result of another
    force field is stale: it is recomputed (every temperature asked for), or with ``keep_stale``
    reused as it is, never mixed with new runs."""
    from . import analyses
    from .stages import current_forcefield, make_executor

    table = node.table
    ids, images = _structures(node, table, max_e_hull, tuple(frames), settings.specie)
    if not ids:
        raise ValidationError(f"no compound of {settings.specie} among the node's references and entries "
                              f"within {max_e_hull} eV/atom of the hull")
    cid, ff = current_forcefield(node)
    checkpoint = cid or f"params:{ff.method}"
    skey, want = settings.key(), settings.temperatures
    store = {fid: _normalised(rec) for fid, rec in analyses.read(node, NAME).items()}
    missing, stale, runs_cached = {}, [], 0
    for k, fid in enumerate(ids):
        rec = store.get(fid)
        same = rec is not None and rec.get("settings") == skey
        if same and rec["checkpoint"] != checkpoint:
            stale.append(fid)
        usable = same and (rec["checkpoint"] == checkpoint or keep_stale)
        have = {float(d["temperature"]) for d in rec["result"]["temperatures"]} if usable else set()
        todo = tuple(t for t in want if t not in have)
        if todo and usable and rec["checkpoint"] != checkpoint:
            todo = want  # a stale result is not mixed with runs of the current force field
        if todo:
            missing[k] = todo
        runs_cached += len(want) - len(todo)
    commits, failed = [], []
    order = list(missing)

    def refit(k):
        """Install the fit over ``want`` in the record of ids[k]; whether it changed."""
        rec = store[ids[k]]
        old = rec["result"].get("arrhenius")
        new = fit_of(rec["result"], want, images[k], settings)
        if (old or {}).get("temperatures") == (new or {}).get("temperatures") and (old is None) == (new is None):
            return False
        rec["result"]["arrhenius"] = new
        return True

    with make_executor(node) as ex:
        for start in range(0, len(order), chunk):
            part = order[start:start + chunk]
            tasks = [(ff, images[k], _with_temperatures(settings, missing[k])) for k in part]
            out = ex.map(_task, tasks, progress=progress)
            for k, r in zip(part, out):
                if r.get("ok"):
                    store[ids[k]] = _merged(store.get(ids[k]), r, checkpoint, settings)
                    refit(k)
                else:
                    failed.append((ids[k], r.get("error", "")))
            temps = sorted({t for k in part for t in missing[k]})
            commit = analyses.write(node, NAME, store, f"analyze transport: {len(part)} structures at "
                                    f"{', '.join(f'{t:g}' for t in temps)} K ({checkpoint})")
            if commit:
                commits.append(commit)
    # the structures with nothing to run: their fit over the temperatures asked for
    refitted = [k for k, fid in enumerate(ids) if k not in missing and fid in store
                and store[fid]["settings"] == skey and refit(k)]
    if refitted:
        commit = analyses.write(node, NAME, store, f"analyze transport: Arrhenius fit of {len(refitted)} "
                                f"structures over {', '.join(f'{t:g}' for t in want)} K")
        if commit:
            commits.append(commit)
    entries = []
    for i in ids:
        rec = store.get(i)
        if rec is None or rec["settings"] != skey:
            continue
        res = rec["result"]
        row = {"frame_id": i, "formula": res["formula"], "stale": rec["checkpoint"] != checkpoint,
               "n_atoms": res["n_atoms"]}
        by_t = {float(d["temperature"]): d for d in res["temperatures"]}
        for t in want:
            d = by_t.get(t)
            if d is None:
                continue
            row[column_name(t)] = d["d_mean"]
            row[column_name(t) + "_err"] = d["d_std"]
            row[f"resolved_{t:g}K"] = d["resolved"]
        row["stored_temperatures"] = sorted(by_t)
        row["d_top"] = by_t[max(t for t in want if t in by_t)]["d_mean"] if any(t in by_t for t in want) else None
        fit = res.get("arrhenius")
        if fit:
            row.update(li_ea=fit["ea"], li_ea_err=fit["ea_err"], li_diffusivity_300K=fit["d_room"],
                       li_conductivity_300K=fit["sigma_room_s_cm"], fit_temperatures=list(fit["temperatures"]),
                       li_ea_chi2=fit.get("chi2_red"))
        entries.append(row)
    entries.sort(key=_rank_key)
    path = plot_arrhenius(store, [e["frame_id"] for e in entries], plot) if plot and entries else None
    return TransportResult(computed=len(order) - len(failed), cached=len(ids) - len(order), stale=tuple(stale),
                           failed=tuple(failed), checkpoint=checkpoint, settings=skey, entries=tuple(entries),
                           temperatures=want, commits=tuple(commits), plot=path,
                           runs_computed=sum(len(missing[k]) for k in order if ids[k] not in dict(failed)),
                           runs_cached=runs_cached)


def _with_temperatures(settings: TransportSettings, temperatures) -> TransportSettings:
    from dataclasses import replace

    return replace(settings, temperatures=tuple(temperatures))


def plot_arrhenius(store: dict, ids, path) -> str:
    """Arrhenius plot (log10 D against 1000/T, with the fits) and the MSDs of every structure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    for n, fid in enumerate(ids):
        res = store[fid]["result"]
        color = f"C{n % 10}"
        label = f"{res['formula']} {fid[:6]}"
        ts = np.array([d["temperature"] for d in res["temperatures"]])
        dm = np.array([d["d_mean"] for d in res["temperatures"]])
        ds = np.array([d["d_std"] for d in res["temperatures"]])
        ok = np.array([d["resolved"] for d in res["temperatures"]])
        fit = res.get("arrhenius")
        in_fit = np.isin(ts, np.asarray(fit["temperatures"], dtype=float)) if fit else np.zeros(len(ts), bool)
        for sel, mfc, extra in ((ok & in_fit, color, ""), (ok & ~in_fit, "none", " (not in the fit)")):
            if sel.any():
                ax.errorbar(1000 / ts[sel], np.log10(dm[sel]), yerr=ds[sel] / (dm[sel] * np.log(10)), fmt="o",
                            color=color, mfc=mfc, label=label + extra)
        if (~ok).any():
            ax.plot(1000 / ts[~ok], np.log10(np.maximum(dm[~ok] + 2 * ds[~ok], 1e-12)), "v", color=color,
                    mfc="none", label=None if ok.any() else label + " (upper bounds)")
        if fit:
            tt = np.linspace(1000 / max(fit["temperatures"]), 1000 / ROOM, 50)
            slope = -fit["ea"] / (K_B * 1000 * np.log(10))
            ax.plot(tt, np.log10(fit["d_room"]) + slope * (tt - 1000 / ROOM), "-", color=color, lw=0.8)
        for d in res["temperatures"]:
            bx.plot(d["msd_time_ps"], d["msd"], color=color, alpha=0.4 + 0.6 * d["temperature"] / max(ts))
    ax.set_xlabel("1000 / T (1/K)")
    ax.set_ylabel("log10 D* (cm²/s)")
    ax.legend(fontsize=7)
    ax.set_title("Li tracer diffusivity (open ▽: unresolved, 2σ upper bound)", fontsize=9)
    bx.set_xlabel("time interval (ps)")
    bx.set_ylabel("Li MSD (Å²)")
    bx.set_title("mean-squared displacements")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
