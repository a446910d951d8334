"""In-memory columns of a set of frames, and their conversion to and from ASE Atoms."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

from nodestore.errors import ValidationError

from .columns import BY_NAME, COLUMNS, PER_FRAME, coerce

#: rounding used for frame ids: 1e-6 Å is far below any physical distinction
_ID_DECIMALS = 6


def frame_id(numbers, positions, cell, pbc) -> str:
    """Content hash of a configuration (not of its labels)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(numbers, dtype=np.uint8).tobytes())
    h.update(np.round(np.asarray(positions, dtype=np.float64), _ID_DECIMALS).tobytes())
    h.update(np.round(np.asarray(cell, dtype=np.float64), _ID_DECIMALS).tobytes())
    h.update(np.asarray(pbc, dtype=bool).tobytes())
    return h.hexdigest()[:20]


def reduced_formula(numbers) -> str:
    from ase.formula import Formula
    from ase.data import chemical_symbols

    syms = [chemical_symbols[int(z)] for z in numbers]
    if not syms:
        return ""
    return Formula.from_list(syms).reduce()[0].format("metal")


class FrameBatch:
    """Columns of ``n`` frames: per-atom arrays with ``offsets`` and per-frame arrays.

    A batch is what a segment stores and what reads return.  It never holds
    more than it was asked for.
    """

    def __init__(self, columns: dict[str, np.ndarray], offsets: np.ndarray):
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.columns = columns
        n = len(self.offsets) - 1
        for name, arr in columns.items():
            col = BY_NAME[name]
            want = self.offsets[-1] if col.per_atom else n
            if len(arr) != want:
                raise ValidationError(f"column {name!r} has {len(arr)} rows, expected {want}")

    # -- basic container -------------------------------------------------
    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_atoms(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def complete(self) -> "FrameBatch":
        """Fill every missing column with its default value."""
        cols = dict(self.columns)
        for c in COLUMNS:
            if c.name not in cols:
                cols[c.name] = c.empty(self.n_atoms if c.per_atom else len(self))
        return FrameBatch(cols, self.offsets)

    def with_columns(self, **values) -> "FrameBatch":
        cols = dict(self.columns)
        for name, v in values.items():
            if np.ndim(v) == 0 and not isinstance(v, (list, np.ndarray)):
                v = [v] * len(self)
            cols[name] = coerce(name, v)
        return FrameBatch(cols, self.offsets)

    def take(self, rows: Sequence[int]) -> "FrameBatch":
        rows = np.asarray(rows, dtype=np.int64)
        counts = np.diff(self.offsets)[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        atom_idx = _ranges(self.offsets[rows], counts)
        cols = {}
        for name, arr in self.columns.items():
            cols[name] = arr[atom_idx] if BY_NAME[name].per_atom else arr[rows]
        return FrameBatch(cols, offsets)

    @staticmethod
    def concat(batches: Iterable["FrameBatch"]) -> "FrameBatch":
        batches = [b.complete() for b in batches]
        if not batches:
            return FrameBatch.empty()
        offsets = [np.zeros(1, dtype=np.int64)]
        base = 0
        for b in batches:
            offsets.append(b.offsets[1:] + base)
            base += b.n_atoms
        cols = {c.name: np.concatenate([b.columns[c.name] for b in batches]) for c in COLUMNS}
        return FrameBatch(cols, np.concatenate(offsets))

    @staticmethod
    def empty() -> "FrameBatch":
        return FrameBatch({}, np.zeros(1, dtype=np.int64)).complete()

    # -- conversion ------------------------------------------------------
    @classmethod
    def from_atoms(cls, images: Sequence, **defaults) -> "FrameBatch":
        """Columns from ASE Atoms; labels come from their calculator results.

        Per-frame metadata is taken from ``atoms.info`` under the column's name,
        then from ``defaults``.
        """
        images = list(images)
        n = len(images)
        counts = np.array([len(a) for a in images], dtype=np.int64)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        total = int(offsets[-1])
        numbers = np.zeros(total, dtype=np.uint8)
        positions = np.zeros((total, 3))
        forces = np.full((total, 3), np.nan)
        cell = np.zeros((n, 3, 3))
        pbc = np.zeros((n, 3), dtype=bool)
        energy = np.full(n, np.nan)
        stress = np.full((n, 6), np.nan)
        meta = {name: [] for name in PER_FRAME if name not in ("cell", "pbc", "energy", "stress")}
        for i, atoms in enumerate(images):
            s, e = offsets[i], offsets[i + 1]
            numbers[s:e] = atoms.numbers
            positions[s:e] = atoms.positions
            cell[i] = atoms.cell.array
            pbc[i] = atoms.pbc
            results = _results(atoms)
            if "energy" in results:
                energy[i] = results["energy"]
            if "forces" in results:
                forces[s:e] = results["forces"]
            if "stress" in results:
                stress[i] = _voigt(results["stress"])
            for name in meta:
                if name in atoms.info:
                    meta[name].append(atoms.info[name])
                elif name in defaults:
                    meta[name].append(defaults[name])
                else:
                    meta[name].append(BY_NAME[name].fill)
        cols = {
            "numbers": numbers,
            "positions": positions,
            "forces": forces,
            "cell": cell,
            "pbc": pbc,
            "energy": energy,
            "stress": stress,
        }
        for name, values in meta.items():
            cols[name] = coerce(name, values)
        cols["n_atoms"] = counts.astype(np.int32)
        batch = FrameBatch(cols, offsets)
        batch._derive_ids()
        return batch

    def _derive_ids(self) -> None:
        """Fill frame ids and formulas (always recomputed: they are content)."""
        ids, formulas = [], []
        for i in range(len(self)):
            s, e = self.offsets[i], self.offsets[i + 1]
            z = self.columns["numbers"][s:e]
            ids.append(frame_id(z, self.columns["positions"][s:e], self.columns["cell"][i], self.columns["pbc"][i]))
            formulas.append(reduced_formula(z))
        self.columns["frame_id"] = coerce("frame_id", ids)
        self.columns["formula"] = coerce("formula", formulas)
        self.columns["n_atoms"] = np.diff(self.offsets).astype(np.int32)

    def atoms(self, i: int):
        """Frame ``i`` as ASE Atoms with its labels and metadata."""
        return self._atoms_many([i])[0]

    def to_atoms(self) -> list:
        return self._atoms_many(range(len(self)))

    def finite_per_frame(self, name: str) -> np.ndarray:
        """Per frame: whether it has atoms and per-atom column ``name`` is finite on every one."""
        values, offs = self.columns[name], self.offsets
        counts = np.diff(offs)
        if not len(values):
            return np.zeros(len(self), bool)
        bad = (~np.isfinite(values)).reshape(len(values), -1).any(axis=1).astype(np.int64)
        nbad = np.add.reduceat(bad, np.minimum(offs[:-1], len(bad) - 1)) if len(self) else bad[:0]
        return (nbad == 0) & (counts > 0)

    def _atoms_many(self, frames) -> list:
        """Atoms for ``frames``; the per-frame work that numpy can do at once is done at once."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        c = self.columns
        offs = self.offsets
        n = len(self)
        energy = c.get("energy")
        e_ok = np.isfinite(energy) if energy is not None else np.zeros(n, bool)
        stress = c.get("stress")
        s_ok = np.isfinite(stress).all(axis=1) if stress is not None else np.zeros(n, bool)
        forces = c.get("forces")
        f_ok = self.finite_per_frame("forces") if forces is not None else np.zeros(n, bool)
        info_names = [m for m in PER_FRAME if m in c and m not in ("cell", "pbc", "energy", "stress")]
        info_vals = {m: c[m].tolist() for m in info_names}
        e_list = energy.tolist() if energy is not None else None
        out = []
        for i in frames:
            s, e = int(offs[i]), int(offs[i + 1])
            atoms = Atoms(numbers=c["numbers"][s:e], positions=c["positions"][s:e], cell=c["cell"][i], pbc=c["pbc"][i])
            results = {}
            if e_ok[i]:
                results["energy"] = e_list[i]
            if f_ok[i]:
                results["forces"] = np.array(forces[s:e])
            if s_ok[i]:
                results["stress"] = np.array(stress[i])
            if results:
                atoms.calc = SinglePointCalculator(atoms, **results)
            atoms.info.update({m: info_vals[m][i] for m in info_names})
            out.append(atoms)
        return out

    def to_structures(self) -> list:
        from pymatgen.io.ase import AseAtomsAdaptor

        return [AseAtomsAdaptor.get_structure(a) for a in self.to_atoms()]


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenate ``arange(s, s + c)`` for each pair, vectorized."""
    starts = np.asarray(starts, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    idx = np.arange(total, dtype=np.int64)
    shift = np.repeat(starts - (ends - counts), counts)
    return idx + shift


def _results(atoms) -> dict:
    calc = atoms.calc
    if calc is None:
        return {}
    return {k: v for k, v in getattr(calc, "results", {}).items() if v is not None}


def _voigt(stress) -> np.ndarray:
    s = np.asarray(stress, dtype=float)
    if s.shape == (3, 3):
        return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
    if s.shape == (9,):
        return _voigt(s.reshape(3, 3))
    if s.shape == (6,):
        return s
    raise ValidationError(f"stress of shape {s.shape} is neither 3x3 nor Voigt 6")
