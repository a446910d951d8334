"""Checks every frame passes before it is written."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nodestore.errors import ValidationError

from .batch import FrameBatch


#: hard limits on what a file may claim, checked before anything is built from it
MAX_ATOMS = 100_000  # atoms per frame
MAX_COORDINATE = 1e5  # Å, |x| of a position or a cell vector component
MIN_CELL_LENGTH = 1.0  # Å, a periodic cell vector
MIN_CELL_ANGLE = 5.0  # degrees, between periodic cell vectors (and at most 180 minus this)
MIN_VOLUME_PER_ATOM = 1.0  # Å^3


def check_geometry(numbers, positions, cell, pbc, where: str) -> None:
    """Raise ValidationError for a frame no crystal could be: too many atoms, non-finite or huge
    coordinates, a periodic cell too short, too flat or too small for its atoms."""
    n = len(numbers)
    if n > MAX_ATOMS:
        raise ValidationError(f"{where}: {n} atoms (at most {MAX_ATOMS} per frame)")
    positions, cell, pbc = np.asarray(positions, float), np.asarray(cell, float), np.asarray(pbc, bool)
    if not np.isfinite(positions).all() or not np.isfinite(cell).all():
        raise ValidationError(f"{where}: non-finite positions or cell")
    if n and np.abs(positions).max() > MAX_COORDINATE or np.abs(cell).max() > MAX_COORDINATE:
        raise ValidationError(f"{where}: a coordinate or cell component beyond {MAX_COORDINATE:g} Å")
    if not pbc.any():
        return
    lengths = np.linalg.norm(cell, axis=1)
    for i in np.nonzero(pbc)[0]:
        if lengths[i] < MIN_CELL_LENGTH:
            raise ValidationError(f"{where}: cell vector {'abc'[i]} is {lengths[i]:.3g} Å long "
                                  f"(at least {MIN_CELL_LENGTH} Å)")
    per = np.nonzero(pbc)[0]
    for a in range(len(per)):
        for b in range(a + 1, len(per)):
            i, j = per[a], per[b]
            c = np.dot(cell[i], cell[j]) / (lengths[i] * lengths[j])
            ang = float(np.degrees(np.arccos(np.clip(c, -1, 1))))
            if not MIN_CELL_ANGLE <= ang <= 180 - MIN_CELL_ANGLE:
                raise ValidationError(f"{where}: cell angle {ang:.4g}° between {'abc'[i]} and {'abc'[j]} "
                                      f"(between {MIN_CELL_ANGLE}° and {180 - MIN_CELL_ANGLE}°)")
    if pbc.all() and n:
        vol = abs(np.linalg.det(cell))
        if vol / n < MIN_VOLUME_PER_ATOM:
            raise ValidationError(f"{where}: cell volume {vol:.3g} Å^3 for {n} atoms (at least "
                                  f"{MIN_VOLUME_PER_ATOM} Å^3 per atom)")


@dataclass(frozen=True)
class Rules:
    elements: frozenset[str] | None = None  # allowed chemical symbols; None: any
    min_distance: float = 0.5  # Å; no two atoms closer (periodic images included)
    max_abs_energy_per_atom: float = 1e4


def validate_batch(batch: FrameBatch, rules: Rules, names: list[str] | None = None) -> None:
    """Raise ValidationError for the first bad frame, naming its source and index.

    A ``min_distance`` that is not a positive finite number is itself an error
    (NaN would turn the check off).

    ``names`` gives a label per frame (e.g. "file.xyz frame 3") for messages.
    """
    from ase.data import chemical_symbols

    def where(i):
        return names[i] if names else f"frame {i}"

    md = rules.min_distance
    if not isinstance(md, (int, float)) or isinstance(md, bool) or not np.isfinite(md) or md < 0:
        raise ValidationError(f"min_distance {md!r} is not a non-negative finite number "
                              "(params.yaml import.min_distance, or --min-distance)")

    off = batch.offsets
    for i in range(len(batch)):
        s, e = int(off[i]), int(off[i + 1])
        if e == s:
            raise ValidationError(f"{where(i)}: no atoms")
        z = batch["numbers"][s:e]
        if np.any(z == 0) or np.any(z > 118):
            raise ValidationError(f"{where(i)}: invalid atomic number")
        if rules.elements is not None:
            bad = sorted({chemical_symbols[int(x)] for x in z} - set(rules.elements))
            if bad:
                raise ValidationError(
                    f"{where(i)}: element(s) {', '.join(bad)} outside the node's system "
                    f"{'-'.join(sorted(rules.elements))}"
                )
        pos = batch["positions"][s:e]
        cell = batch["cell"][i]
        pbc = batch["pbc"][i]
        if not np.all(np.isfinite(pos)) or not np.all(np.isfinite(cell)):
            raise ValidationError(f"{where(i)}: non-finite positions or cell")
        if np.any(pbc):
            vol = abs(np.linalg.det(cell))
            if not np.all(pbc) or vol < 1e-6:
                raise ValidationError(f"{where(i)}: cell volume {vol:.3g} Å^3 is not positive (pbc {pbc.tolist()})")
        check_geometry(z, pos, cell, pbc, where(i))
        energy = batch["energy"][i]
        if np.isinf(energy) or (np.isnan(energy) and _has_any_label(batch, i, s, e)):
            raise ValidationError(f"{where(i)}: energy is not a finite number")
        if np.isfinite(energy) and abs(energy) / (e - s) > rules.max_abs_energy_per_atom:
            raise ValidationError(f"{where(i)}: energy {energy:g} eV is not physical")
        f = batch["forces"][s:e]
        if np.isfinite(f).any() and not np.isfinite(f).all():
            raise ValidationError(f"{where(i)}: forces contain NaN or inf")
        st = batch["stress"][i]
        if np.isfinite(st).any() and not np.isfinite(st).all():
            raise ValidationError(f"{where(i)}: stress contains NaN or inf")
        d = _min_distance(pos, cell, pbc)
        if d < rules.min_distance:
            raise ValidationError(f"{where(i)}: two atoms are {d:.3f} Å apart (minimum {rules.min_distance} Å)")


def _has_any_label(batch, i, s, e) -> bool:
    return bool(np.isfinite(batch["forces"][s:e]).any() or np.isfinite(batch["stress"][i]).any())


def _min_distance(pos: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> float:
    n = len(pos)
    if n == 1 and not np.any(pbc):
        return np.inf
    from ase import Atoms

    from .neighbours import neighbour_list

    atoms = Atoms(numbers=np.ones(n, dtype=int), positions=pos, cell=cell, pbc=pbc)
    d = neighbour_list("d", atoms, 1.0)
    if len(d) == 0:
        return np.inf
    return float(d.min())
