"""Local-environment entropy (QUESTS: Schwalbe-Koda et al., Nat. Commun. 2025).

Each atom is described by the sorted, cutoff-weighted distances to its ``k``
nearest neighbours and the distances among those neighbours (the ``quests``
package's descriptor).  The entropy of a set of environments is the
information entropy of a Gaussian kernel density estimate over descriptors,

    H = -1/N sum_i log( 1/N sum_j K_h(x_i, x_j) )   (nats),

and the differential entropy of a new environment ``y`` against a set ``X`` is
``dH(y | X) = -log sum_j K_h(y, x_j)``: positive where ``y`` lies outside what
``X`` covers, negative where ``X`` already has it.

H is a property of the *distribution*: duplicating a whole set leaves it
unchanged, but duplicating only part of it re-weights the distribution and can
move H either way.  The diversity ``D = log sum_i 1 / sum_j K_h(x_i, x_j)``
(log of the effective number of distinct environments) is what stays put when
duplicates are added and grows only with new environments; both are reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: QUESTS defaults
K_NEIGHBOURS = 32
CUTOFF = 5.0
BANDWIDTH = 0.015
#: above this many environments, entropies are estimated on a fixed random subsample
MAX_ENVIRONMENTS = 20000
#: rows and columns of one block of QUESTS' kernel sums: its default (20,000) holds two
#: 20,000 x 20,000 float64 blocks at once (6.4 GB); 2,000 needs 64 MB and was faster here
KERNEL_BATCH = 2000


def descriptors(images: Sequence, k: int = K_NEIGHBOURS, cutoff: float = CUTOFF):
    """QUESTS descriptors of every atom of ``images`` (ASE Atoms), and their atomic numbers."""
    from quests.descriptor import get_descriptors

    images = [a for a in images if len(a)]
    if not images:
        return np.zeros((0, 2 * k - 1)), np.zeros(0, dtype=int)
    x = get_descriptors(images, k=k, cutoff=cutoff)
    z = np.concatenate([a.numbers for a in images])
    return x, z


def _subsample(x: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    if limit and len(x) > limit:
        idx = np.random.default_rng(seed).choice(len(x), size=limit, replace=False)
        return x[np.sort(idx)]
    return x


def entropy_of(x: np.ndarray, h: float = BANDWIDTH, max_environments: int = MAX_ENVIRONMENTS) -> float:
    """Entropy H (nats) of a set of descriptors."""
    from quests.entropy import entropy

    if len(x) == 0:
        return 0.0
    return float(entropy(_subsample(x, max_environments), h=h, batch_size=KERNEL_BATCH))


def diversity_of(x: np.ndarray, h: float = BANDWIDTH, max_environments: int = MAX_ENVIRONMENTS) -> float:
    """Diversity D (log of the effective number of distinct environments)."""
    from quests.entropy import diversity

    if len(x) == 0:
        return 0.0
    return float(diversity(_subsample(x, max_environments), h=h, batch_size=KERNEL_BATCH))


def delta_entropy_of(y: np.ndarray, x: np.ndarray, h: float = BANDWIDTH) -> np.ndarray:
    """dH of each environment ``y`` against the set ``x`` (nats)."""
    from quests.entropy import delta_entropy

    if len(y) == 0:
        return np.zeros(0)
    if len(x) == 0:
        return np.full(len(y), np.inf)
    with np.errstate(divide="ignore"):  # an environment far from all of x: dH = +inf
        return np.asarray(delta_entropy(y, x, h=h, batch_size=KERNEL_BATCH), dtype=float)


@dataclass
class EntropyReport:
    """Entropy of a set of structures: overall and per element (nats)."""

    H: float
    n_atoms: int
    diversity: float = 0.0
    per_element: dict[str, float] = field(default_factory=dict)
    atoms_per_element: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"H": self.H, "n_atoms": self.n_atoms, "diversity": self.diversity,
                "per_element": dict(self.per_element),
                "atoms_per_element": dict(self.atoms_per_element)}


def entropy_report(images: Sequence, h: float = BANDWIDTH, k: int = K_NEIGHBOURS, cutoff: float = CUTOFF,
                   max_environments: int = MAX_ENVIRONMENTS, diversity: bool = True) -> EntropyReport:
    """H of all environments of ``images``, and H of the environments centred on each element
    (and QUESTS' diversity unless ``diversity=False``: None then)."""
    from ase.data import chemical_symbols

    x, z = descriptors(images, k=k, cutoff=cutoff)
    per, counts = {}, {}
    for el in np.unique(z):
        sel = z == el
        sym = chemical_symbols[int(el)]
        per[sym] = entropy_of(x[sel], h, max_environments)
        counts[sym] = int(sel.sum())
    div = diversity_of(x, h, max_environments) if diversity else None
    return EntropyReport(entropy_of(x, h, max_environments), int(len(x)), div, per, counts)


@dataclass
class DeltaReport:
    """dH of a batch of new structures against a reference set."""

    dH: np.ndarray  # per atom of the batch
    numbers: np.ndarray  # atomic number of each atom
    per_structure: np.ndarray  # mean dH over each structure's atoms
    threshold: float = 0.0

    @property
    def mean(self) -> float:
        return float(np.mean(self.dH)) if len(self.dH) else 0.0

    @property
    def max(self) -> float:
        return float(np.max(self.dH)) if len(self.dH) else 0.0

    @property
    def fraction_new(self) -> float:
        """Fraction of environments with dH above the threshold (not covered by the set)."""
        return float(np.mean(self.dH > self.threshold)) if len(self.dH) else 0.0

    def as_dict(self) -> dict:
        return {"mean": self.mean, "max": self.max, "fraction_new": self.fraction_new,
                "n_atoms": int(len(self.dH)), "threshold": self.threshold}


def delta_entropy(new_images: Sequence, reference_images: Sequence, h: float = BANDWIDTH, k: int = K_NEIGHBOURS,
                  cutoff: float = CUTOFF, threshold: float = 0.0) -> DeltaReport:
    """Differential entropy of the environments of ``new_images`` against ``reference_images``."""
    y, zy = descriptors(new_images, k=k, cutoff=cutoff)
    x, _ = descriptors(reference_images, k=k, cutoff=cutoff)
    x = _subsample(x, MAX_ENVIRONMENTS)
    dh = delta_entropy_of(y, x, h)
    sizes = [len(a) for a in new_images if len(a)]
    bounds = np.cumsum([0, *sizes])
    per = np.array([dh[bounds[i]:bounds[i + 1]].mean() for i in range(len(sizes))])
    return DeltaReport(dh, zy, per, threshold)
