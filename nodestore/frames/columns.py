"""The columns of the structure table, in one place.

A *row* is one frame (a configuration: numbers, positions, cell, pbc) with the
labels of one method.  Per-atom columns are ragged and share an ``offsets``
array; per-frame columns have one value per row.  Serialized names are the
constants below; ``schemas/table.schema.json`` describes the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FORMAT_VERSION = 1

#: origins a row may have
ORIGINS = ("imported", "generated", "relaxed", "labelled", "reference", "merged", "relax-step")
#: novelty classes (empty string: not classified yet)
NOVELTY = ("", "duplicate", "substitution", "novel")


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # numpy dtype string, or "str" for variable-length UTF-8
    shape: tuple = ()  # trailing shape per atom or per frame
    per_atom: bool = False
    fill: object = None  # value for "missing"
    mutable: bool = False  # may be changed later through an overlay
    doc: str = ""

    def empty(self, n: int) -> np.ndarray:
        if self.dtype == "str":
            return np.full((n,), self.fill, dtype=object)
        return np.full((n, *self.shape), self.fill, dtype=self.dtype)


NAN = float("nan")

COLUMNS: tuple[Column, ...] = (
    # per atom
    Column("numbers", "u1", (), True, 0, doc="atomic numbers"),
    Column("positions", "f8", (3,), True, NAN, doc="Cartesian positions, Å"),
    Column("forces", "f8", (3,), True, NAN, doc="forces, eV/Å (NaN: none)"),
    # per frame: configuration
    Column("frame_id", "str", (), False, "", doc="content hash of numbers, positions, cell, pbc"),
    Column("cell", "f8", (3, 3), False, 0.0, doc="lattice vectors as rows, Å"),
    Column("pbc", "bool", (3,), False, True, doc="periodic directions"),
    # per frame: labels
    Column("energy", "f8", (), False, NAN, doc="total energy, eV (NaN: none)"),
    Column("stress", "f8", (6,), False, NAN, doc="Voigt stress xx yy zz yz xz xy, eV/Å^3"),
    Column("method", "str", (), False, "", doc="method that produced energy/forces"),
    Column("checkpoint", "str", (), False, "", doc="model checkpoint behind the label, if any"),
    # per frame: provenance
    Column("origin", "str", (), False, "imported", doc="imported/generated/relaxed/labelled/reference"),
    Column("iteration", "i4", (), False, 0, doc="loop iteration that made the row"),
    Column("parent_id", "str", (), False, "", doc="frame id this one was derived from"),
    Column("relax_step", "i2", (), False, -1,
           doc="labels: the ionic step of the labeller's own relaxation this frame is (0: the geometry as "
               "selected; a final label with relax_step > 0 is a relaxed label); -1: not a loop label"),
    Column("source", "str", (), False, "", doc="file, branch or stage the row came from"),
    Column("formula", "str", (), False, "", doc="reduced formula"),
    Column("n_atoms", "i4", (), False, 0, doc="atoms in the frame"),
    # per frame: curation (mutable through overlays)
    Column("spacegroup", "i2", (), False, 0, True, doc="space group number (0: unknown)"),
    Column("fingerprint", "str", (), False, "", True, doc="cheap invariant fingerprint for matching"),
    Column("is_entry", "bool", (), False, False, True, doc="curated entry standing for a material"),
    Column("duplicate_of", "str", (), False, "", True, doc="frame id of the entry this one duplicates"),
    Column("e_form", "f8", (), False, NAN, True, doc="formation energy per atom, eV"),
    Column("e_hull", "f8", (), False, NAN, True, doc="energy above the hull of its method, eV/atom"),
    Column("novelty", "str", (), False, "", True, doc="duplicate / substitution / novel"),
    Column("chemically_valid", "i1", (), False, -1, True, doc="smact validity (1/0, -1 unknown)"),
)

BY_NAME = {c.name: c for c in COLUMNS}
PER_ATOM = tuple(c.name for c in COLUMNS if c.per_atom)
PER_FRAME = tuple(c.name for c in COLUMNS if not c.per_atom)
MUTABLE = tuple(c.name for c in COLUMNS if c.mutable)


def row_key(frame_id: str, method: str) -> str:
    """A row is identified by its frame and the method of its labels."""
    return f"{frame_id}@{method}"


def coerce(name: str, values) -> np.ndarray:
    col = BY_NAME[name]
    if col.dtype == "str":
        arr = np.empty(len(values), dtype=object)
        arr[:] = ["" if v is None else str(v) for v in values]
        return arr
    return np.asarray(values, dtype=col.dtype)
