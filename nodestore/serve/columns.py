"""The OPTIMADE structure fields of a frame table, as columns: what filters, sorting and the
response documents read.  Fields that depend only on the composition are computed once per
distinct composition and indexed back to the rows."""

from __future__ import annotations

import math
from functools import reduce

import numpy as np

#: provider fields (served with the ``_nodestore_`` prefix): name -> (table column, type, unit, description)
PROVIDER_FIELDS = {
    "e_hull": ("e_hull", "float", "eV/atom", "energy above the convex hull of the row's method"),
    "e_form": ("e_form", "float", "eV/atom", "formation energy per atom on the row's method"),
    "energy": ("energy", "float", "eV", "total energy of the frame on its method"),
    "method": ("method", "string", None, "the method (DFT settings or force field) that labelled the frame"),
    "novelty": ("novelty", "string", None, "novelty class against the node: duplicate, substitution or novel"),
    "iteration": ("iteration", "integer", None, "loop iteration that made the row"),
    "is_entry": ("is_entry", "boolean", None, "the curated entry standing for a material"),
    "checkpoint": ("checkpoint", "string", None, "model checkpoint behind the energy, if a model made it"),
    "origin": ("origin", "string", None, "imported, generated, relaxed, labelled, reference, merged or relax-step"),
    "source": ("source", "string", None, "file, branch or stage the row came from"),
    "spacegroup": ("spacegroup", "integer", None, "space group number (0: unknown)"),
    "frame_id": ("frame_id", "string", None, "content hash of numbers, positions, cell and pbc"),
}


def _symbols():
    from ase.data import chemical_symbols

    return chemical_symbols


def _formula(counts: dict[str, int], order) -> str:
    return "".join(f"{el}{'' if n == 1 else n}" for el, n in order(counts))


def composition_fields(row_counts: np.ndarray) -> dict:
    """OPTIMADE's composition fields of one row of atom counts per atomic number."""
    sym = _symbols()
    z = np.nonzero(row_counts)[0]
    counts = {sym[i]: int(row_counts[i]) for i in z}
    g = reduce(math.gcd, counts.values()) if counts else 1
    red = {el: n // g for el, n in counts.items()}
    elements = sorted(counts)
    total = sum(counts.values())
    anon_counts = sorted(red.values(), reverse=True)
    anon = "".join(f"{_anonymous(i)}{'' if n == 1 else n}" for i, n in enumerate(anon_counts))
    return {
        "elements": elements,
        "nelements": len(elements),
        "elements_ratios": [counts[el] / total for el in elements],
        "chemical_formula_reduced": _formula(red, lambda c: sorted(c.items())),
        "chemical_formula_anonymous": anon,
        "chemical_formula_hill": _formula(counts, _hill),
        "chemical_formula_descriptive": _formula(counts, _hill),
    }


def _hill(counts: dict) -> list:
    if "C" in counts:
        first = [("C", counts["C"])] + ([("H", counts["H"])] if "H" in counts else [])
        return first + sorted((k, v) for k, v in counts.items() if k not in ("C", "H"))
    return sorted(counts.items())


def _anonymous(i: int) -> str:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    if i < 26:
        return letters[i]
    return letters[i // 26 - 1] + letters[i % 26].lower()


class Field:
    """One filterable field: a numeric array (NaN: null), or distinct values with each row's index."""

    def __init__(self, values=None, uniques=None, inverse=None, kind="num", lengths=None):
        self.values, self.uniques, self.inverse, self.kind = values, uniques, inverse, kind
        #: for a list field whose distinct values stand for sets (species_at_sites): each row's length
        self.lengths = lengths

    @classmethod
    def numeric(cls, values) -> "Field":
        return cls(values=np.asarray(values, dtype=float))

    @classmethod
    def categorical(cls, uniques: list, inverse: np.ndarray, kind: str = "str") -> "Field":
        return cls(uniques=uniques, inverse=np.asarray(inverse, dtype=np.int64), kind=kind)

    @classmethod
    def strings(cls, values) -> "Field":
        values = np.asarray(values, dtype=object)
        uniq, inv = np.unique(values.astype(str), return_inverse=True) if len(values) else ([], np.zeros(0, int))
        return cls.categorical([None if u == "" else str(u) for u in uniq], inv)

    def where(self, test) -> np.ndarray:
        """Rows whose value passes ``test(value)`` (``test`` sees every distinct value once)."""
        if self.uniques is None:
            raise TypeError("numeric")
        ok = np.array([bool(test(u)) for u in self.uniques], dtype=bool)
        return ok[self.inverse] if len(ok) else np.zeros(len(self.inverse), dtype=bool)

    def sort_key(self) -> np.ndarray:
        """A numeric key that sorts the rows by this field, nulls last."""
        if self.uniques is None:
            return np.where(np.isnan(self.values), np.inf, self.values)
        order = sorted(range(len(self.uniques)), key=lambda i: (self.uniques[i] is None, _sortable(self.uniques[i])))
        rank = np.empty(len(order), dtype=float)
        rank[order] = np.arange(len(order))
        return rank[self.inverse] if len(rank) else np.zeros(0)

    def value(self, row: int):
        if self.uniques is None:
            v = self.values[row]
            return None if np.isnan(v) else v
        return self.uniques[self.inverse[row]]

    def __len__(self) -> int:
        return len(self.values) if self.uniques is None else len(self.inverse)


def _sortable(v):
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return str(v)
    return v


class StructureColumns:
    """The filterable fields of a FrameTable, built once (per-frame columns and the atom counts)."""

    def __init__(self, table, last_modified: str):
        self.table = table
        self.last_modified = last_modified
        n = len(table)
        self.n = n
        cols = table.columns(["frame_id", "method", "n_atoms", "pbc", "e_hull", "e_form", "energy", "novelty",
                              "iteration", "is_entry", "checkpoint", "origin", "source", "spacegroup"])
        self.frame_id = cols["frame_id"].astype(str)
        method = cols["method"].astype(str)
        # one id per row: the frame's content hash, with its method where the hash is not unique
        uniq_ids, counts = np.unique(self.frame_id, return_counts=True)
        dup = set(uniq_ids[counts > 1].tolist())
        self.ids = np.array([f if f not in dup or not m else f"{f}@{m}" for f, m in zip(self.frame_id, method)],
                            dtype=object)
        self.row_of = {i: r for r, i in enumerate(self.ids)}
        numbers = table.read(columns=["numbers"]) if n else None
        counts_z = np.zeros((n, 119), dtype=np.int32)
        if n:
            frame_of_atom = np.repeat(np.arange(n), np.diff(numbers.offsets))
            np.add.at(counts_z, (frame_of_atom, numbers["numbers"].astype(np.int64)), 1)
        uniq, inv = (np.unique(counts_z, axis=0, return_inverse=True) if n else (np.zeros((0, 119)), np.zeros(0)))
        inv = np.asarray(inv).reshape(-1)
        comp = [composition_fields(u) for u in uniq]
        self.fields: dict[str, Field] = {}
        for key in ("elements", "elements_ratios", "chemical_formula_reduced", "chemical_formula_anonymous",
                    "chemical_formula_hill", "chemical_formula_descriptive"):
            self.fields[key] = Field.categorical([c[key] for c in comp], inv,
                                                 kind="list" if key.startswith("elements") else "str")
        # for HAS, HAS ALL/ANY/ONLY the sites' species are the set of elements; LENGTH is nsites
        self.fields["species_at_sites"] = Field(uniques=[c["elements"] for c in comp], inverse=inv, kind="list",
                                                lengths=np.asarray(cols["n_atoms"], dtype=float))
        self.fields["nelements"] = Field.numeric([comp[i]["nelements"] for i in inv] if n else [])
        self.fields["nsites"] = Field.numeric(cols["n_atoms"])
        pbc = np.asarray(cols["pbc"], dtype=bool).reshape(n, 3)
        self.fields["nperiodic_dimensions"] = Field.numeric(pbc.sum(axis=1))
        dims = [tuple(int(x) for x in p) for p in pbc]
        du = sorted(set(dims))
        self.fields["dimension_types"] = Field.categorical([list(d) for d in du], [du.index(d) for d in dims], "list")
        self.fields["id"] = Field.strings(self.ids)
        self.fields["immutable_id"] = Field.strings(self.frame_id)
        self.fields["last_modified"] = Field.categorical([last_modified], np.zeros(n, dtype=np.int64))
        self.fields["structure_features"] = Field.categorical([[]], np.zeros(n, dtype=np.int64), "list")
        for name, (col, typ, _, _) in PROVIDER_FIELDS.items():
            v = cols[col]
            if typ in ("float", "integer", "boolean"):
                self.fields[name] = Field.numeric(v.astype(float))
            else:
                self.fields[name] = Field.strings(v)
        self.kinds = {name: typ for name, (_, typ, _, _) in PROVIDER_FIELDS.items()}

    def documents(self, rows) -> list[dict]:
        """The backend documents (OPTIMADE field names; provider fields unprefixed) of ``rows``."""
        from ase.data import chemical_symbols

        rows = [int(r) for r in rows]
        if not rows:
            return []
        batch = self.table.read(rows, columns=["numbers", "positions", "cell", "pbc"])
        out = []
        for j, r in enumerate(rows):
            a, b = batch.offsets[j], batch.offsets[j + 1]
            numbers = batch["numbers"][a:b]
            symbols = [chemical_symbols[z] for z in numbers]
            pbc = [bool(x) for x in np.asarray(batch["pbc"][j]).reshape(3)]
            cell = np.asarray(batch["cell"][j], dtype=float).reshape(3, 3)
            doc = {
                "id": self.ids[r],
                "immutable_id": str(self.frame_id[r]),
                "last_modified": self.last_modified,
                "lattice_vectors": [[None] * 3 if not p else [float(x) for x in v] for v, p in zip(cell, pbc)],
                "cartesian_site_positions": np.asarray(batch["positions"][a:b], dtype=float).tolist(),
                "species_at_sites": symbols,
                "species": [{"name": s, "chemical_symbols": [s], "concentration": [1.0]} for s in sorted(set(symbols))],
                "dimension_types": [int(p) for p in pbc],
                "nperiodic_dimensions": int(sum(pbc)),
                "nsites": int(b - a),
                "structure_features": [],
            }
            for key in ("elements", "elements_ratios", "chemical_formula_reduced", "chemical_formula_anonymous",
                        "chemical_formula_hill", "chemical_formula_descriptive", "nelements"):
                v = self.fields[key].value(r)
                doc[key] = int(v) if key == "nelements" else v
            for name, typ in self.kinds.items():
                v = self.fields[name].value(r)
                if v is not None and typ == "integer":
                    v = int(v)
                elif v is not None and typ == "boolean":
                    v = bool(v)
                elif v is not None and typ == "float":
                    v = float(v)
                doc[name] = v
            if doc["method"] is None:  # an energy is reported only with its method
                doc["energy"] = None
            out.append(doc)
        return out
