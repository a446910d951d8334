"""Commands that join the models and the node outside the loop: label, predict, hull, classify, entropy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nodestore.errors import NodestoreError, ValidationError
from nodestore.repo.methods import FF_PREFIX, is_prediction
from nodestore.repo.results import Result


def _read(files) -> list:
    from nodestore.frames.io import read_file

    images = []
    for f in files:
        images.extend(read_file(f))
    return images


def primitive(atoms):
    """The primitive standard cell (same energy per atom, fewer atoms to label)."""
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    s = AseAtomsAdaptor.get_structure(atoms)
    try:
        p = SpacegroupAnalyzer(s, symprec=0.01).get_primitive_standard_structure()
    except Exception:  # spglib gives up on some cells: label the cell as given
        return atoms
    out = AseAtomsAdaptor.get_atoms(p)
    out.info.update(atoms.info)
    return out


def label_files(node, files, labeller: str | None = None, message: str | None = None, reduce: bool = True,
                origin: str = "labelled", images=None) -> dict:
    """Label the structures of ``files`` with the node's labeller and commit them as frames."""
    from nodestore.frames import FrameBatch
    from nodestore.frames.validate import Rules, validate_batch

    from nodestore.repo.methods import check_method
    from nodestore.repo.results import LabelResult

    from .stages import apply_labeller, load_labeller

    if images is None:
        images = _read(files)
    images = [primitive(a) if reduce else a for a in images]
    for a in images:
        a.calc = None
    validate_batch(FrameBatch.from_atoms(images), Rules(elements=frozenset(node.system)))
    if labeller:
        from nodestore.models.registry import from_config

        lab = from_config("labeller", {"backend": labeller})
    else:
        lab = load_labeller(node)
    check_method(node, lab.method_info)  # before any compute
    good, failures, method_info = apply_labeller(node, lab, images, {"origin": origin})
    commit = None
    if good:
        batch = FrameBatch.from_atoms(good, method=lab.method)
        with node.transaction(message or f"label {len(good)} structures with {lab.method}") as tx:
            seg = tx.append(batch)
            changed = tx.record_method(method_info)
            if seg is None and not changed:
                tx.cancel()
        commit = tx.commit_id
    return LabelResult(labelled=len(good), failures=failures, method=lab.method, commit=commit)


def predict_files(node, files, model: str | None = None, relax: bool = False, fmax: float = 0.05,
                  steps: int = 200) -> list[dict]:
    """Energy per atom (and E_hull on this force field's own hull) for each structure of ``files``."""
    from nodestore.chem.hull import compute_hull
    from nodestore.models.forcefield import ForceField

    from .stages import current_forcefield, on_method_scale

    images = _read(files)
    if model:
        path = Path(model)
        if not path.exists():
            path = node.path / "models" / model
        if not path.exists():
            raise ValidationError(f"no checkpoint {model!r} (see `nodestore model list`)")
        ff = ForceField.load(path)
    else:
        _, ff = current_forcefield(node)
    # on the labeller's energy scale (refit on the node's labels if the model is not fitted to it)
    ff = on_method_scale(ff, node.table, node.config["reference_method"])
    if relax:
        res = ff.relax(images, fmax=fmax, steps=steps)
        energies = [r["energy"] for r in res]
        finals = [r["atoms"] for r in res]
    else:
        energies = [r["energy"] for r in ff.predict(images)]
        finals = images
    method = FF_PREFIX + ff.method
    out = [{"source": a.info.get("source", ""), "formula": b.get_chemical_formula("metal"),
            "n_atoms": len(b), "energy": float(e), "energy_per_atom": float(e) / len(b), "method": method}
           for a, b, e in zip(images, finals, energies)]
    try:
        ref_items = _ff_references(node, ff, method, fmax=max(fmax, 0.05), steps=steps)
        hull = compute_hull([(b, e, method) for b, e in zip(finals, energies)], method,
                            references=ref_items, include_items=False)
        for o, eh in zip(out, hull.e_hull):
            o["e_hull"] = float(eh)
    except NodestoreError as exc:
        for o in out:
            o["e_hull"] = None
            o["e_hull_note"] = str(exc)
    return out


def node_references(node, table) -> list:
    """The node's reference phases: its frames of origin ``reference`` labelled by the node's
    reference method (one per structure, as ``label_references`` or a bench that holds some
    phases out put them there), or the shipped phases of its system when it has none labelled.
    The force-field hull of the screen, novelty in curate and classify all use this one list."""
    from nodestore.chem.hull import reference_structures

    if len(table):
        method = node.config["reference_method"]
        rows = np.nonzero((table.column("origin") == "reference") & (table.column("method") == method)
                          & np.isfinite(table.column("energy")))[0]
        if len(rows):
            _, first = np.unique(table.column("frame_id")[rows].astype(str), return_index=True)
            images = table.to_atoms(rows[np.sort(first)])
            for a in images:
                a.calc = None
                a.info = {"name": a.info.get("source") or a.get_chemical_formula("metal"), "origin": "reference",
                          "source": a.info.get("source", "")}
            return images
    return reference_structures(node.system)


def _ff_references(node, ff, method: str, fmax: float, steps: int) -> list[tuple]:
    """This force field's energies of the node's reference phases (relaxed primitive cells),
    cached per model and per set of reference phases."""
    import hashlib
    import json

    phases = node_references(node, node.table)
    key = {"references": ff.references.to_json(),
           "phases": sorted(f"{a.get_chemical_formula('metal')}:{len(a)}:{a.get_volume():.3f}" for a in phases)}
    refs = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    cache = node.state_dir / "ff-references" / f"{method.replace('/', '_')}-r{refs}-f{fmax:g}-s{steps}.json"
    if cache.exists():
        return [(d["formula"], d["energy"], method) for d in json.loads(cache.read_text())]
    refs = [primitive(a) for a in phases]
    res = ff.relax(refs, fmax=fmax, steps=steps)
    items = [{"formula": r["atoms"].get_chemical_formula("metal"), "energy": float(r["energy"])} for r in res]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(items))
    return [(d["formula"], d["energy"], method) for d in items]


def hull_report(node, method: str | None = None, rev: str | None = None, plot: str | None = None,
                decomposition: bool = False) -> dict:
    """Stable phases of one method's hull and the lowest E_hull per formula; with
    ``decomposition``, what each phase above the hull decomposes into (fractions of atoms)."""
    from nodestore.chem.api import hull_for_table

    table = node.table_at(rev)
    method = method or node.config["reference_method"]
    diagram, e_hull, e_form, *dec = hull_for_table(table, method, decomposition=decomposition)
    if plot:
        from nodestore.chem.hull import plot_hull

        plot_hull(diagram, plot)
    rows = np.nonzero(np.isfinite(e_hull))[0]
    formula = table.column("formula")
    ids = table.column("frame_id")
    best: dict[str, dict] = {}
    for r in rows:
        f = formula[r]
        if f not in best or e_hull[r] < best[f]["e_hull"]:
            best[f] = {"formula": f, "frame_id": ids[r], "e_hull": float(e_hull[r]), "e_form": float(e_form[r])}
            if decomposition:
                best[f]["decomposition"] = dict(sorted(dec[0][r].items(), key=lambda kv: -kv[1]))
    stable = sorted(e.composition.reduced_formula for e in diagram.stable_entries)
    return {"method": method, "stable": stable, "phases": sorted(best.values(), key=lambda d: (d["e_hull"], d["formula"]))}


def classify_node(node, message: str | None = None, all_rows: bool = False) -> dict:
    """Fill hull, novelty and entry columns for the frames that lack them; one commit."""
    from nodestore.chem.api import classify_table, hull_for_table
    from nodestore.repo.results import ClassifyResult

    method = node.config["reference_method"]
    with node.transaction(message or "update E_hull") as tx:
        table = tx.table
        try:
            _, e_hull, e_form = hull_for_table(table, method)
            rows = np.nonzero(table.column("method") == method)[0]
            tx.annotate(list(table.row_keys()[rows]), {"e_hull": e_hull[rows], "e_form": e_form[rows]})
            hull_note = "ok"
        except NodestoreError as exc:
            hull_note = str(exc)
        # which labels of the method are relaxed ones (the labeller's own relaxation ended there)
        lab = (table.column("method") == method) & (table.column("origin") != "relax-step")
        relaxed = {"labels": int(lab.sum()), "relaxed": int((lab & (table.column("relax_step") > 0)).sum())}
        rows = entry_candidates(table)
        if not all_rows and not (table.column("novelty")[rows] == "").any():
            classified = None
        else:
            # entries are decided among all candidates at once: dedup needs the whole set
            # a crystal's label, not a force field's prediction of it, represents it

            predicted = np.array([is_prediction(m) for m in table.column("method")], dtype=float)
            keys, cols = classify_table(table, reference_atoms=node_references(node, table), params=_match(node), rows=rows,
                                        cache=node.state_dir / "cache" / "prepared", priority=predicted)
            tx.annotate(keys, cols)
            counts = {c: int(np.sum(np.asarray(cols["novelty"]) == c)) for c in ("duplicate", "substitution", "novel")}
            classified = (len(keys), counts, int(np.sum(cols["is_entry"])))
            tx.message = message or f"classify {len(keys)} rows: {counts}"
    if classified is None:
        return ClassifyResult(classified=0, hull=hull_note, commit=tx.commit_id, relaxed_labels=relaxed)
    return ClassifyResult(classified=classified[0], novelty=classified[1], entries=classified[2],
                          hull=hull_note, commit=tx.commit_id, relaxed_labels=relaxed)


def entry_candidates(table) -> np.ndarray:
    """Rows that may stand for a material: references, loop structures, and imported structure files.

    Imported rows that carry labels (MD snapshots, training sets) and the intermediate
    ionic steps of a labeller's relaxation (origin ``relax-step``) are training
    frames, not candidate entries: frames of one trajectory are not materials.
    """
    origin = table.column("origin")
    method = table.column("method")
    return np.nonzero(((origin != "imported") | (method == "")) & (origin != "relax-step"))[0]


def _match(node) -> dict:
    m = dict(node.params.get("match") or {})
    return {k: float(m[k]) for k in ("ltol", "stol", "angle_tol") if k in m}


def entropy_node(node, rev: str | None = None) -> dict:
    from nodestore.chem.api import entropy_report

    return entropy_report(node.table_at(rev), cache=node.state_dir / "cache")


def label_references(node, message: str | None = None) -> dict:
    """Label the reference phases of the node's system (shipped files plus bcc Li and antifluorite Li2S)."""
    from nodestore.chem.hull import reference_structures

    refs = reference_structures(node.system)
    for a in refs:
        a.info["source"] = a.info.get("name", a.info.get("source", "reference"))
    return label_files(node, [], images=refs, origin="reference",
                       message=message or "label the reference phases")


@dataclass(frozen=True)
class TrainResult(Result):
    """What ``nodestore train`` did: the new current force field and its held-out errors
    (eV/atom and eV/A on the frames it held out; ``*_refs``: after the reference fit alone)."""

    checkpoint: str
    commit: str | None
    method: str
    backend: str
    parent: str | None
    n_train: int
    n_val: int
    energy_rmse_before: float | None
    energy_rmse_refs: float | None
    energy_rmse_after: float | None
    force_rmse_before: float | None
    force_rmse_after: float | None
    epochs: int
    best_epoch: int
    frozen_backbone: bool
    seconds: float


#: the fewest labelled frames of a method that ``train`` accepts (one held out, three to learn from)
MIN_TRAIN_FRAMES = 4


def train_forcefield(node, method: str | None = None, backend: str | None = None, val_fraction: float | None = None,
                     message: str | None = None, progress: bool = True, **recipe) -> TrainResult:
    """Fine-tune the current force field (or a fresh pretrained one of ``backend``) on the node's
    labelled frames of ``method`` and commit the result as the current force field."""
    import tempfile

    from nodestore.models.registry import from_config

    from .stages import current_forcefield, labelled_dataset, section

    method = method or node.config["reference_method"]
    table = node.table
    frames = labelled_dataset(table, method)  # streamed batch by batch: a large node is never read whole
    if len(frames) < MIN_TRAIN_FRAMES:
        known = sorted({m for m in table.column("method") if m}) if len(table) else []
        raise ValidationError(
            f"method {method!r} has {len(frames)} labelled frame(s) with forces in this node; training needs at "
            f"least {MIN_TRAIN_FRAMES} (label more with `nodestore label`; methods here: {', '.join(known) or 'none'})")
    ff_params = section(node.params, "forcefield")
    if backend:
        cfg = ff_params if ff_params.get("backend") == backend else {"backend": backend}
        ff = from_config("forcefield", {**cfg, "checkpoint": None})
    else:
        _, ff = current_forcefield(node)
    kwargs = {k: v for k, v in section(ff_params, "finetune").items() if v is not None}
    kwargs.update({k: v for k, v in recipe.items() if v is not None})
    if val_fraction is not None:
        kwargs["val_fraction"] = val_fraction
    tuned = ff.finetune(frames, method=method, progress=progress, **kwargs)
    m = tuned.metrics
    with tempfile.TemporaryDirectory(prefix="nodestore-train-") as tmp:
        tuned.save(Path(tmp) / "forcefield")
        with node.transaction(message or f"train forcefield ({tuned.backend}) on {m['n_train']} frames of {method}") as tx:
            cid = tx.add_checkpoint(Path(tmp) / "forcefield", "forcefield", make_current=True)
    return TrainResult(
        checkpoint=cid, commit=tx.commit_id, method=method, backend=tuned.backend, parent=ff.hash,
        n_train=m["n_train"], n_val=m["n_val"],
        energy_rmse_before=m.get("val_energy_rmse_per_atom_before"),
        energy_rmse_refs=m.get("val_energy_rmse_per_atom_refs"),
        energy_rmse_after=m.get("val_energy_rmse_per_atom"),
        force_rmse_before=m.get("val_force_rmse_before"), force_rmse_after=m.get("val_force_rmse"),
        epochs=m["epochs"], best_epoch=m["best_epoch"], frozen_backbone=m["frozen_backbone"], seconds=m["seconds"])


def motifs_report(node, rev: str | None = None, all_rows: bool = False, factor: float = 1.2) -> dict:
    """The polyanion census of the node's curated entries and reference phases (``all_rows``: of
    every frame) at ``rev``:
    each row's motif multiset, the motifs counted per iteration (0: the reference phases and
    everything imported), and the motifs no reference phase and no earlier iteration had."""
    from collections import Counter

    from nodestore.chem.motifs import census, motif_string
    from nodestore.errors import ValidationError

    table = node.table_at(rev)
    ids, formula = table.column("frame_id"), table.column("formula")
    origin, iteration = table.column("origin"), table.column("iteration")
    if all_rows:
        rows = np.arange(len(table))
    else:
        entries = table.column("is_entry")
        if not entries.any():
            raise ValidationError("the node has no curated entries yet: run `nodestore classify` "
                                  "(or count every frame with --all)")
        # the entries, and the reference phases they are compared with
        rows = np.nonzero(entries | (origin == "reference"))[0]
    entries, per_it = [], {}
    for r, atoms in zip(rows.tolist(), table.to_atoms(rows)):
        c = census(atoms, factor=factor)
        k = 0 if origin[r] == "reference" else int(iteration[r])
        per_it.setdefault(k, Counter()).update(c)
        entries.append({"frame_id": str(ids[r]), "formula": str(formula[r]), "iteration": k,
                        "origin": str(origin[r]), "motifs": motif_string(c), "counts": dict(c)})
    seen: set[str] = set()
    iterations = []
    for k in sorted(per_it):
        new = sorted(set(per_it[k]) - seen) if k > 0 else []
        iterations.append({"iteration": k, "counts": dict(sorted(per_it[k].items())), "new": new})
        seen |= set(per_it[k])
    return {"rows": len(rows), "factor": factor, "entries": entries, "iterations": iterations}
