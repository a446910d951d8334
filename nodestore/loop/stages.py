"""One entry point per DVC stage: ``nodestore stage NAME K``.

Each stage reads only its declared deps (``loop/iter-{prev}/models``,
``loop/iter-{prev}/table.json``, earlier outs of iteration k) and writes only
its declared outs under ``loop/iter-{k}/``.  Tables between stages are
FrameTables (a manifest plus one content-addressed segment), so the curated
segment of iteration k enters the node's table by being listed, not rewritten.
Outs are written to a temporary directory and renamed into place: a stage
killed at any moment leaves either nothing or its complete output.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from nodestore.errors import NodestoreError, ValidationError
from nodestore.repo.methods import FF_PREFIX, check_method, is_prediction

STAGES = ("generate", "screen", "select", "label", "train", "curate")


# -- paths and helpers -------------------------------------------------------------

def iter_dir(node, k: int) -> Path:
    return node.path / "loop" / f"iter-{k}"


def iteration_item(node, k: int) -> dict:
    from nodestore.config import iterations

    its = iterations(node.params)
    if k in its:
        return {"k": k, "prev": its[k]}
    raise ValidationError(f"iteration {k} is not in params.yaml loop.iterations; run `nodestore iterate`")


def snapshot_table(node, k: int):
    """The node's table as iteration k left it (its manifest pins immutable segments)."""
    from nodestore.frames import FrameTable

    path = iter_dir(node, k) / "table.json"
    if not path.exists():
        raise NodestoreError(f"{path} is missing: iteration {k} was not committed (run `nodestore commit`)")
    return FrameTable(node.path / "data" / "table", json.loads(path.read_text()))


@contextmanager
def atomic_dir(final: Path):
    """Yield a temporary directory that replaces ``final`` only when the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_table(directory: Path, batch) -> None:
    from nodestore.frames import FrameTable

    t = FrameTable.create(directory)
    if len(batch):
        t.append(batch, dedup=False)


def read_table(directory: Path):
    from nodestore.frames import FrameTable

    return FrameTable.open(directory)


def section(params: dict, name: str) -> dict:
    return dict(params.get(name) or {})


def _threads():
    try:
        import torch

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    except ImportError:
        pass


def _pause_for_tests(stage: str) -> None:
    """Kill-and-rerun tests stop a stage in the middle of its work here."""
    marker = os.environ.get("NODESTORE_PAUSE_IN")
    if marker == stage:
        Path(os.environ["NODESTORE_PAUSE_FILE"]).write_text(str(os.getpid()))
        time.sleep(600)


def load_forcefield(node, models_dir: Path | None):
    """The force field checkpoint in ``models_dir``, else the one params.yaml configures."""
    from nodestore.models.forcefield import ForceField
    from nodestore.models.registry import from_config

    ckpt = models_dir / "forcefield" if models_dir is not None else None
    if ckpt is not None and (ckpt / "meta.json").exists():
        return ForceField.load(ckpt)
    return from_config("forcefield", section(node.params, "forcefield"))


def current_forcefield(node):
    """(checkpoint id, force field): the node's current checkpoint, else ("", the one params.yaml
    configures)."""
    from nodestore.models.forcefield import ForceField

    cid = node.current_models().get("forcefield") or ""
    return cid, (ForceField.load(node.path / "models" / cid) if cid else load_forcefield(node, None))


def on_method_scale(ff, table, method: str):
    """``ff`` on the energy scale of ``method``: a force field not yet fitted to it gets its
    per-element reference energies refit on ``table``'s labelled frames of that method (no
    gradient step), so that its energies, its hull and its errors against the labels are on the
    labeller's scale from the first iteration on.  Unchanged when it is fitted already or the
    table holds no labelled frame of the method."""
    if ff.energy_method == method:
        return ff
    frames = labelled_frames(table, method)
    return ff.fit_references(frames, method=method) if frames else ff


def labelled_rows(table, method: str, block: int = 4096) -> np.ndarray:
    """Rows of ``table`` with an energy of ``method`` and finite forces on every atom (the forces
    are read ``block`` rows at a time, so that a large node is never read whole)."""
    if not len(table):
        return np.zeros(0, dtype=np.int64)
    rows = np.nonzero((table.column("method") == method) & np.isfinite(table.column("energy")))[0]
    keep = []
    for start in range(0, len(rows), block):
        part = rows[start:start + block]
        keep.append(part[table.read(part, columns=["forces"]).finite_per_frame("forces")])
    return np.concatenate(keep) if keep else rows


def labelled_dataset(table, method: str):
    """``table``'s frames with an energy and forces of ``method`` as a torch Dataset of Atoms
    (what fine-tuning streams from)."""
    return table.dataset(labelled_rows(table, method))


def labelled_frames(table, method: str) -> list:
    """``table``'s frames with an energy and forces of ``method``, as Atoms."""
    rows = labelled_rows(table, method)
    return table.to_atoms(rows) if len(rows) else []


def load_generator(node, models_dir: Path | None):
    """The generator checkpoint in ``models_dir``, else the one params.yaml configures."""
    from nodestore.models.generator import Generator
    from nodestore.models.registry import from_config

    ckpt = models_dir / "generator" if models_dir is not None else None
    if ckpt is not None and (ckpt / "meta.json").exists():
        return Generator.load(ckpt)
    cfg = section(node.params, "generator")
    cfg.setdefault("elements", node.system)
    return from_config("generator", cfg)


def load_labeller(node):
    from nodestore.models.registry import from_config

    return from_config("labeller", section(node.params, "labeller"))


def make_executor(node):
    """params.yaml's executor; ``--scheduler`` (NODESTORE_SCHEDULER) sends the work to Dask instead."""
    from nodestore.models.registry import from_config

    cfg = section(node.params, "executor")
    if os.environ.get("NODESTORE_SCHEDULER"):
        cfg = {"backend": "dask", "address": os.environ["NODESTORE_SCHEDULER"]}
    return from_config("executor", cfg)


# -- the stages --------------------------------------------------------------------

def generate(node, k: int) -> dict:
    """N candidates from generator(k-1), conditioned on the node's system."""
    item = iteration_item(node, k)
    prev = iter_dir(node, item["prev"])
    p = section(node.params, "generate")
    gen = load_generator(node, prev / "models")
    gen.reseed(k)  # a checkpoint that learned nothing new must not propose last iteration's candidates
    n = int(p.get("n", 24))
    conditions = {"max_atoms": int(p.get("max_atoms", 24))}
    if "target_e_hull" in p:
        conditions["target_e_hull"] = float(p["target_e_hull"])
    _pause_for_tests("generate")
    t0 = time.perf_counter()
    images = gen.sample(n, compositions=p.get("compositions"), conditions=conditions)
    model_seconds = time.perf_counter() - t0
    from nodestore.frames import FrameBatch

    for a in images:  # the source names the strategy (the generator backend) that made the candidate
        strategy = str(a.info.get("generator") or gen.backend)
        a.info = {"spacegroup": int(a.info.get("spacegroup", 0)), "source": f"generate@{k}/{strategy}"}
    batch = FrameBatch.from_atoms(images, origin="generated", iteration=k)
    with atomic_dir(iter_dir(node, k) / "candidates") as out:
        write_table(out, batch)
    return {"candidates": len(batch), "model_seconds": round(model_seconds, 2)}


def screen(node, k: int) -> dict:
    """Relax the candidates with force field(k-1); drop duplicates; E_hull on the force-field hull."""
    from nodestore.chem.matcher import Matcher
    from nodestore.frames import FrameBatch

    _threads()
    item = iteration_item(node, k)
    prev = iter_dir(node, item["prev"])
    p = section(node.params, "screen")
    cands = read_table(iter_dir(node, k) / "candidates")
    table = snapshot_table(node, item["prev"])
    ff = on_method_scale(load_forcefield(node, prev / "models"), table, node.config["reference_method"])
    method = FF_PREFIX + ff.method
    images = cands.to_atoms()
    # duplicates among the candidates and of the node's entries are dropped before relaxing
    matcher = Matcher(**_match_params(node))
    known = known_prepared(node, table, matcher)
    structures = cands.structures()
    keep = _not_duplicates(matcher, structures, known)
    images = [images[i] for i in keep]
    _pause_for_tests("screen")
    relax = dict(fmax=float(p.get("fmax", 0.1)), steps=int(p.get("steps", 60)),
                 relax_cell=bool(p.get("relax_cell", True)), cell_filter=str(p.get("cell_filter", "frechet")))
    # the force-field hull: its own energies of the reference phases, relaxed the same way and in
    # the same batched call as the candidates (one model evaluation per step for all of them)
    # in their primitive cells: the same energy per atom (alpha-S: 32 atoms instead of 128)
    from .actions import node_references, primitive

    refs = [primitive(a) for a in node_references(node, table)]
    both = ff.relax(images + refs, **relax)
    relaxed, ref_relaxed = both[:len(images)], both[len(images):]
    out_images = []
    for src, r in zip(images, relaxed):
        a = r["atoms"]
        a.info = {"parent_id": src.info["frame_id"], "spacegroup": src.info.get("spacegroup", 0),
                  "origin": "relaxed", "source": f"screen@{k}"}
        _attach(a, r)
        out_images.append(a)
    ref_images = []
    for r in ref_relaxed:
        a = r["atoms"]
        a.info = {"origin": "reference", "source": f"screen@{k}"}
        _attach(a, r)
        ref_images.append(a)
    batch = FrameBatch.from_atoms(out_images + ref_images, method=method, iteration=k, checkpoint=ff.hash or "")
    # a structure stopped by a guard of the relaxation (collapsed atoms, runaway cell, ...) left
    # physical geometry: its energy is not on any hull and it is not selected for labelling
    from nodestore.models.forcefield import GUARD_PREFIXES

    stopped = [str(r["reason"]).startswith(GUARD_PREFIXES) for r in relaxed + ref_relaxed]
    ok = [i for i, s in enumerate(stopped) if not s]
    items = [(a, a.get_potential_energy(), method) for a in out_images + ref_images]
    e_hull, e_form, unphysical = _screen_hull(items, ok, len(relaxed), method, p.get("min_e_form", MIN_E_FORM))
    batch = batch.with_columns(e_hull=e_hull, e_form=e_form)
    converged = sum(bool(r["converged"]) for r in relaxed)
    rejected = {}
    for r, s in zip(relaxed, stopped):
        if s:
            key = str(r["reason"]).split(":")[0]
            rejected[key] = rejected.get(key, 0) + 1
    if unphysical:
        rejected[UNPHYSICAL] = unphysical
    with atomic_dir(iter_dir(node, k) / "screened") as out:
        write_table(out, batch)
        (out / "screen.json").write_text(json.dumps({
            "candidates": len(cands), "duplicates_dropped": len(cands) - len(images), "relaxed": len(relaxed),
            "converged": converged, "stopped_by_guard": rejected, "method": method}, indent=1))
    return {"screened": len(relaxed), "duplicates_dropped": len(cands) - len(images),
            "model_seconds": round(ff.model_seconds, 2)}


#: eV/atom: the lowest force-field formation energy the screen believes (screen.min_e_form)
MIN_E_FORM = -5.0
UNPHYSICAL = "formation energy below screen.min_e_form"


def _screen_hull(items, ok, n_candidates: int, method: str, floor):
    """E_hull and E_form of the screened rows ``ok`` on their own force-field hull.

    A candidate (rows below ``n_candidates``; the reference phases after them are kept) whose
    formation energy is below ``floor`` eV/atom fell into a hole of the model, where a force field
    can predict hundreds of eV/atom below any crystal (SevenNet-0: a collapsed 10-atom P4S6 cell at
    -390 eV/atom, P-S 1.34 A).  On the hull it would put every neighbour above it.  It gets no
    E_hull (so no label), and is left off the hull.
    Returns (e_hull, e_form, number dropped)."""
    from nodestore.chem.hull import compute_hull

    floor = None if floor is None else float(floor)
    if floor is not None and not np.isfinite(floor):
        raise ValidationError(f"screen.min_e_form must be a finite number or null, not {floor!r}")
    e_hull = np.full(len(items), np.nan)
    e_form = np.full(len(items), np.nan)
    # formation energies against the reference phases' elements (the lowest per atom of each), so
    # that an elemental candidate fallen into a hole cannot become the reference of its element
    mu: dict[str, float] = {}
    for a, e, _ in (items[i] for i in ok if i >= n_candidates):
        el = set(a.get_chemical_symbols())
        if len(el) == 1 and np.isfinite(e):
            (x,) = el
            mu[x] = min(mu.get(x, np.inf), e / len(a))
    bad = set()
    for i in (ok if floor is not None else ()):
        a, e, _ = items[i]
        sym = a.get_chemical_symbols()
        if i < n_candidates and all(x in mu for x in sym) and (e - sum(mu[x] for x in sym)) / len(a) < floor:
            bad.add(i)
    ok = [i for i in ok if i not in bad]
    try:
        res = compute_hull([items[i] for i in ok], method)
    except NodestoreError:
        return e_hull, e_form, len(bad)
    e_hull[ok] = np.asarray(res.e_hull, dtype=float)
    e_form[ok] = np.asarray(res.e_form, dtype=float)
    return e_hull, e_form, len(bad)


def prepared_cache(node) -> Path:
    """Where the matcher's reductions of the node's frames are kept (local, never committed)."""
    return node.state_dir / "cache" / "prepared"


def known_prepared(node, table, matcher) -> list:
    """The matcher's reductions of ``table``'s entries and reference phases (what a candidate
    must not duplicate), through the node's prepared cache."""
    from nodestore.chem.matcher import PreparedCache

    rows = np.nonzero(table.column("is_entry") | (table.column("origin") == "reference"))[0]
    if not len(rows):
        return []
    ids = table.column("frame_id")[rows].astype(str).tolist()
    return PreparedCache(prepared_cache(node)).prepare(matcher, ids, lambda pos: table.structures(rows[pos]))


def _match_params(node) -> dict:
    m = section(node.params, "match")
    return {k: float(m[k]) for k in ("ltol", "stol", "angle_tol") if k in m}


def _not_duplicates(matcher, structures, known) -> list[int]:
    """Indices of structures that match neither an earlier one nor a known one."""
    prepared = matcher.prepare(structures)
    rep = matcher.dedup(prepared)
    firsts = [i for i in range(len(structures)) if rep[i] < 0]
    if not known or not firsts:
        return firsts
    # only "duplicate or not" decides here: no anonymous (substitution) matching
    hits = matcher.match([prepared[i] for i in firsts], matcher.prepare(known))
    return [i for i, h in zip(firsts, hits) if h < 0]


def _attach(atoms, result: dict) -> None:
    from ase.calculators.singlepoint import SinglePointCalculator

    res = {"energy": float(result["energy"]), "forces": np.asarray(result["forces"])}
    if result.get("stress") is not None:
        res["stress"] = np.asarray(result["stress"])
    atoms.calc = SinglePointCalculator(atoms, **res)


def select(node, k: int) -> dict:
    """The few to label (``choose``); the novelty of each candidate is its dH against the node."""
    from nodestore.chem.entropy import delta_entropy

    p = section(node.params, "select")
    screened = read_table(iter_dir(node, k) / "screened")

    def novelty(rows: list[int]) -> list[float]:
        table = snapshot_table(node, iteration_item(node, k)["prev"])
        ref = table.to_atoms(_sample_rows(len(table), 64))
        # one call: each environment's dH is against the reference alone, so the per-structure
        # means are those of one call per candidate, with the reference described once
        return list(delta_entropy(screened.to_atoms(rows), ref).per_structure)

    duplicate = relaxed_duplicates(node, k, screened) if p.get("skip_duplicates", True) else None
    chosen, reasons = choose(screened.column("origin"), screened.column("e_hull"), screened.column("n_atoms"),
                             screened.column("formula"), screened.column("spacegroup"), p, novelty,
                             duplicate=duplicate)
    batch = screened.read(chosen) if chosen else screened.read([])
    n_dup = {"known": 0, "repeat": 0}
    if duplicate is not None:
        n_dup = {"known": int(sum(d == "known" for d in duplicate)), "repeat": int(sum(d == "repeat" for d in duplicate))}
    with atomic_dir(iter_dir(node, k) / "selected") as out:
        write_table(out, batch)
        (out / "select.json").write_text(json.dumps(
            [{"frame_id": batch["frame_id"][i], "reason": reasons[r]} for i, r in enumerate(chosen)], indent=1))
        (out / "duplicates.json").write_text(json.dumps(n_dup))
    return {"selected": len(chosen), "relaxed_into_known": n_dup["known"], "relaxed_into_repeat": n_dup["repeat"]}


def relaxed_duplicates(node, k: int, screened) -> np.ndarray:
    """Per screened row: ``"known"`` where the relaxed structure is a node entry or reference
    phase, ``"repeat"`` where it is the same crystal as a relaxed candidate of lower E_hull, else
    ``""``.  The screen drops duplicates before relaxing; candidates that relax into the same
    minimum (or into a phase the node holds) only show up after it, and a label spent on one of
    them teaches nothing a label already taught."""
    from nodestore.chem.matcher import Matcher

    origin, e_hull = screened.column("origin"), screened.column("e_hull")
    out = np.array([""] * len(origin), dtype=object)
    rows = np.nonzero((origin == "relaxed") & np.isfinite(e_hull))[0]
    if not len(rows):
        return out
    rows = rows[np.argsort(e_hull[rows], kind="stable")]
    matcher = Matcher(**_match_params(node))
    prepared = matcher.prepare(screened.structures(rows))
    rep = matcher.dedup(prepared)
    out[rows[rep >= 0]] = "repeat"
    firsts = np.nonzero(rep < 0)[0]
    known = known_prepared(node, snapshot_table(node, iteration_item(node, k)["prev"]), matcher)
    if known and len(firsts):
        hits = matcher.match([prepared[i] for i in firsts], known)
        out[rows[firsts[hits >= 0]]] = "known"
    return out


def choose(origin, e_hull, n_atoms, formula, spg, p: dict, novelty,
           duplicate=None) -> tuple[list[int], dict[int, str]]:
    """Rows of the screened table to label, with the reason for each.

    Among the relaxed candidates with a finite E_hull of at most ``max_e_hull`` (0.5 eV/atom; null:
    no cap) and at most ``max_atoms`` atoms:
    the ``n_lowest`` lowest E_hull; the ``n_diverse`` next lowest whose (formula, space group) is
    not chosen yet; and the ``n_uncertain`` of highest ``novelty(rows)`` among the rest that the
    screen puts at most ``uncertain_max_e_hull`` above the hull (among all the rest when none is).
    A structure far above the hull cannot change a stability call whatever its label says, and
    the force field's largest errors are there: a label spent on it teaches the screen least.
    ``duplicate`` (per row, non-empty for a relaxed structure the node holds already or that
    repeats a lower candidate; ``relaxed_duplicates``): such rows are never chosen.
    """
    # structures stopped by a relaxation guard have no E_hull: never spend a label on them
    ok = (origin == "relaxed") & np.isfinite(e_hull)
    if duplicate is not None:
        ok &= np.asarray([not d for d in duplicate], dtype=bool)
    rows = np.nonzero(ok)[0]
    rows = rows[n_atoms[rows] <= int(p.get("max_atoms", 32))]
    # a label on a structure far above the hull is spent where no stability call can change
    cap = p.get("max_e_hull", 0.5)
    if cap is not None:
        rows = rows[e_hull[rows] <= float(cap)]
    chosen: list[int] = []
    reasons: dict[int, str] = {}
    order = rows[np.argsort(e_hull[rows], kind="stable")]
    for r in order[: int(p.get("n_lowest", 2))]:
        chosen.append(int(r))
        reasons[int(r)] = "lowest e_hull"
    seen = {(formula[r], spg[r]) for r in chosen}
    for r in order:
        if len([c for c in chosen if reasons[c] == "diverse"]) >= int(p.get("n_diverse", 1)):
            break
        key = (formula[r], spg[r])
        if int(r) not in chosen and key not in seen:
            chosen.append(int(r))
            reasons[int(r)] = "diverse"
            seen.add(key)
    n_unc = int(p.get("n_uncertain", 1))
    rest = [int(r) for r in rows if int(r) not in chosen]
    window = p.get("uncertain_max_e_hull", 0.3)
    reason = "uncertain (highest dH)"
    if window is not None:
        near = [r for r in rest if e_hull[r] <= float(window)]
        if near:
            rest, reason = near, f"uncertain (highest dH, E_hull <= {float(window):g})"
    if n_unc and rest:
        scores = novelty(rest)
        for j in np.argsort(scores, kind="stable")[::-1][:n_unc]:
            chosen.append(rest[int(j)])
            reasons[rest[int(j)]] = reason
    return chosen, reasons


def _sample_rows(n: int, m: int) -> list[int]:
    if n <= m:
        return list(range(n))
    return sorted(np.random.default_rng(0).choice(n, m, replace=False).tolist())


def label(node, k: int) -> dict:
    """The labeller on the selected frames, through the executor; failures recorded, never labelled."""
    from nodestore.frames import FrameBatch

    from .actions import primitive

    selected = read_table(iter_dir(node, k) / "selected")
    images = selected.to_atoms()
    if section(node.params, "label").get("primitive", True):
        images = [primitive(a) for a in images]
    for a in images:
        a.calc = None
    lab = load_labeller(node)
    check_method(node, lab.method_info)
    p = section(node.params, "label")
    relax_steps = int(p.get("relax_steps", 0))
    if relax_steps and hasattr(lab, "with_relaxation"):
        lab.with_relaxation(relax_steps, fmax=float(p.get("relax_fmax", 0.05)), cell=bool(p.get("relax_cell", True)),
                            max_seconds=p.get("relax_seconds"))
    _pause_for_tests("label")
    t0 = time.perf_counter()
    good, failures, method_info = apply_labeller(node, lab, images, {"origin": "labelled", "source": f"label@{k}"})
    model_seconds = time.perf_counter() - t0
    batch = FrameBatch.from_atoms(good, method=lab.method, iteration=k)
    with atomic_dir(iter_dir(node, k) / "labelled") as out:
        write_table(out, batch)
        finals = [b for b in good if b.info.get("origin") != "relax-step"]
        (out / "label.json").write_text(json.dumps({
            "method": lab.method, "method_info": method_info, "labelled": len(finals), "frames": len(good),
            "relax_steps": [b.info.get("relax_step", 0) for b in finals],
            "relax_converged": [b.info.get("relax_converged") for b in finals], "failures": failures,
            "seconds": [b.info.get("label_seconds") for b in finals]}, indent=1, default=str))
    return {"labelled": len(finals), "frames": len(good), "failed": len(failures),
            "model_seconds": round(model_seconds, 2)}


def apply_labeller(node, lab, images, info: dict) -> tuple[list, list, dict]:
    """Label ``images`` through the node's executor: (labelled copies carrying ``info``, failures,
    the method info of the labels, code version included)."""
    from nodestore.models.labeller import to_atoms

    with make_executor(node) as ex:
        labels = lab.label(images, executor=ex, progress=True)
    good, failures = [], []
    for a, res in zip(images, labels):
        where = {"frame_id": a.info.get("frame_id", ""), "source": a.info.get("source", ""),
                 "formula": a.get_chemical_formula("metal")}
        if res["ok"]:
            # a labeller that relaxed the structure: every ionic step before the last is a training
            # frame of the same method (origin relax-step), all derived from the structure labelled
            steps = res.get("trajectory") or []
            for i, st in enumerate(steps[:-1]):
                s = to_atoms(a, {**st, "ok": True, "method": res["method"]})
                s.info = {"source": where["source"], **info, "origin": "relax-step", "parent_id": where["frame_id"],
                          "relax_step": i}
                good.append(s)
            b = to_atoms(a, res)
            b.info = {"source": where["source"], **info, "parent_id": where["frame_id"],
                      "spacegroup": a.info.get("spacegroup", 0), "label_seconds": res.get("seconds"),
                      "relax_step": max(0, len(steps) - 1)}
            if res.get("relax"):
                b.info["relax_converged"] = bool(res["relax"].get("converged"))
            good.append(b)
        else:
            failures.append({**where, "error": res["error"], "failure": res.get("failure")})
    # the labeller's settings (what node.yaml compares) with the code version its worker reported
    versions = sorted({str(res["method_info"].get("version")) for res in labels
                       if res["ok"] and res["method_info"].get("version")})
    return good, failures, {**lab.method_info, "version": versions[0] if versions else None}


def train(node, k: int) -> dict:
    """Fine-tune force field(k-1) on every labelled frame of the node's method; update generator(k-1)."""
    _threads()
    item = iteration_item(node, k)
    prev = iter_dir(node, item["prev"])
    method = node.config["reference_method"]
    table = snapshot_table(node, item["prev"])
    frames = labelled_frames(table, method)
    n_before = len(frames)
    frames += labelled_frames(read_table(iter_dir(node, k) / "labelled"), method)
    ff = load_forcefield(node, prev / "models")
    ft = section(section(node.params, "forcefield"), "finetune")
    metrics = {"method": method, "frames": len(frames), "frames_before": n_before, "parent": ff.hash}
    _pause_for_tests("train")
    if len(frames) >= int(section(node.params, "train").get("min_frames", 2)):
        from nodestore.models.forcefield import DEFAULT_RECIPE

        # the errors over the frames fine-tuning may use (not over collapsed geometries)
        max_force = ft.get("max_force", DEFAULT_RECIPE["max_force"])
        scored = [f for f in frames if max_force is None or np.abs(f.get_forces()).max() <= max_force] or frames
        t0 = time.perf_counter()
        before = ff.evaluate(scored)
        tuned = ff.finetune(frames, method=method, **{k_: v for k_, v in ft.items() if v is not None})
        after = tuned.evaluate(scored)
        model_seconds = time.perf_counter() - t0
        metrics.update({"before": before, "after": after, "finetune": tuned.metrics})
    else:
        tuned, model_seconds = ff, 0.0
        metrics["skipped"] = f"only {len(frames)} labelled frame(s) of {method}"
    gen = load_generator(node, prev / "models")
    outcomes = _outcomes(node, k)
    gen2 = gen.update(outcomes) if outcomes else gen
    with atomic_dir(iter_dir(node, k) / "models") as out:
        tuned.save(out / "forcefield")
        gen2.save(out / "generator")
    (iter_dir(node, k) / "train.json").write_text(json.dumps(metrics, indent=1, default=float))
    return {"trained_on": len(frames), "generator_outcomes": len(outcomes), "model_seconds": round(model_seconds, 2)}


def _outcomes(node, k: int) -> list[dict]:
    """What each screened proposal earned: 1 if predicted stable and not a duplicate, else 0."""
    screened = read_table(iter_dir(node, k) / "screened")
    thr = float(section(node.params, "curate").get("stable_threshold", 0.1))
    origin = screened.column("origin")
    rows = np.nonzero(origin == "relaxed")[0]
    e_hull = screened.column("e_hull")
    formula = screened.column("formula")
    n_atoms = screened.column("n_atoms")
    spg = screened.column("spacegroup")
    out = []
    from pymatgen.core import Composition

    strategy = candidate_strategies(node, k)
    parents = screened.column("parent_id")
    for r in rows:
        comp = Composition(formula[r])
        z = int(round(n_atoms[r] / comp.num_atoms)) if comp.num_atoms else 1
        reward = 1.0 if np.isfinite(e_hull[r]) and e_hull[r] <= thr else 0.0
        out.append({"id": parents[r], "composition": formula[r], "z": z,
                    "spacegroup": int(spg[r]) or None, "reward": reward, "strategy": strategy.get(str(parents[r]))})
    return out


def candidate_strategies(node, k: int) -> dict[str, str]:
    """``{candidate frame id: the strategy (generator backend) that proposed it}`` of iteration k
    (iterations generated before strategies were recorded give ``{}``)."""
    cands = read_table(iter_dir(node, k) / "candidates")
    out = {}
    for fid, src in zip(cands.column("frame_id").astype(str), cands.column("source").astype(str)):
        if "/" in src:
            out[fid] = src.split("/", 1)[1]
    return out


def strategy_yields(node, k: int, screened, labelled, e_hull_of: dict, thr: float) -> dict:
    """Per strategy: candidates proposed, relaxed by the screen, predicted within ``thr`` of the
    force field's hull, labelled, and labelled within ``thr`` of the labelled hull
    (``e_hull_of``: labelled frame id -> E_hull)."""
    strategy = candidate_strategies(node, k)
    if not strategy:
        return {}
    out: dict[str, dict] = {}
    for st in strategy.values():
        out.setdefault(st, {"candidates": 0, "screened": 0, "predicted_stable": 0, "labelled": 0, "confirmed": 0})
        out[st]["candidates"] += 1
    relaxed = np.nonzero(screened.column("origin") == "relaxed")[0]
    of_relaxed = {}
    ids, parents, eh = screened.column("frame_id").astype(str), screened.column("parent_id").astype(str), \
        screened.column("e_hull")
    for r in relaxed:
        st = strategy.get(parents[r])
        if st is None:
            continue
        of_relaxed[ids[r]] = st
        out[st]["screened"] += 1
        out[st]["predicted_stable"] += int(np.isfinite(eh[r]) and eh[r] <= thr)
    if len(labelled):
        for fid, par, origin in zip(labelled.column("frame_id").astype(str), labelled.column("parent_id").astype(str),
                                    labelled.column("origin").astype(str)):
            st = of_relaxed.get(par)
            if st is None or origin == "relax-step":
                continue
            out[st]["labelled"] += 1
            e = e_hull_of.get(fid)
            out[st]["confirmed"] += int(e is not None and np.isfinite(e) and e <= thr)
    for v in out.values():
        v["yield"] = round(v["predicted_stable"] / v["candidates"], 4) if v["candidates"] else 0.0
    return dict(sorted(out.items()))


def curate(node, k: int) -> dict:
    """E_hull on the labelled hull, novelty classes, S.U.N.; the iteration's segment and metrics."""
    from nodestore.chem import api as chem
    from nodestore.frames import FrameBatch, FrameTable

    item = iteration_item(node, k)
    table = snapshot_table(node, item["prev"])
    method = node.config["reference_method"]
    screened = read_table(iter_dir(node, k) / "screened")
    labelled = read_table(iter_dir(node, k) / "labelled")
    relaxed_rows = np.nonzero(screened.column("origin") == "relaxed")[0]
    _pause_for_tests("curate")
    new = FrameBatch.concat([screened.read(relaxed_rows), labelled.read()])
    # a scratch table = the node + this iteration's frames, to compute the new state in one place
    scratch_dir = Path(tempfile.mkdtemp(prefix="nodestore-curate-"))
    scratch = FrameTable.create(scratch_dir)
    base = table.read()
    scratch.append(base, dedup=False)
    scratch.append(new, dedup=False)
    n_base = len(base)
    new_rows = np.arange(n_base, len(scratch))
    metrics: dict = {"iteration": k, "method": method, "candidates": len(read_table(iter_dir(node, k) / "candidates")),
                     "screened": int(len(relaxed_rows)),
                     "labelled": int((labelled.column("origin") != "relax-step").sum()) if len(labelled) else 0,
                     "labelled_frames": len(labelled)}
    # E_hull of the labelled frames on the hull of the reference method
    try:
        _, e_hull, e_form = chem.hull_for_table(scratch, method)
        metrics["hull"] = "ok"
    except NodestoreError as exc:
        e_hull = np.full(len(scratch), np.nan)
        e_form = np.full(len(scratch), np.nan)
        metrics["hull"] = str(exc)
    # force-field E_hull for the relaxed candidates comes from screening
    ff_e_hull = scratch.column("e_hull")
    is_ff = np.array([is_prediction(m) for m in scratch.column("method")])
    e_hull = np.where(is_ff, ff_e_hull, e_hull)
    e_form = np.where(is_ff, scratch.column("e_form"), e_form)
    keys = scratch.row_keys()
    scratch.annotate(list(keys), {"e_hull": e_hull, "e_form": e_form})
    from .actions import entry_candidates

    # a relaxed candidate that was labelled is superseded by its labelled frame: the same crystal,
    # now on the reference method's scale; it must not make its own label look like a duplicate
    labelled_parents = set(labelled.column("parent_id").tolist()) if len(labelled) else set()
    cand = entry_candidates(scratch)
    ids = scratch.column("frame_id")
    cand = np.array([r for r in cand if not (is_ff[r] and ids[r] in labelled_parents)], dtype=np.int64)
    # the node's entries were curated against each other before: only this iteration's frames
    # need comparing with all of them (linear in the node, not quadratic)
    settled = np.zeros(len(scratch), dtype=bool)
    settled[:n_base] = table.column("is_entry")
    from .actions import node_references

    ckeys, ccols = chem.classify_table(scratch, reference_atoms=node_references(node, scratch),
                                       params=_match_params(node), rows=cand, cache=prepared_cache(node),
                                       keep_spacegroups=True, settled=settled,
                                       priority=is_ff.astype(float))  # a label represents its crystal
    scratch.annotate(ckeys, ccols)
    thr = float(section(node.params, "curate").get("stable_threshold", 0.1))
    with tempfile.TemporaryDirectory(prefix="nodestore-curate-") as tmp:
        sub = _subtable(scratch, new_rows, Path(tmp) / "new")
        # S.U.N. on the labelled hull (the claim), and as the force field predicted it (the screen)
        sun_new = chem.sun_counts(sub, thr, method=method)
        ff_methods = sorted({m for m in sub.column("method") if is_prediction(m)})
        if ff_methods:
            metrics["sun_predicted"] = chem.sun_counts(sub, thr, method=ff_methods[0])
    metrics["sun"] = sun_new
    metrics["e_hull"] = _describe(scratch.column("e_hull")[new_rows])
    # H before and after (QUESTS' diversity is not part of the metrics: not computed), then
    # dH of the new frames alone against the node
    cache = node.state_dir / "cache"
    ent_before = chem.entropy_report(table, diversity=False, cache=cache) if len(table) else {"H": 0.0}
    ent_after = chem.entropy_report(scratch, diversity=False, cache=cache)
    metrics["entropy"] = {"H_before": ent_before.get("H"), "H_after": ent_after.get("H"),
                          "per_element": ent_after.get("per_element")}
    if n_base:
        metrics["entropy"]["delta"] = chem.delta_report(scratch, new_rows, np.arange(n_base))
    # force-field quality against the labels: stability calls and errors on the labelled frames
    metrics["forcefield"] = _ff_quality(scratch, screened, labelled, method, e_hull, window=thr)
    # what each generator strategy proposed and what came of it
    lab_ids = set(labelled.column("frame_id").astype(str)) if len(labelled) else set()
    sids = scratch.column("frame_id").astype(str)
    metrics["strategies"] = strategy_yields(node, k, screened, labelled,
                                            {sids[r]: float(e_hull[r]) for r in new_rows if sids[r] in lab_ids}, thr)
    train_path = iter_dir(node, k) / "train.json"
    if train_path.exists():
        metrics["train"] = json.loads(train_path.read_text())
    out_batch = scratch.read(new_rows)
    with atomic_dir(iter_dir(node, k) / "curated") as out:
        write_table(out, out_batch)
    shutil.rmtree(scratch_dir, ignore_errors=True)
    (iter_dir(node, k) / "metrics.json").write_text(json.dumps(metrics, indent=1, default=_json_default))
    eh = out_batch["e_hull"]
    lines = ["iteration,frame_id,method,e_hull,novelty"]
    for i in range(len(out_batch)):
        if np.isfinite(eh[i]):
            lines.append(f"{k},{out_batch['frame_id'][i]},{out_batch['method'][i]},{eh[i]:.6f},{out_batch['novelty'][i]}")
    (iter_dir(node, k) / "ehull.csv").write_text("\n".join(lines) + "\n")
    return {"curated": len(out_batch), "sun": sun_new}


def _subtable(table, rows, path):
    from nodestore.frames import FrameTable

    shutil.rmtree(path, ignore_errors=True)
    t = FrameTable.create(path)
    t.append(table.read(rows), dedup=False)
    return t


def _describe(x) -> dict:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if not len(x):
        return {"n": 0}
    return {"n": int(len(x)), "min": float(x.min()), "median": float(np.median(x)), "max": float(x.max()),
            "le_0": int((x <= 0).sum()), "le_0.025": int((x <= 0.025).sum()), "le_0.1": int((x <= 0.1).sum())}


def _ff_quality(scratch, screened, labelled, method, e_hull_dft, window: float = 0.1) -> dict:
    """The screening force field against this iteration's new labels, which it has not seen.

    Pairs each labelled frame with the relaxed candidate it was made from (its primitive cell, the
    same crystal): energy per atom errors, E_hull errors and matbench-discovery's stability
    calls of the force field's hull against the labelled hull.
    """
    from nodestore.chem.metrics import stability_metrics

    if not len(labelled):
        return {}
    lab = labelled.read()
    scr = screened.read()
    by_id = {f: i for i, f in enumerate(scr["frame_id"])}
    idx = [by_id.get(p) for p in lab["parent_id"]]
    # the final label of each structure (its relaxed geometry where the labeller relaxed it)
    ok = [j for j, i in enumerate(idx) if i is not None and lab["origin"][j] != "relax-step"]
    if not ok:
        return {}
    si = [idx[j] for j in ok]
    d = scr["energy"][si] / scr["n_atoms"][si] - lab["energy"][ok] / lab["n_atoms"][ok]
    d = d[np.isfinite(d)]
    out = {"n": len(ok), "checkpoint": str(scr["checkpoint"][si[0]]) or None}
    if len(d):
        out.update(energy_mae_per_atom=float(np.abs(d).mean()), energy_rmse_per_atom=float(np.sqrt((d ** 2).mean())),
                   energy_mean_error_per_atom=float(d.mean()))
    # DFT E_hull of the labelled frames from the scratch hull
    ids = scratch.column("frame_id")
    methods = scratch.column("method")
    dft = {f: e for f, m, e in zip(ids, methods, e_hull_dft) if m == method}
    true = np.array([dft.get(lab["frame_id"][j], np.nan) for j in ok])
    pred = scr["e_hull"][si]
    # the calls at E_hull <= 0 (matbench-discovery's convention) and inside the node's stability
    # window (curate.stable_threshold): does a structure the screen called stable stay so?
    for key, thr in (("stability", 0.0), ("stability_window", window)):
        try:
            out[key] = {"threshold": thr, **stability_metrics(true, pred, threshold=thr)}
        except NodestoreError as exc:  # no finite labelled E_hull (no hull of the reference method yet)
            out[key] = {"threshold": thr, "note": str(exc)}
    return out


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


RUNNERS = {"generate": generate, "screen": screen, "select": select, "label": label, "train": train, "curate": curate}


def run_stage(node, name: str, k: int) -> dict:
    """Run one stage and record its wall time in loop/iter-k/timings/NAME.json."""
    if name not in RUNNERS:
        raise ValidationError(f"unknown stage {name!r} (stages: {', '.join(STAGES)})")
    t0 = time.perf_counter()
    result = RUNNERS[name](node, k)
    timings = iter_dir(node, k) / "timings"
    timings.mkdir(parents=True, exist_ok=True)
    (timings / f"{name}.json").write_text(json.dumps(
        {"stage": name, "iteration": k, "seconds": round(time.perf_counter() - t0, 2), **result},
        indent=1, default=_json_default) + "\n")
    return result
