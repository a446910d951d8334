"""Reproducible synthetic Li–P–S structure sets for tests and benchmarks.

Random symmetric crystals from pyxtal over several compositions, plus copies
that sit on either side of the matcher's tolerances: small perturbations (true
duplicates), strained cells near ``ltol`` and large displacements near
``stol`` (near misses).
"""

from __future__ import annotations

import warnings

import numpy as np

#: (species, counts per formula unit) of the compositions drawn
COMPOSITIONS = (
    (("Li", "P", "S"), (3, 1, 4)),
    (("Li", "S"), (2, 1)),
    (("Li", "P"), (3, 1)),
    (("Li", "P", "S"), (1, 1, 3)),
    (("Li", "P", "S"), (2, 1, 3)),
    (("Li", "P", "S"), (7, 1, 6)),
    (("P", "S"), (4, 3)),
    (("Li", "P", "S"), (7, 3, 11)),
)
#: space groups tried (low and medium symmetry: pyxtal fills them for any count)
SPACE_GROUPS = (1, 2, 4, 5, 7, 9, 11, 12, 13, 14, 15, 19, 29, 33, 36, 62)


def random_crystals(n: int, seed: int = 0, max_atoms: int = 24) -> list:
    """``n`` random pymatgen Structures of Li–P–S compositions (pyxtal)."""
    from pyxtal import pyxtal

    rng = np.random.default_rng(seed)
    out = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 100:
            raise RuntimeError("pyxtal failed to generate enough structures")
        species, counts = COMPOSITIONS[int(rng.integers(len(COMPOSITIONS)))]
        z = int(rng.integers(1, 5))
        numions = [c * z for c in counts]
        if sum(numions) > max_atoms:
            z = max(1, max_atoms // sum(counts))
            numions = [c * z for c in counts]
        sg = int(SPACE_GROUPS[int(rng.integers(len(SPACE_GROUPS)))])
        crystal = pyxtal()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                crystal.from_random(3, sg, list(species), numions, random_state=int(rng.integers(2**31)))
            except Exception:  # pyxtal cannot place these counts in this group: draw again
                continue
            if not crystal.valid:
                continue
            out.append(crystal.to_pymatgen())
    return out


def perturbed(structure, amplitude: float, rng) -> object:
    """A copy with every site displaced by ``amplitude`` Å in a random direction."""
    s = structure.copy()
    vec = rng.normal(size=(len(s), 3))
    vec *= amplitude / np.linalg.norm(vec, axis=1, keepdims=True)
    for i in range(len(s)):
        s.translate_sites([i], vec[i], frac_coords=False, to_unit_cell=True)
    return s


def strained(structure, factors) -> object:
    """A copy whose cell lengths are multiplied by ``factors`` (3 numbers), sites fixed in fractional coordinates."""
    from pymatgen.core import Lattice, Structure

    m = structure.lattice.matrix * np.asarray(factors, dtype=float)[:, None]
    return Structure(Lattice(m), structure.species, structure.frac_coords)


def lips_set(n: int, seed: int = 0, copy_fraction: float = 0.1, amplitude: float = 0.02,
             near_misses: bool = False, max_atoms: int = 24) -> list:
    """``n`` structures: random crystals plus perturbed copies of ~``copy_fraction`` of them,
    shuffled.  With ``near_misses``, some copies are strained close to ``ltol`` or
    displaced close to ``stol`` instead."""
    rng = np.random.default_rng(seed + 7)
    n_copies = int(round(n * copy_fraction))
    base = random_crystals(n - n_copies, seed=seed, max_atoms=max_atoms)
    copies = []
    for k in range(n_copies):
        src = base[int(rng.integers(len(base)))]
        kind = k % 4 if near_misses else 0
        if kind == 0:
            copies.append(perturbed(src, amplitude, rng))
        elif kind == 1:  # strain around the length tolerance
            f = 1 + rng.choice([-1, 1]) * rng.uniform(0.12, 0.3)
            copies.append(strained(src, [f, 1.0, 1.0]))
        elif kind == 2:  # displacements around the site tolerance
            copies.append(perturbed(src, float(rng.uniform(0.3, 1.2)), rng))
        else:  # isotropic scaling: always a match when scale=True
            copies.append(strained(src, [1.07, 1.07, 1.07]))
    items = base + copies
    order = rng.permutation(len(items))
    return [items[i] for i in order]
