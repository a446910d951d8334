"""Per-element reference energies: a force field put on one method's energy scale.

Total energies of two methods (VASP PAW, GPAW PAW, a force field trained on
MPtrj) differ by a per-element constant, often tenths of an eV per atom.  A
force field serves a method only once its per-element reference energies are
refit on that method's labels: ``E_method(x) ~ E_model(x) + sum_Z n_Z(x) mu_Z``.

The fit is linear least squares of the per-atom residuals on the per-atom
composition.  Where the compositions do not determine an element's reference
(one composition only, or fewer frames than elements), the minimum-norm
solution of a truncated SVD keeps the model's own value in every undetermined
direction: the shift there is zero.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FILE = "reference_energies.json"


def _symbols():
    from ase.data import chemical_symbols
    return chemical_symbols


@dataclass
class ReferenceEnergies:
    """Per-element energy shifts (eV per atom of the element), the method they put the model on,
    and how the fit went (``fit``: frames, compositions, rank, per-atom RMSE before/after)."""

    shift: dict[str, float] = field(default_factory=dict)
    method: str | None = None
    fit: dict = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.shift) or self.method is not None

    def shift_of(self, numbers) -> float:
        """The total shift (eV) of a structure with these atomic numbers."""
        if not self.shift:
            return 0.0
        sym = _symbols()
        zs, counts = np.unique(np.asarray(numbers, dtype=int), return_counts=True)
        return float(sum(self.shift.get(sym[z], 0.0) * c for z, c in zip(zs, counts)))

    def plus(self, delta: dict[str, float], method: str | None, fit: dict) -> "ReferenceEnergies":
        shift = dict(self.shift)
        for el, v in delta.items():
            shift[el] = shift.get(el, 0.0) + float(v)
        return ReferenceEnergies(shift=shift, method=method, fit=fit)

    def to_json(self) -> dict:
        return {"shift_ev": {k: float(v) for k, v in sorted(self.shift.items())}, "method": self.method,
                "fit": self.fit}

    @classmethod
    def from_json(cls, doc: dict) -> "ReferenceEnergies":
        return cls(shift={k: float(v) for k, v in (doc.get("shift_ev") or {}).items()},
                   method=doc.get("method"), fit=dict(doc.get("fit") or {}))

    def save(self, directory: Path) -> None:
        if self:
            (Path(directory) / FILE).write_text(json.dumps(self.to_json(), indent=1, sort_keys=True))

    @classmethod
    def load(cls, directory: Path) -> "ReferenceEnergies":
        path = Path(directory) / FILE
        if not path.is_file():
            return cls()
        from nodestore.errors import SchemaError

        try:
            return cls.from_json(json.loads(path.read_text()))
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
            raise SchemaError(f"{path}: unreadable reference energies: {exc}") from exc


def fit_shift(numbers_list, residuals, rcond: float = 1e-3, outlier_k: float = 5.0,
              outlier_floor: float = 0.5) -> tuple[dict[str, float], dict]:
    """Per-element shifts ``mu`` minimising ``sum_f (r_f / n_f - sum_Z x_fZ mu_Z)^2``.

    ``residuals`` are total energies label - model (eV) per frame, ``x_fZ`` the
    fraction of element Z in frame f.  Singular directions below ``rcond`` times
    the largest singular value are left at zero (the model's own references).

    Robust to a few absurd frames (a structure the model collapsed into a hole of
    its energy surface is off by eV per atom): frames whose per-atom residual after
    the fit exceeds ``max(outlier_floor, outlier_k * 1.4826 * MAD)`` eV/atom are
    left out and the fit repeated (three rounds at most).  Returns the shifts and a
    record of the fit (``outliers``: the indices left out).
    """
    sym = _symbols()
    numbers_list = [np.asarray(n, dtype=int) for n in numbers_list]
    residuals = np.asarray(residuals, dtype=float)
    if len(numbers_list) != len(residuals) or not len(residuals):
        from nodestore.errors import ValidationError
        raise ValidationError("reference-energy fit needs one residual per frame and at least one frame")
    elements = sorted({int(z) for n in numbers_list for z in n})
    col = {z: j for j, z in enumerate(elements)}
    x = np.zeros((len(numbers_list), len(elements)))
    for i, n in enumerate(numbers_list):
        zs, counts = np.unique(n, return_counts=True)
        for z, c in zip(zs, counts):
            x[i, col[int(z)]] = c / len(n)
    per_atom = residuals / np.array([len(n) for n in numbers_list])
    keep = np.isfinite(per_atom)
    threshold = outlier_floor
    for _ in range(3):
        mu, _, rank, sv = np.linalg.lstsq(x[keep], per_atom[keep], rcond=rcond)
        res = per_atom - x @ mu
        r = res[keep]
        threshold = max(outlier_floor, outlier_k * 1.4826 * float(np.median(np.abs(r - np.median(r)))))
        new = np.isfinite(per_atom) & (np.abs(res) <= threshold)
        if new.sum() < max(1, len(per_atom) // 2) or np.array_equal(new, keep):
            break
        keep = new
    after = (per_atom - x @ mu)[keep]
    compositions = {tuple(row) for row in np.round(x, 6)}
    record = {
        "n_frames": int(len(per_atom)), "n_compositions": len(compositions), "elements": [sym[z] for z in elements],
        "rank": int(rank), "determined": bool(rank == len(elements)),
        "rmse_before_per_atom": float(np.sqrt(np.mean(per_atom[keep] ** 2))),
        "rmse_after_per_atom": float(np.sqrt(np.mean(after ** 2))),
        "mean_residual_per_atom": float(np.mean(per_atom[keep])),
        "outliers": [int(i) for i in np.nonzero(~keep)[0]], "outlier_threshold_per_atom": float(threshold),
    }
    return {sym[z]: float(v) for z, v in zip(elements, mu)}, record
