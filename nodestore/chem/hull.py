"""Convex hull and energy above it, one energy method at a time.

Energies of different methods (PBE, PBEsol, r2SCAN, a force field) never share
a hull: every function here takes one ``method`` and refuses anything else.
An *item* is a ``(thing, total_energy_eV, method)`` tuple where ``thing`` is
ASE Atoms, a pymatgen Structure or Composition, or a formula string.
"""

from __future__ import annotations

import gzip
import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nodestore.errors import NoHullError, ValidationError

DATA = Path(__file__).resolve().parent.parent / "data" / "li-p-s"
STRUCTURES = DATA / "structures"
MP_ELEMENTAL = DATA / "energies" / "2023-02-07-mp-elemental-reference-entries.json.gz"
#: method label of the Materials Project GGA (PBE, uncorrected) energies
MP_METHOD = "vasp-pbe"

#: shipped reference phases: name -> file under data/li-p-s/structures
REFERENCE_FILES = {
    "P_black": "P_black_Cmce.cif",
    "S_alpha": "S_alpha_Fddd.cif",
    "Li3PS4_gamma": "Li3PS4_gamma_Pmn21.cif",
    "Li3PS4_beta": "Li3PS4_beta_Pnma_mp-985583.json",
    "Li3P": "Li3P_P63mmc.cif",
}


def _composition(thing):
    from pymatgen.core import Composition

    if isinstance(thing, Composition):
        return thing
    if isinstance(thing, str):
        try:
            return Composition(thing)
        except Exception:
            raise ValidationError(f"{thing!r} is not a chemical formula") from None
    if hasattr(thing, "get_chemical_formula"):  # ASE Atoms
        return Composition(thing.get_chemical_formula())
    if hasattr(thing, "composition"):  # Structure, entries
        return thing.composition
    raise ValidationError(f"cannot take a composition from a {type(thing).__name__}")


def reference_structures(elements: Iterable[str] | None = None) -> list:
    """The shipped Li–P–S reference phases as ASE Atoms (``atoms.info["name"]``).

    The five structure files plus bcc Li (a = 3.51 Å) and antifluorite Li2S
    (a = 5.70 Å).  With ``elements``, only phases made of those elements.
    """
    from ase.build import bulk
    from ase.io import read
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    out = []
    for name, fname in REFERENCE_FILES.items():
        path = STRUCTURES / fname
        if path.suffix == ".json":
            atoms = AseAtomsAdaptor.get_atoms(Structure.from_dict(json.loads(path.read_text())))
        else:
            atoms = read(path)
        out.append((name, atoms))
    out.append(("Li_bcc", bulk("Li", "bcc", a=3.51)))
    out.append(("Li2S_antifluorite", bulk("SLi2", "fluorite", a=5.70)))  # S on the fcc site, Li in the tetrahedral holes
    wanted = None if elements is None else set(elements)
    images = []
    for name, atoms in out:
        atoms = atoms.copy()
        atoms.calc = None
        atoms.info = {"name": name, "origin": "reference", "source": f"nodestore/data/li-p-s:{name}"}
        if wanted is None or set(atoms.get_chemical_symbols()) <= wanted:
            images.append(atoms)
    return images


def mp_elemental_references(elements: Iterable[str] | None = None) -> list[tuple]:
    """Materials Project elemental reference energies as hull items of method ``vasp-pbe``.

    Read from the shipped matbench-discovery JSON (pymatgen ``from_dict``;
    uncorrected total energies).  Returns ``[(Composition, energy_eV, "vasp-pbe")]``.
    """
    from pymatgen.entries.computed_entries import ComputedEntry

    with gzip.open(MP_ELEMENTAL, "rt") as fh:
        data = json.load(fh)
    wanted = None if elements is None else set(elements)
    items = []
    with warnings.catch_warnings():  # noble gases have no electronegativity: pymatgen warns
        warnings.simplefilter("ignore")
        for symbol, doc in sorted(data.items()):
            if wanted is not None and symbol not in wanted:
                continue
            entry = ComputedEntry.from_dict(doc)
            items.append((entry.composition, float(entry.uncorrected_energy), MP_METHOD))
    return items


@dataclass
class HullResult:
    """E_hull and formation energy per atom (eV/atom) of each item, and the diagram."""

    diagram: object  # pymatgen PhaseDiagram
    e_hull: np.ndarray
    e_form: np.ndarray
    method: str
    decomposition: list | None = None  # per item: {formula: fraction} of the hull phases

    @property
    def stable(self) -> np.ndarray:
        return self.e_hull <= 1e-8


def _entries(items: Sequence, method: str, what: str) -> list:
    from pymatgen.entries.computed_entries import ComputedEntry

    entries = []
    for k, item in enumerate(items):
        if isinstance(item, ComputedEntry):
            m = (item.parameters or {}).get("method", method)
            comp, energy = item.composition, item.uncorrected_energy
        else:
            try:
                thing, energy, m = item
            except (TypeError, ValueError):
                raise ValidationError(f"{what} {k}: expected (structure, energy, method), got {item!r}") from None
            comp = _composition(thing)
        if m != method:
            raise ValidationError(
                f"{what} {k} has energy method {m!r}, but this hull is for {method!r}: "
                "energies of different methods never share a hull")
        energy = float(energy)
        if not np.isfinite(energy):
            raise ValidationError(f"{what} {k} ({comp.reduced_formula}) has no energy")
        entries.append(ComputedEntry(comp, energy, parameters={"method": method}, entry_id=f"{what}-{k}"))
    return entries


def compute_hull(items: Sequence, method: str, references: Sequence = (), include_items: bool = True,
                 decomposition: bool = False) -> HullResult:
    """E_hull and formation energy per atom of each item, on the hull of ``method``.

    ``references`` are extra phases (same tuple form) that shape the hull but
    get no result.  With ``include_items`` (default) the items themselves are
    on the diagram, so no E_hull is negative; otherwise they are screened
    against the hull of the references alone (negative: below that hull).
    Raises :class:`NoHullError` if an element has no elemental phase of ``method``.
    """
    from pymatgen.analysis.phase_diagram import PhaseDiagram

    item_entries = _entries(items, method, "item")
    ref_entries = _entries(references, method, "reference")
    on_hull = ref_entries + (item_entries if include_items else [])
    elements = sorted({el.symbol for e in item_entries + ref_entries for el in e.composition.elements})
    have = {e.composition.elements[0].symbol for e in on_hull if len(e.composition.elements) == 1}
    for el in elements:
        if el not in have:
            raise NoHullError(f"no hull for method {method}: missing elemental reference for {el}")
    if not elements:
        raise NoHullError(f"no hull for method {method}: no energies")
    # the lowest energy per atom of each composition is all the hull needs
    best: dict = {}
    for e in on_hull:
        key = e.composition.reduced_formula
        if key not in best or e.energy_per_atom < best[key].energy_per_atom:
            best[key] = e
    diagram = PhaseDiagram(list(best.values()))
    e_hull = np.empty(len(item_entries))
    e_form = np.empty(len(item_entries))
    decomps = [] if decomposition else None
    for k, e in enumerate(item_entries):
        decomp, eh = diagram.get_decomp_and_e_above_hull(e, allow_negative=True)
        e_hull[k] = max(eh, 0.0) if include_items else eh
        e_form[k] = diagram.get_form_energy_per_atom(e)
        if decomposition:
            decomps.append({d.composition.reduced_formula: float(f) for d, f in decomp.items()})
    return HullResult(diagram, e_hull, e_form, method, decomps)


def plot_hull(diagram, path) -> Path:
    """Save a picture of a PhaseDiagram (matplotlib) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    from pymatgen.analysis.phase_diagram import PDPlotter

    plotter = PDPlotter(diagram, backend="matplotlib")
    ax = plotter.get_plot()
    fig = ax.figure if hasattr(ax, "figure") else ax.gcf()
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return Path(path)
