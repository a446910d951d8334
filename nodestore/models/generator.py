"""The Generator protocol: propose candidate crystals, learn from what the loop found.

``sample(n, compositions=None, conditions=None) -> list[Atoms]`` proposes;
``update(outcomes) -> Generator`` returns a new generator that learned from
outcomes (``{"composition", "spacegroup", "reward", ...}``, reward e.g. 1 for a
stable-unique-novel entry, 0 otherwise); ``save``/``load`` write a checkpoint
directory (``state.json`` + ``meta.json``).  Every sampled Atoms carries
``info["generator"]``, ``info["composition"]`` and (pyxtal) ``info["spacegroup"]``.
"""

from __future__ import annotations

import abc
import copy
import itertools
import json
import math
import random
from collections import Counter
from functools import reduce
from math import gcd
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np

from nodestore.errors import ValidationError
from nodestore.models import _checkpoint as ckpt

KIND = "generator"
STATE = "state.json"


class Generator(abc.ABC):
    backend: ClassVar[str] = ""

    def __init__(self):
        self.parent: str | None = None
        self.hash: str | None = None
        self.trained_on: list[str] = []
        self.metrics: dict = {}

    @abc.abstractmethod
    def sample(self, n: int, compositions: Sequence[str] | None = None,
               conditions: dict | None = None) -> list:
        """Up to ``n`` valid candidate structures (ase.Atoms)."""

    @abc.abstractmethod
    def _learn(self, outcomes: list[dict]) -> None:
        """Update this (already copied) generator's state from outcomes."""

    @abc.abstractmethod
    def state(self) -> dict:
        """JSON state: everything needed to rebuild the generator."""

    @classmethod
    @abc.abstractmethod
    def from_state(cls, state: dict) -> "Generator":
        """Rebuild from ``state()``."""

    def reseed(self, salt) -> None:
        """Draw a fresh, reproducible random stream for ``salt`` (the loop passes the iteration),
        so that a generator loaded from the same checkpoint does not propose the same candidates
        twice.  Deterministic generators ignore it."""

    def update(self, outcomes: Sequence[dict]) -> "Generator":
        """A new generator that learned from ``outcomes``; self is unchanged."""
        outcomes = [dict(o) for o in outcomes]
        for i, o in enumerate(outcomes):
            if "reward" not in o:
                raise ValidationError(f"outcome {i} has no 'reward'")
        child = copy.deepcopy(self)
        child._learn(outcomes)
        child.parent = self.hash
        child.hash = None
        child.trained_on = [str(o["id"]) for o in outcomes if "id" in o]
        rewards = [float(o["reward"]) for o in outcomes]
        child.metrics = {"n_outcomes": len(outcomes),
                         "mean_reward": float(np.mean(rewards)) if rewards else None,
                         "n_rewarded": int(sum(r > 0 for r in rewards))}
        return child

    def save(self, directory) -> str:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / STATE).write_text(json.dumps(ckpt._jsonable(self.state()), indent=1, sort_keys=True))
        doc = ckpt.write_meta(directory, kind=KIND, backend=self.backend,
                              architecture={"name": self.backend, "config": self._config()},
                              parent=self.parent, training_frames=self.trained_on, metrics=self.metrics)
        self.hash = doc[ckpt.K_HASH]
        return self.hash

    @classmethod
    def load(cls, directory) -> "Generator":
        directory = Path(directory)
        if cls is Generator:
            from nodestore.models.registry import load_checkpoint
            return load_checkpoint(directory, kind=KIND)
        meta = ckpt.read_meta(directory, kind=KIND, backend=cls.backend)
        ckpt.verify(directory, meta)
        gen = cls.from_state(json.loads((directory / STATE).read_text()))
        gen.parent, gen.hash = meta[ckpt.K_PARENT], meta[ckpt.K_HASH]
        gen.trained_on, gen.metrics = list(meta[ckpt.K_FRAMES]), dict(meta[ckpt.K_METRICS])
        return gen

    def _config(self) -> dict:
        return {}


# ---------------------------------------------------------------------- helpers
def min_distance_ok(atoms, min_distance: float) -> bool:
    """No two atoms (periodic images included) closer than ``min_distance``."""
    from nodestore.frames.neighbours import neighbour_list

    if len(atoms) == 1:
        cell_lengths = atoms.cell.lengths()
        return bool(np.all(cell_lengths >= min_distance))
    d = neighbour_list("d", atoms, min_distance)
    return d.size == 0


def _formula(counts: dict) -> str:
    return "".join(f"{el}{n if n != 1 else ''}" for el, n in counts.items() if n)


def _parse(formula: str) -> dict:
    from ase.formula import Formula
    return dict(Formula(formula).count())


def _reduce(counts: dict) -> dict:
    g = reduce(gcd, [n for n in counts.values() if n])
    return {el: n // g for el, n in counts.items() if n}


def charge_balanced_compositions(elements: Sequence[str], max_count: int = 8) -> list[str]:
    """Reduced formulas over ``elements`` (each count <= max_count, at least two
    elements) that have a charge-balanced assignment of common oxidation states,
    the most electronegative element of the system taken as an anion."""
    from pymatgen.core import Element

    anion = max(elements, key=lambda el: Element(el).X)
    oxi = {el: [o for o in Element(el).common_oxidation_states if el != anion or o < 0] or [0]
           for el in elements}
    out = []
    for counts in itertools.product(range(max_count + 1), repeat=len(elements)):
        present = [c for c in counts if c]
        if len(present) < 2 or reduce(gcd, present) != 1:
            continue
        comp = dict(zip(elements, counts))
        els = [el for el in elements if comp[el]]
        if any(sum(comp[el] * o for el, o in zip(els, choice)) == 0
               for choice in itertools.product(*[oxi[el] for el in els])):
            out.append(_formula(comp))
    return out


# ---------------------------------------------------------------------- pyxtal
class PyxtalGenerator(Generator):
    """Symmetric random crystals (pyxtal) from a learned proposal distribution.

    The state is three weight tables: over compositions (reduced formulas),
    formula units per cell and space groups.  ``update`` multiplies the weight
    of each composition, Z and space group by ``exp(lr * (reward - mean))`` of
    the outcomes that used it, so proposals move toward what ended
    stable/unique/novel; a floor keeps every option alive (exploration).

    Density: pyxtal's ``from_random`` draws the cell volume as ``factor`` times
    a sum over atoms of a volume drawn uniformly between the atom's
    covalent-radius sphere and its van der Waals sphere (pyxtal's radii; for
    Li-P-S about 5-25 A^3/atom before the factor), so its dense tail is far
    denser than any Li-P-S solid (15-25 A^3/atom).  ``volume_factor`` is that
    ``factor``; every cell is then scaled isotropically into a volume-per-atom
    window (``volume_per_atom`` (min, max) in A^3, or by default
    ``volume_window`` times the composition's mean covalent / van der Waals
    sphere volume: about 13-30 A^3/atom for Li-P-S) before the ``min_distance``
    check, so relaxation does not start from crushed or near-empty cells.
    """

    backend = "pyxtal"

    def __init__(self, elements: Sequence[str] = ("Li", "P", "S"), compositions: Sequence[str] | None = None,
                 z_values: Sequence[int] = (1, 2, 3, 4), spacegroups: Sequence[int] | None = None,
                 max_atoms: int = 40, min_distance: float = 1.6, lr: float = 1.0, floor: float = 0.02,
                 seed: int = 0, weights: dict | None = None, max_attempts: int = 20,
                 volume_factor: float = 1.1, volume_per_atom: Sequence[float] | None = None,
                 volume_window: Sequence[float] = (1.6, 1.2)):
        super().__init__()
        self.elements = list(elements)
        comps = list(compositions) if compositions else charge_balanced_compositions(self.elements)
        self.compositions = [_formula(_reduce(_parse(c))) for c in comps]
        for c in self.compositions:
            extra = set(_parse(c)) - set(self.elements)
            if extra:
                raise ValidationError(f"composition {c} has elements {sorted(extra)} outside {self.elements}")
        self.z_values = [int(z) for z in z_values]
        self.spacegroups = [int(s) for s in (spacegroups or range(2, 231))]
        self.max_atoms, self.min_distance = int(max_atoms), float(min_distance)
        self.lr, self.floor, self.seed, self.max_attempts = float(lr), float(floor), int(seed), int(max_attempts)
        self.volume_factor = float(volume_factor)
        self.volume_per_atom = None if volume_per_atom is None else [float(v) for v in volume_per_atom]
        self.volume_window = [float(v) for v in volume_window]
        if self.volume_per_atom is not None and not 0 < self.volume_per_atom[0] <= self.volume_per_atom[1]:
            raise ValidationError(f"volume_per_atom {self.volume_per_atom} is not a (min, max) window")
        w = weights or {}
        self.weights = {
            "composition": {c: float(w.get("composition", {}).get(c, 1.0)) for c in self.compositions},
            "z": {str(z): float(w.get("z", {}).get(str(z), 1.0)) for z in self.z_values},
            "spacegroup": {str(s): float(w.get("spacegroup", {}).get(str(s), 1.0)) for s in self.spacegroups},
        }
        self._rng = random.Random(seed)
        self._draws = 0

    def reseed(self, salt) -> None:
        self._rng = random.Random(f"{self.seed}:{salt}")

    def probabilities(self, table: str) -> dict:
        w = self.weights[table]
        total = sum(w.values())
        return {k: v / total for k, v in w.items()}

    def _draw(self, table: str, allowed=None):
        items = [(k, v) for k, v in self.weights[table].items() if allowed is None or k in allowed]
        if not items:
            raise ValidationError(f"nothing to draw from {table}")
        keys, ws = zip(*items)
        return self._rng.choices(keys, weights=ws, k=1)[0]

    def sample(self, n, compositions=None, conditions=None):
        conditions = dict(conditions or {})
        max_atoms = int(conditions.get("max_atoms", self.max_atoms))
        allowed = None
        if compositions:
            allowed = {_formula(_reduce(_parse(c))) for c in compositions}
            unknown = allowed - set(self.compositions)
            if unknown:  # new compositions join the table with weight 1
                for c in unknown:
                    if set(_parse(c)) - set(self.elements):
                        raise ValidationError(f"composition {c} is outside the system {self.elements}")
                    self.weights["composition"][c] = 1.0
                    self.compositions.append(c)
        out, attempts = [], 0
        while len(out) < n and attempts < n * self.max_attempts:
            attempts += 1
            comp = self._draw("composition", allowed)
            counts = _parse(comp)
            zs = [str(z) for z in self.z_values if z * sum(counts.values()) <= max_atoms]
            if not zs:
                continue
            z = int(self._draw("z", zs))
            sg = int(self._draw("spacegroup"))
            species = list(counts)
            numbers = [counts[el] * z for el in species]
            atoms = self._crystal(species, numbers, sg)
            if atoms is None:
                continue
            atoms = _scale_into(atoms, self.volume_bounds(counts))
            if len(atoms) > max_atoms or not self._distances_ok(atoms):
                continue
            atoms.info.update({"generator": self.backend, "composition": comp, "z": z, "spacegroup": sg,
                               "generator_checkpoint": self.hash or ""})
            if "target_e_hull" in conditions:
                atoms.info["target_e_hull"] = float(conditions["target_e_hull"])
            out.append(atoms)
        return out

    def _distances_ok(self, atoms) -> bool:
        return min_distance_ok(atoms, self.min_distance)

    def _crystal(self, species: list[str], numbers: list[int], spacegroup: int):
        """A random crystal of ``numbers`` atoms of ``species`` in ``spacegroup`` (None: none fits)."""
        import warnings

        from pyxtal import pyxtal

        crystal = pyxtal()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                crystal.from_random(3, spacegroup, species, numbers, factor=self.volume_factor,
                                    seed=self._rng.randrange(2**31))
        except Exception:  # pyxtal raises when the Wyckoff sites cannot hold these counts
            return None
        return crystal.to_ase() if crystal.valid else None

    def volume_bounds(self, counts: dict) -> tuple[float, float]:
        """The (min, max) volume per atom (A^3) a sampled cell is scaled into."""
        if self.volume_per_atom is not None:
            return self.volume_per_atom[0], self.volume_per_atom[1]
        from pyxtal.database.element import Element

        total = sum(counts.values())
        cov = sum(n * 4 / 3 * math.pi * Element(el).covalent_radius ** 3 for el, n in counts.items()) / total
        vdw = sum(n * 4 / 3 * math.pi * Element(el).vdw_radius ** 3 for el, n in counts.items()) / total
        lo, hi = self.volume_window[0] * cov, self.volume_window[1] * vdw
        return lo, max(lo, hi)

    def _learn(self, outcomes):
        rewards = np.array([float(o["reward"]) for o in outcomes])
        if not len(rewards):
            return
        baseline = float(rewards.mean())
        for table, key in (("composition", "composition"), ("z", "z"), ("spacegroup", "spacegroup")):
            adv: dict[str, list[float]] = {}
            for o, r in zip(outcomes, rewards):
                if o.get(key) is None:
                    continue
                k = o[key]
                k = _formula(_reduce(_parse(k))) if table == "composition" else str(int(k))
                adv.setdefault(k, []).append(r - baseline)
            w = self.weights[table]
            for k, a in adv.items():
                if k in w:
                    w[k] *= math.exp(self.lr * float(np.mean(a)))
            total = sum(w.values())
            floor = self.floor * total / len(w)
            for k in w:
                w[k] = max(w[k], floor)

    def state(self):
        return {"elements": self.elements, "compositions": self.compositions, "z_values": self.z_values,
                "spacegroups": self.spacegroups, "max_atoms": self.max_atoms, "min_distance": self.min_distance,
                "lr": self.lr, "floor": self.floor, "seed": self.seed, "weights": self.weights,
                "max_attempts": self.max_attempts, "volume_factor": self.volume_factor,
                "volume_per_atom": self.volume_per_atom, "volume_window": self.volume_window}

    @classmethod
    def from_state(cls, state):
        return cls(**state)

    def _config(self):
        return {"elements": self.elements, "max_atoms": self.max_atoms, "min_distance": self.min_distance,
                "volume_factor": self.volume_factor}


def _scale_into(atoms, bounds):
    """Scale a periodic cell isotropically so its volume per atom lies in ``bounds``."""
    lo, hi = bounds
    v = atoms.get_volume() / len(atoms)
    target = min(max(v, lo), hi)
    if target != v:
        atoms.set_cell(atoms.cell.array * (target / v) ** (1 / 3), scale_atoms=True)
    return atoms


def _random_cell(rng, bounds, n_atoms: int):
    """A random lattice (lengths within a factor 1.5 of each other, angles 60-120 degrees) of a
    volume per atom drawn in ``bounds``; None for a nearly flat draw."""
    from ase.geometry import cellpar_to_cell

    volume = rng.uniform(*bounds) * n_atoms
    lengths = rng.uniform(1.0, 1.5, 3)
    angles = rng.uniform(60.0, 120.0, 3)
    cell = cellpar_to_cell(np.concatenate([lengths, angles]))
    vol = abs(np.linalg.det(cell))
    if vol < 0.2 * np.prod(lengths):
        return None
    return cell * (volume / vol) ** (1 / 3)


class RandomGenerator(PyxtalGenerator):
    """Random sensible structures, AIRSS-style (Pickard & Needs 2011): no symmetry.

    Compositions and formula units are drawn from the same learned tables as ``pyxtal`` (and
    ``update`` moves them the same way); each cell is a random lattice (lengths within a factor
    ``1.5`` of each other, angles 60-120 degrees) of a volume in the composition's window, and
    the atoms are placed one by one at uniformly random points at least ``min_distance`` from
    every atom placed before (``max_attempts`` tries per atom).  About a thousand cells per
    second on one core: the baseline of random search, and the cheap generator of the scale
    bench.  Every candidate is space group 1.
    """

    backend = "random"

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("spacegroups", [1])
        super().__init__(*args, **kwargs)

    def _crystal(self, species, numbers, spacegroup):
        from ase import Atoms

        rng = np.random.default_rng(self._rng.randrange(2**63))
        symbols = [el for el, k in zip(species, numbers) for _ in range(k)]
        counts = {el: k for el, k in zip(species, numbers)}
        cell = _random_cell(rng, self.volume_bounds(counts), len(symbols))
        if cell is None:
            return None
        # minimum-image distances in fractional space (cells here are not too skewed for it)
        frac = np.zeros((0, 3))
        for _ in symbols:
            for _attempt in range(self.max_attempts * 5):
                p = rng.random(3)
                if not len(frac):
                    break
                d = frac - p
                d -= np.round(d)
                if np.min(np.linalg.norm(d @ cell, axis=1)) >= self.min_distance:
                    break
            else:
                return None
            frac = np.vstack([frac, p])
        atoms = Atoms(symbols, scaled_positions=frac, cell=cell, pbc=True)
        return atoms


# ---------------------------------------------------------------------- motifs
#: bond lengths (A) of the thiophosphate units, from their crystal structures: terminal P-S
#: 2.03, bridging P-S 2.11, P-P in the hypodiphosphate P2S6(4-) 2.22
_P_S, _P_SB, _P_P = 2.03, 2.11, 2.22
_TET = math.acos(-1 / 3)  # the tetrahedral angle


def _perpendiculars(u):
    u = u / np.linalg.norm(u)
    a = np.array([1.0, 0, 0]) if abs(u[0]) < 0.9 else np.array([0, 1.0, 0])
    v = np.cross(u, a)
    v /= np.linalg.norm(v)
    return u, v, np.cross(u, v)


def _umbrella(u, length, phase=0.0, n=3):
    """``n`` bonds at the tetrahedral angle from ``u`` (the direction of the fourth bond)."""
    u, v, w = _perpendiculars(np.asarray(u, float))
    out = []
    for k in range(n):
        phi = phase + 2 * math.pi * k / n
        d = math.cos(_TET) * u + math.sin(_TET) * (math.cos(phi) * v + math.sin(phi) * w)
        out.append(length * d)
    return out


def _unit_ps4():
    d = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float) / math.sqrt(3)
    return ["P"] + ["S"] * 4, np.vstack([[0, 0, 0], _P_S * d])


def _unit_p2s7():
    """Two PS4 tetrahedra sharing a corner (pyrothiophosphate), P-S-P 112 degrees."""
    half = math.radians(112) / 2
    p1 = _P_SB * np.array([math.sin(half), math.cos(half), 0])
    p2 = _P_SB * np.array([-math.sin(half), math.cos(half), 0])
    pos = [np.zeros(3), p1, p2]
    for p in (p1, p2):
        pos += [p + b for b in _umbrella(-p, _P_S)]
    return ["S", "P", "P"] + ["S"] * 6, np.vstack(pos)


def _unit_p2s6_pp():
    """The hypodiphosphate anion P2S6(4-): a P-P bond, three S on each P, staggered."""
    u = np.array([0, 0, 1.0])
    p1, p2 = -u * _P_P / 2, u * _P_P / 2
    pos = [p1, p2] + [p1 + b for b in _umbrella(u, _P_S)] + [p2 + b for b in _umbrella(-u, _P_S, math.pi / 3)]
    return ["P", "P"] + ["S"] * 6, np.vstack(pos)


def _unit_p2s6_edge():
    """Two PS4 tetrahedra sharing an edge, P2S6(2-) (P-P 2.9 A across the shared S2 edge)."""
    d = 1.45
    h = math.sqrt(_P_SB ** 2 - d ** 2)
    pos = [np.array([-d, 0, 0]), np.array([d, 0, 0]), np.array([0, h, 0]), np.array([0, -h, 0])]
    a = math.radians(54.7)
    for sgn, p in ((-1, pos[0]), (1, pos[1])):
        pos += [p + _P_S * np.array([sgn * math.cos(a), 0, z * math.sin(a)]) for z in (1, -1)]
    return ["P", "P", "S", "S"] + ["S"] * 4, np.vstack(pos)


#: the rigid anionic units of thiophosphates: name -> (builder, charge, counts)
UNITS = {
    "PS4": (_unit_ps4, -3, {"P": 1, "S": 4}),  # orthothiophosphate, P(+5)
    "P2S7": (_unit_p2s7, -4, {"P": 2, "S": 7}),  # pyrothiophosphate, P(+5)
    "P2S6": (_unit_p2s6_pp, -4, {"P": 2, "S": 6}),  # hypodiphosphate, P(+4), P-P bond
    "P2S6e": (_unit_p2s6_edge, -2, {"P": 2, "S": 6}),  # edge-sharing meta-thiophosphate, P(+5)
    "S": (None, -2, {"S": 1}),  # sulfide
}


#: single-atom anions beside the thiophosphate units (the Li-P-S-X argyrodites)
HALIDES = ("F", "Cl", "Br", "I")


def unit_decompositions(counts: dict) -> list[dict]:
    """Every way to write ``counts`` (Li, P, S and halides) as Li(+) cations plus whole anionic
    units of :data:`UNITS` and halide anions, charge balanced: a list of ``{unit: number}``."""
    counts = {el: int(n) for el, n in counts.items() if n}
    if set(counts) - {"Li", "P", "S", *HALIDES}:
        return []
    halides = {el: n for el, n in counts.items() if el in HALIDES}
    a = counts.get("Li", 0) - sum(halides.values())
    b, c = counts.get("P", 0), counts.get("S", 0)
    if a < 0:
        return []
    out = []
    for n2 in range(b // 2 + 1):
        for n3 in range(b // 2 + 1 - n2):
            for n5 in range(b // 2 + 1 - n2 - n3):
                n1 = b - 2 * (n2 + n3 + n5)
                n4 = c - 4 * n1 - 7 * n2 - 6 * n3 - 6 * n5
                if n1 < 0 or n4 < 0:
                    continue
                if 3 * n1 + 4 * n2 + 4 * n3 + 2 * n4 + 2 * n5 != a:
                    continue
                d = {"PS4": n1, "P2S7": n2, "P2S6": n3, "P2S6e": n5, "S": n4, **halides}
                out.append({k: v for k, v in d.items() if v})
    return out


def motif_compositions(max_atoms: int = 24, max_units: int = 4, halides: Sequence[str] = ()) -> list[str]:
    """Reduced Li-P-S formulas that :func:`unit_decompositions` can build from at most
    ``max_units`` anionic units and at most ``max_atoms`` atoms (one formula unit): the
    thiophosphates with P in +5 (PS4, P2S7, edge-sharing P2S6) and +4 (P2S6 with a P-P bond),
    mixed with sulfide anions (Li7PS6 = Li7(PS4)S2, Li7P3S11 = Li7(PS4)(P2S7), ...), and Li2S."""
    units = {**UNITS, **{x: (None, -1, {x: 1}) for x in halides}}
    names = list(units)
    out = set()
    for combo in itertools.product(range(max_units + 1), repeat=len(names)):
        if not 0 < sum(combo) <= max_units:
            continue
        counts = {"Li": 0, "P": 0, "S": 0, **{x: 0 for x in halides}}
        for name, k in zip(names, combo):
            _, charge, el = units[name]
            counts["Li"] -= charge * k
            for e, m in el.items():
                counts[e] += m * k
        if sum(counts.values()) <= max_atoms:
            out.add(_formula(_reduce(counts)))
    return sorted(out)


class MotifGenerator(PyxtalGenerator):
    """Crystals built from the polyanions thiophosphates are made of, AIRSS-style.

    A composition is written as Li cations plus rigid anionic units (:data:`UNITS`: PS4
    tetrahedra, corner-sharing P2S7, P2S6 with a P-P bond, edge-sharing P2S6, S(2-); one of its
    charge-balanced decompositions drawn at random, each extra kind of unit quartering the odds).  The units are placed with random
    orientations at random points of a random cell in the composition's volume window, largest
    first, then the Li cations (the window is looser than ``pyxtal``'s, 23-40 A^3/atom for Li3PS4
    against its 24.5, because random sequential placement jams well below a crystal's packing; the
    relaxation compresses): an atom of a unit at least ``unit_separation`` (3.0 A, below
    the closest S...S contact between thiophosphate anions) from the atoms of every other unit
    and from its own periodic images, a Li at least ``min_distance`` (2.2 A) from everything;
    the relaxation then finds the packing.  Compositions, formula units and their
    learned weights are those of ``pyxtal`` (``update`` moves them the same way); the default
    compositions are :func:`motif_compositions`.  Every candidate is space group 1 and records
    its units in ``info["units"]``.  Random search seeded with the right building blocks finds
    molecular-anion crystals that uniform random atoms rarely do (Pickard & Needs 2011).
    """

    backend = "motif"

    def __init__(self, elements: Sequence[str] = ("Li", "P", "S"), compositions: Sequence[str] | None = None,
                 **kwargs):
        kwargs.setdefault("spacegroups", [1])
        kwargs.setdefault("min_distance", 2.2)
        kwargs.setdefault("volume_window", [2.8, 1.6])
        self.unit_separation = float(kwargs.pop("unit_separation", 3.0))
        if not compositions:
            compositions = motif_compositions(int(kwargs.get("max_atoms", 40)),
                                              halides=[e for e in elements if e in HALIDES])
        super().__init__(elements, compositions, **kwargs)
        bad = [c for c in self.compositions
               if not any(unit_decompositions({e: n * z for e, n in _parse(c).items()}) for z in self.z_values)]
        if bad:
            raise ValidationError(f"compositions {bad} cannot be built from Li, thiophosphate units and "
                                  f"halide anions in {self.z_values} formula units")

    def _crystal(self, species, numbers, spacegroup):
        from ase import Atoms
        from scipy.spatial.transform import Rotation

        rng = np.random.default_rng(self._rng.randrange(2**63))
        counts = dict(zip(species, numbers))
        options = unit_decompositions(counts)
        if not options:
            return None
        # the simpler decompositions first: each extra kind of unit quarters the odds
        odds = np.array([0.25 ** (len([u for u in d if u in UNITS]) - 1) for d in options])
        units = options[int(rng.choice(len(options), p=odds / odds.sum()))]
        cell = _random_cell(rng, self.volume_bounds(counts), sum(numbers))
        if cell is None:
            return None
        inv = np.linalg.inv(cell)
        symbols: list[str] = []
        frac = np.zeros((0, 3))
        cation = np.zeros(0, dtype=bool)
        shifts = np.array([s for s in itertools.product((-1, 0, 1), repeat=3) if any(s)], float) @ cell
        order = sorted(units, key=lambda u: -sum(UNITS[u][2].values()) if u in UNITS else -1)
        pieces = [u for u in order for _ in range(units[u])] + ["Li"] * int(counts.get("Li", 0))
        for piece in pieces:
            build = UNITS[piece][0] if piece in UNITS else None
            syms, local = build() if build else ([piece], np.zeros((1, 3)))
            is_li = piece == "Li"
            for _attempt in range(self.max_attempts * 5):
                rot = Rotation.random(random_state=rng.integers(2**32)).as_matrix()
                centre = rng.random(3) @ cell
                cart = (local @ rot.T) + centre
                # the unit apart from its own periodic images
                own = (cart[:, None, None, :] + shifts[None, None, :, :]) - cart[None, :, None, :]
                if np.min(np.linalg.norm(own, axis=3)) < (self.min_distance if is_li else self.unit_separation):
                    continue
                f = cart @ inv
                if len(frac):
                    d = f[:, None, :] - frac[None, :, :]
                    d -= np.round(d)
                    dist = np.linalg.norm(d @ cell, axis=2)
                    need = np.where(cation[None, :] | is_li, self.min_distance, self.unit_separation)
                    if np.any(dist < need):
                        continue
                break
            else:
                return None
            symbols += syms
            frac = np.vstack([frac, f % 1.0])
            cation = np.concatenate([cation, np.full(len(syms), is_li)])
        atoms = Atoms(symbols, scaled_positions=frac, cell=cell, pbc=True)
        atoms.info["units"] = ",".join(f"{u}:{units[u]}" for u in order)
        return atoms

    def _distances_ok(self, atoms) -> bool:
        # the units' own bonds (P-S 2.03 A) are shorter than the separations between pieces
        return min_distance_ok(atoms, min(self.min_distance, 0.95 * _P_S))

    def state(self):
        return {**super().state(), "unit_separation": self.unit_separation}

    def _config(self):
        return {**super()._config(), "unit_separation": self.unit_separation}


# ---------------------------------------------------------------------- anion frameworks
#: the anion sublattices: conventional cells (fractional anion sites) of unit nearest-neighbour
#: distance; hcp in its orthohexagonal cell (a, sqrt(3) a, sqrt(8/3) a)
FRAMEWORKS = {
    "fcc": (np.eye(3) * math.sqrt(2), [(0, 0, 0), (0, .5, .5), (.5, 0, .5), (.5, .5, 0)]),
    "hcp": (np.diag([1.0, math.sqrt(3), math.sqrt(8 / 3)]),
            [(0, 0, 0), (.5, .5, 0), (0, 1 / 3, .5), (.5, 5 / 6, .5)]),
    "bcc": (np.eye(3) * 2 / math.sqrt(3), [(0, 0, 0), (.5, .5, .5)]),
}
#: the stacking axis of the close-packed layers (Cartesian, in the cells above); a tetrahedral hole
#: of a close packing points up or down it (T+, T-)
STACKING = {"fcc": (1.0, 1.0, 1.0), "hcp": (0.0, 0.0, 1.0)}
#: how the cations fill the holes (see FrameworkGenerator)
MODES = ("polar", "tetrahedral", "mixed")


def framework_holes(cell, frac, tol: float = 0.05, axis=None) -> list[dict]:
    """The interstitial sites of a periodic anion lattice: the Voronoi vertices of the anions, each
    with its coordination (the anions within ``1 + tol`` of its nearest: 4 tetrahedral, 6
    octahedral), its position and its orientation class: with a stacking ``axis`` (close packings),
    +1 or -1 for a tetrahedron whose apex points up or down it (0 for an octahedron); without one,
    the set of directions to its anions (holes of one class are translations of each other)."""
    from scipy.spatial import Voronoi

    cell = np.asarray(cell, float)
    frac = np.asarray(frac, float) % 1.0
    shifts = np.array(list(itertools.product((-1, 0, 1), repeat=3)), float)
    images = (frac[None, :, :] + shifts[:, None, :]).reshape(-1, 3)
    cart = images @ cell
    inv = np.linalg.inv(cell)
    holes, seen = [], []
    for v in Voronoi(cart).vertices:
        f = v @ inv
        if np.any(f < -1e-6) or np.any(f >= 1 - 1e-6):
            continue
        f = f % 1.0
        if any(np.linalg.norm(((f - g + 0.5) % 1.0 - 0.5) @ cell) < 1e-3 for g in seen):
            continue
        d = (images - f) @ cell  # every periodic image: a small cell holds one anion twice
        r = np.linalg.norm(d, axis=1)
        dmin = r.min()
        near = r <= dmin * (1 + tol)
        k = int(near.sum())
        if k not in (4, 6):
            continue
        if axis is not None:
            proj = d[near] @ (np.asarray(axis, float) / np.linalg.norm(axis))
            # the apex: the one anion off the plane of the other three
            vals, n_at = np.unique(np.round(proj, 3), return_counts=True)
            key = 0 if k == 6 or len(vals) != 2 else int(np.sign(vals[n_at == 1][0])) if (n_at == 1).any() else 0
        else:
            dirs = np.round(d[near] / r[near, None], 1) + 0.0
            key = tuple(sorted(map(tuple, dirs.tolist())))
        seen.append(f)
        holes.append({"frac": f, "coordination": k,
                      "anions": tuple(sorted({int(i) % len(frac) for i in np.nonzero(near)[0]})),
                      "radius": float(dmin), "orientation": key})
    return holes


class FrameworkGenerator(PyxtalGenerator):
    """Sulfides built on anion frameworks: S in a close-packed (fcc, hcp) or bcc sublattice, P(+5)
    and Li(+) in its interstitial holes.

    Most thiophosphate solid electrolytes and their binaries are such orderings: antifluorite Li2S
    fills every tetrahedral hole of fcc S, and the Li3PS4 polymorphs, Li7PS6 and the argyrodites
    put P and Li in tetrahedral and octahedral holes of close-packed S, Li7P3S11 and LGPS-type
    structures in the tetrahedral holes of bcc S (Wang et al., Nature Mater. 14, 1026 (2015)).
    A batch draws (composition, formula units, framework, mode) families without replacement,
    weighted by the learned composition and Z weights, ``framework_weights`` and ``modes``, so it
    covers every family before it repeats one.  A candidate takes the most compact supercell of its
    framework with as many anion sites as it has S, scales it to an S-S distance drawn from
    ``ss_distance`` (Å; bcc to the same cation-S distance in its tetrahedral holes),
    puts each P in a tetrahedral hole whose anions no other P uses (isolated PS4 tetrahedra; when
    the composition has fewer than 4 S per P, two P may share one anion: corner-sharing P2S7), and
    the Li cations in the remaining tetrahedral and octahedral holes at least ``cation_distance``
    (times the S-S distance) from every cation.  The holes they may use follow a mode drawn with
    the odds ``modes``: ``polar``, the tetrahedra of one orientation class (the T+ holes of a close
    packing: wurtzite- and zincblende-like orderings); ``tetrahedral``, every tetrahedral hole
    (antifluorite-like); ``mixed``, any hole (octahedral ones with odds ``octahedral``).
    The compositions are the charge-balanced Li-P-S formulas with P in +5 (Li + 5 P = 2 S); their
    weights and the formula units are learned as in ``pyxtal``.  The relaxation then shapes the
    tetrahedra (P-S 2.05 Å against a hole's 0.61 d(S-S)).  Every candidate records its framework
    and supercell in ``info["framework"]``."""

    backend = "framework"

    def __init__(self, elements: Sequence[str] = ("Li", "P", "S"), compositions: Sequence[str] | None = None,
                 framework_weights: dict | None = None, ss_distance: Sequence[float] = (3.65, 4.05),
                 cation_distance: float = 0.6, modes: dict | None = None, octahedral: float = 0.5, **kwargs):
        if set(elements) - {"Li", "P", "S"} or "S" not in elements:
            raise ValidationError(f"the framework generator builds Li-P-S sulfides, not {list(elements)}")
        kwargs.setdefault("spacegroups", [1])
        kwargs.setdefault("max_atoms", 24)
        kwargs.setdefault("volume_window", [1.0, 2.0])
        self.framework_weights = {k: float(v) for k, v in (framework_weights or {k: 1.0 for k in FRAMEWORKS}).items()}
        unknown = set(self.framework_weights) - set(FRAMEWORKS)
        if unknown or not self.framework_weights or min(self.framework_weights.values()) < 0:
            raise ValidationError(f"framework_weights must weigh {sorted(FRAMEWORKS)}, not {framework_weights}")
        self.ss_distance = [float(x) for x in ss_distance]
        self.cation_distance, self.octahedral = float(cation_distance), float(octahedral)
        self.modes = {m: float((modes or {}).get(m, 1.0)) for m in MODES}
        if set(modes or {}) - set(MODES) or min(self.modes.values()) < 0 or sum(self.modes.values()) <= 0:
            raise ValidationError(f"modes must weigh {list(MODES)}, not {modes}")
        if not (0 < self.ss_distance[0] <= self.ss_distance[1]):
            raise ValidationError("ss_distance must be (min, max) > 0")
        if not compositions:
            compositions = [c for c in charge_balanced_compositions(list(elements))
                            if self._balanced(_parse(c)) and _parse(c).get("S")]
        super().__init__(elements, compositions, **kwargs)
        bad = [c for c in self.compositions if not self._balanced(_parse(c))]
        if bad:
            raise ValidationError(f"compositions {bad} are not Li(+), P(+5), S(-2) charge balanced")
        self._holes: dict = {}

    def volume_bounds(self, counts: dict) -> tuple[float, float]:
        # the framework sets the density (the S-S distance); the window only catches the absurd
        if self.volume_per_atom is not None:
            return self.volume_per_atom[0], self.volume_per_atom[1]
        return 8.0, 60.0

    @staticmethod
    def _balanced(counts: dict) -> bool:
        li, p, s = counts.get("Li", 0), counts.get("P", 0), counts.get("S", 0)
        return s > 0 and li + 5 * p == 2 * s and (p == 0 or s >= 3.5 * p)

    def _supercell(self, rng, name: str, n_anions: int):
        """The most compact diagonal supercell of framework ``name`` with ``n_anions`` anion sites
        (the least ratio of its longest to its shortest cell vector; ties drawn at random), or None."""
        base = len(FRAMEWORKS[name][1])
        if n_anions % base:
            return None
        m = n_anions // base
        splits = [(a, b, m // (a * b)) for a in range(1, m + 1) if m % a == 0
                  for b in range(1, m // a + 1) if (m // a) % b == 0]
        lengths = np.diag(FRAMEWORKS[name][0])
        aniso = np.array([max(lengths * r) / min(lengths * r) for r in np.array(splits)])
        best = [sp for sp, x in zip(splits, aniso) if x <= aniso.min() + 1e-9]
        return best[int(rng.integers(len(best)))]

    def families(self, compositions, max_atoms: int) -> list[tuple]:
        """Every (composition, formula units, framework, mode) within ``max_atoms`` whose framework
        has a supercell of the composition's S count, with its weight (the learned composition and
        Z weights times the framework and mode weights)."""
        out = []
        for comp in compositions:
            counts = _parse(comp)
            for z in self.z_values:
                if z * sum(counts.values()) > max_atoms or str(z) not in self.weights["z"]:
                    continue
                for fw, wf in self.framework_weights.items():
                    if wf <= 0 or (z * counts.get("S", 0)) % len(FRAMEWORKS[fw][1]):
                        continue
                    for mode in MODES:
                        w = (self.weights["composition"].get(comp, 1.0) * self.weights["z"][str(z)] * wf
                             * self.modes[mode])
                        if w > 0:
                            out.append(((comp, z, fw, mode), w))
        return out

    def sample(self, n, compositions=None, conditions=None):
        """``n`` candidates drawn family by family without replacement (weighted), so that a batch
        covers the (composition, Z, framework, mode) families before it repeats one."""
        conditions = dict(conditions or {})
        max_atoms = int(conditions.get("max_atoms", self.max_atoms))
        allowed = list(self.compositions)
        if compositions:
            allowed = []
            for c in compositions:
                c = _formula(_reduce(_parse(c)))
                if set(_parse(c)) - set(self.elements) or not self._balanced(_parse(c)):
                    continue  # not a Li(+) P(+5) S(-2) sulfide: another strategy's composition
                if c not in self.weights["composition"]:
                    self.weights["composition"][c] = 1.0
                    self.compositions.append(c)
                allowed.append(c)
        fams = self.families(allowed, max_atoms)
        if not fams:
            return []
        rng = np.random.default_rng(self._rng.randrange(2**63))
        out, attempts, queue = [], 0, []
        while len(out) < n and attempts < n * self.max_attempts:
            if not queue:  # a new round: every family once, in a weighted random order
                keys = rng.random(len(fams)) ** (1.0 / np.array([w for _, w in fams]))
                queue = [fams[i][0] for i in np.argsort(-keys)]
            comp, z, fw, mode = queue.pop(0)
            attempts += 1
            counts = {el: k * z for el, k in _parse(comp).items()}
            atoms = self._build(counts, fw, mode, rng)
            if atoms is None or len(atoms) > max_atoms or not self._distances_ok(atoms):
                continue
            atoms.info.update({"generator": self.backend, "composition": comp, "z": z, "spacegroup": 1,
                               "generator_checkpoint": self.hash or ""})
            if "target_e_hull" in conditions:
                atoms.info["target_e_hull"] = float(conditions["target_e_hull"])
            out.append(atoms)
        return out

    def _framework(self, name: str, reps: tuple):
        key = (name, reps)
        if key not in self._holes:
            cell0, frac0 = FRAMEWORKS[name]
            frac = np.array([(np.array(f) + np.array(s)) / np.array(reps)
                             for s in itertools.product(*[range(r) for r in reps]) for f in frac0])
            cell = cell0 * np.array(reps)[:, None]
            self._holes[key] = (cell, frac, framework_holes(cell, frac, axis=STACKING.get(name)))
        return self._holes[key]

    def _crystal(self, species, numbers, spacegroup):
        rng = np.random.default_rng(self._rng.randrange(2**63))
        names = [k for k, w in self.framework_weights.items() if w > 0]
        w = np.array([self.modes[m] for m in MODES])
        return self._build(dict(zip(species, numbers)), names[int(rng.integers(len(names)))],
                           MODES[int(rng.choice(len(MODES), p=w / w.sum()))], rng)

    def _build(self, counts: dict, name: str, mode: str, rng):
        """One candidate of ``counts`` atoms on framework ``name`` filled in ``mode`` (None: none fits)."""
        from ase import Atoms

        n_li, n_p, n_s = counts.get("Li", 0), counts.get("P", 0), counts.get("S", 0)
        if not self._balanced(counts):
            return None
        reps = self._supercell(rng, name, n_s)
        if reps is None:
            return None
        cell, frac, holes = self._framework(name, reps)
        tets = [h for h in holes if h["coordination"] == 4]
        if len(tets) < n_p or len(holes) < n_p + n_li:
            return None
        # the ordering: every cation in one orientation class of tetrahedra (polar: wurtzite- or
        # zincblende-like), in tetrahedral holes only (antifluorite-like), or in any hole
        pool = holes
        if mode == "polar":
            classes = sorted({h["orientation"] for h in tets}, key=str)
            cls = classes[int(rng.integers(len(classes)))]
            pool = [h for h in tets if h["orientation"] == cls]
        elif mode == "tetrahedral":
            pool = tets
        if len(pool) < n_p + n_li:
            mode, pool = "mixed", holes
        share = 0 if n_s >= 4 * n_p else 1  # corner-sharing P2S7 below 4 S per P
        used = Counter()
        placed: list[tuple[str, np.ndarray]] = []
        min_cc = self.cation_distance  # in units of the S-S distance (the cell's unit)

        def free(f):
            return all(np.linalg.norm(((f - g + 0.5) % 1.0 - 0.5) @ cell) >= min_cc for _, g in placed)

        for h in rng.permutation(len(pool)).tolist():
            if sum(1 for el, _ in placed if el == "P") == n_p:
                break
            hole = pool[h]
            # a tetrahedron of four distinct anions (a thin cell may hold one anion twice), no
            # anion of another P's (one shared for P2S7)
            if hole["coordination"] != 4 or len(hole["anions"]) != 4 or any(used[a] > share for a in hole["anions"]) \
                    or not free(hole["frac"]):
                continue
            if share and sum(1 for a in hole["anions"] if used[a]) > share:
                continue
            used.update(hole["anions"])
            placed.append(("P", hole["frac"]))
        if sum(1 for el, _ in placed if el == "P") < n_p:
            return None
        taken = {tuple(np.round(g, 6)) for _, g in placed}
        rest = [h for h in pool if tuple(np.round(h["frac"], 6)) not in taken]
        odds = np.array([1.0 if h["coordination"] == 4 else self.octahedral for h in rest])
        if odds.sum() <= 0:
            return None
        order = rng.choice(len(rest), size=len(rest), replace=False, p=odds / odds.sum()) if rest else []
        n_placed = 0
        for i in order:
            if n_placed == n_li:
                break
            f = rest[int(i)]["frac"]
            if free(f):
                placed.append(("Li", f))
                n_placed += 1
        if n_placed < n_li:
            return None
        # the S-S distance of a close packing; other frameworks scaled to the same cation-S
        # distance in their tetrahedral holes (bcc's are 0.645 d(S-S) from their anions, not 0.612)
        r_tet = min(h["radius"] for h in tets)
        d_ss = float(rng.uniform(*self.ss_distance)) * math.sqrt(3 / 8) / r_tet
        symbols = ["S"] * len(frac) + [el for el, _ in placed]
        positions = np.vstack([frac, [g for _, g in placed]]) if placed else frac
        atoms = Atoms(symbols, scaled_positions=positions, cell=cell * d_ss, pbc=True)
        atoms.info["framework"] = f"{name} {'x'.join(map(str, reps))} {mode}"
        return atoms

    def state(self):
        return {**super().state(), "framework_weights": self.framework_weights, "ss_distance": self.ss_distance,
                "cation_distance": self.cation_distance, "modes": self.modes, "octahedral": self.octahedral}

    def _config(self):
        return {**super()._config(), "framework_weights": self.framework_weights, "ss_distance": self.ss_distance,
                "modes": self.modes}


# ---------------------------------------------------------------------- substitution
class SubstitutionGenerator(Generator):
    """Candidates from prototypes by chemically likely element substitutions.

    Uses pymatgen's data-mined ``SubstitutionProbability`` (Hautier et al. 2011,
    shipped with pymatgen, offline).  Every prototype species is mapped to a
    species of the node's chemical system (``elements``); a map is kept when it
    is charge balanced, changes something, and its probability (product of
    conditional substitution probabilities) is above ``threshold``.  The state
    also holds learned per-pair multipliers updated from outcomes
    (``{"substitution": {"Na": "Li"}, "reward"}``).
    """

    backend = "substitution"

    def __init__(self, prototypes: Sequence = (), elements: Sequence[str] = ("Li", "P", "S"),
                 threshold: float = 1e-3, min_distance: float = 1.4, lr: float = 1.0,
                 pair_weights: dict | None = None, scale_volume: bool = True, library: str | None = None,
                 exclude: Sequence[str] = (), max_sites: int = 24, seed: int = 0):
        super().__init__()
        from pymatgen.core import Structure

        self.elements = list(elements)
        self.library, self.exclude, self.max_sites = library, sorted(set(exclude)), int(max_sites)
        self.seed = int(seed)
        self._rng = random.Random(self.seed)
        if library not in (None, "aflow"):
            raise ValidationError(f"unknown prototype library {library!r} (aflow)")
        if library == "aflow" and not prototypes:
            prototypes = aflow_prototypes(max_elements=len(self.elements), max_sites=self.max_sites,
                                          exclude=self.exclude)
        self.prototypes = []
        for p in prototypes:
            if isinstance(p, dict):
                p = Structure.from_dict(p)
            elif not isinstance(p, Structure):
                from pymatgen.io.ase import AseAtomsAdaptor
                p = AseAtomsAdaptor.get_structure(p)
            self.prototypes.append(p)
        self.threshold, self.min_distance, self.lr = float(threshold), float(min_distance), float(lr)
        self.pair_weights = dict(pair_weights or {})
        self.scale_volume = bool(scale_volume)

    def _proto_species(self, structure):
        s = structure.copy()
        if not all(hasattr(sp, "oxi_state") and sp.oxi_state is not None for sp in s.species):
            s.add_oxidation_state_by_guess()
        return s

    def candidates(self) -> list[dict]:
        """All substitutions of all prototypes, most probable first."""
        from pymatgen.analysis.structure_prediction.substitution_probability import SubstitutionProbability
        from pymatgen.core import Element, Species

        prob = SubstitutionProbability()
        targets = [Species(el, o) for el in self.elements for o in Element(el).common_oxidation_states]
        out = []
        for pi, proto in enumerate(self.prototypes):
            s = self._proto_species(proto)
            old = sorted(set(s.species), key=str)
            counts = {sp: sum(1 for x in s.species if x == sp) for sp in old}
            for new in itertools.product(targets, repeat=len(old)):
                if all(n.symbol == o.symbol for n, o in zip(new, old)):
                    continue
                if sum(n.oxi_state * counts[o] for n, o in zip(new, old)) != 0:
                    continue
                p = 1.0
                for n, o in zip(new, old):
                    p *= _cond_prob(prob, n, o)
                    p *= self.pair_weights.get(f"{o.symbol}->{n.symbol}", 1.0)
                if p < self.threshold:
                    continue
                out.append({"prototype": pi, "probability": p,
                            "substitution": {o.symbol: n.symbol for n, o in zip(new, old)},
                            "_map": dict(zip(old, new))})
        out.sort(key=lambda c: -c["probability"])
        return out

    def reseed(self, salt) -> None:
        self._rng = random.Random(f"{self.seed}:{salt}")

    def sample(self, n, compositions=None, conditions=None):
        """Up to ``n`` substitutions, drawn without replacement with odds proportional to their
        probability (the most probable are the likeliest, the rest stay reachable)."""
        from pymatgen.io.ase import AseAtomsAdaptor

        out, seen = [], set()
        allowed = {_formula(_reduce(_parse(c))) for c in compositions} if compositions else None
        max_atoms = int((conditions or {}).get("max_atoms", 10**9))
        cands = self.candidates()
        # weighted sampling without replacement: the order of u**(1/p) (Efraimidis & Spirakis 2006)
        keys = [self._rng.random() ** (1.0 / max(c["probability"], 1e-300)) for c in cands]
        cands = [cands[i] for i in sorted(range(len(cands)), key=lambda i: -keys[i])]
        for cand in cands:
            if len(self.prototypes[cand["prototype"]]) > max_atoms:
                continue
            if len(out) >= n:
                break
            s = self._proto_species(self.prototypes[cand["prototype"]])
            s.replace_species(cand["_map"])
            s.remove_oxidation_states()
            comp = s.composition.reduced_formula
            key = (cand["prototype"], comp)
            if key in seen or (allowed and _formula(_reduce(_parse(comp))) not in allowed):
                continue
            seen.add(key)
            if self.scale_volume:
                s = _scale_to_radii(s, self.prototypes[cand["prototype"]])
            atoms = AseAtomsAdaptor.get_atoms(s)
            if not min_distance_ok(atoms, self.min_distance):
                continue
            atoms.info.update({"generator": self.backend, "composition": comp,
                               "substitution": json.dumps(cand["substitution"]),
                               "probability": cand["probability"], "prototype_index": cand["prototype"],
                               "generator_checkpoint": self.hash or ""})
            out.append(atoms)
        return out

    def _learn(self, outcomes):
        for o in outcomes:
            sub = o.get("substitution")
            if isinstance(sub, str):
                sub = json.loads(sub)
            for a, b in (sub or {}).items():
                if a == b:
                    continue
                k = f"{a}->{b}"
                self.pair_weights[k] = self.pair_weights.get(k, 1.0) * math.exp(self.lr * (float(o["reward"]) - 0.5))

    def state(self):
        return {"prototypes": [p.as_dict() for p in self.prototypes], "elements": self.elements,
                "threshold": self.threshold, "min_distance": self.min_distance, "lr": self.lr,
                "pair_weights": self.pair_weights, "scale_volume": self.scale_volume, "library": self.library,
                "exclude": self.exclude, "max_sites": self.max_sites, "seed": self.seed}

    @classmethod
    def from_state(cls, state):
        return cls(**state)

    def _config(self):
        return {"elements": self.elements, "n_prototypes": len(self.prototypes), "threshold": self.threshold}


# ---------------------------------------------------------------------- mixture
class MixtureGenerator(Generator):
    """Several generators as one: each proposes its ``share`` of every batch.

    ``members`` is a list of generator configs, ``{"backend": NAME, "share": w, ...}`` (the
    rest are the backend's own settings, ``elements`` passed down), for example motif-built
    thiophosphates, AFLOW prototype substitutions and symmetric pyxtal crystals side by side.
    ``update`` gives every member the outcomes (each learns what it can read from them: the
    composition tables, the substitution pairs) and moves the shares toward the members whose
    candidates earned more (each outcome names its ``strategy``, the member's backend; ``share_lr``,
    a floor of ``share_floor`` times the mean share); the checkpoint holds every member's state.
    """

    backend = "mixture"

    def __init__(self, members: Sequence[dict] = (), elements: Sequence[str] = ("Li", "P", "S"), seed: int = 0,
                 share_lr: float = 1.0, share_floor: float = 0.25, _states: Sequence[dict] | None = None):
        super().__init__()
        from nodestore.models.registry import registry

        self.share_lr, self.share_floor = float(share_lr), float(share_floor)
        if not (self.share_lr >= 0 and 0 <= self.share_floor <= 1):
            raise ValidationError("share_lr must be >= 0 and share_floor in [0, 1]")

        if not members:
            raise ValidationError("a mixture generator needs members: [{backend: NAME, share: w, ...}, ...]")
        self.elements, self.seed = list(elements), int(seed)
        self.members_config = [dict(m) for m in members]
        self.shares, self.members = [], []
        for i, m in enumerate(self.members_config):
            cfg = dict(m)
            name = cfg.pop("backend", None)
            share = float(cfg.pop("share", 1.0))
            if not name or name == "mixture" or share < 0:
                raise ValidationError(f"mixture member {i}: needs a backend other than mixture and a share >= 0")
            cls = registry(KIND).get(name)
            if _states is not None:
                gen = cls.from_state(_states[i])
            else:
                cfg.setdefault("elements", self.elements)
                cfg.setdefault("seed", self.seed + i)
                try:
                    gen = cls(**cfg)
                except TypeError as exc:
                    raise ValidationError(f"mixture member {i} ({name}): {exc}") from exc
            self.members.append(gen)
            self.shares.append(share)
        if sum(self.shares) <= 0:
            raise ValidationError("mixture shares sum to zero")

    def counts(self, n: int) -> list[int]:
        """``n`` split by share (largest remainder)."""
        w = np.array(self.shares) / sum(self.shares) * n
        k = np.floor(w).astype(int)
        for i in np.argsort(-(w - k), kind="stable")[: n - int(k.sum())]:
            k[i] += 1
        return k.tolist()

    def reseed(self, salt) -> None:
        for i, g in enumerate(self.members):
            g.reseed(f"{salt}:{i}")

    def sample(self, n, compositions=None, conditions=None):
        out = []
        for g, k in zip(self.members, self.counts(n)):
            if k:
                out.extend(g.sample(k, compositions=compositions, conditions=conditions))
        return out

    def _learn(self, outcomes):
        for g in self.members:
            g._learn([dict(o) for o in outcomes])
        # each member's share follows its yield (mean reward of the outcomes it proposed):
        # share *= exp(share_lr * (yield - mean yield)), a floor keeping every member alive
        by: dict[str, list[float]] = {}
        for o in outcomes:
            if o.get("strategy"):
                by.setdefault(str(o["strategy"]), []).append(float(o["reward"]))
        if not by or self.share_lr <= 0:
            return
        names = [g.backend for g in self.members]
        yields = {n: float(np.mean(by[n])) for n in names if n in by}
        if len(yields) < 2:
            return
        mean = float(np.mean(list(yields.values())))
        total = sum(self.shares)
        for i, n in enumerate(names):
            if n in yields:
                self.shares[i] *= math.exp(self.share_lr * (yields[n] - mean))
        scale = total / sum(self.shares)
        floor = self.share_floor * total / len(self.shares)
        self.shares = [max(sh * scale, floor) for sh in self.shares]
        for m, sh in zip(self.members_config, self.shares):
            m["share"] = round(sh, 6)

    def state(self):
        return {"members": self.members_config, "elements": self.elements, "seed": self.seed,
                "share_lr": self.share_lr, "share_floor": self.share_floor,
                "_states": [g.state() for g in self.members]}

    @classmethod
    def from_state(cls, state):
        return cls(**state)

    def _config(self):
        return {"members": [{"backend": m.get("backend"), "share": m.get("share", 1.0)} for m in self.members_config]}


def aflow_prototypes(max_elements: int = 3, max_sites: int = 24, exclude: Sequence[str] = ()) -> list:
    """The ordered structures of the AFLOW prototype library as shipped in pymatgen (Mehl et al.
    2017, 288 prototypes; offline) with at most ``max_elements`` elements and ``max_sites``
    sites, minus the AFLOW labels in ``exclude``; each carries its label in ``properties``."""
    from pymatgen.analysis.prototypes import AFLOW_PROTOTYPE_LIBRARY

    out = []
    drop = set(exclude)
    for entry in AFLOW_PROTOTYPE_LIBRARY:
        s = entry["snl"].structure
        label = entry["tags"]["aflow"]
        if label in drop or not s.is_ordered or len(s) > max_sites or len(s.composition.elements) > max_elements:
            continue
        s = s.copy()
        s.properties = {"aflow": label, "mineral": entry["tags"].get("mineral", "")}
        out.append(s)
    return out


def _cond_prob(prob, new, old) -> float:
    """P(new | old) from the data-mined table; 0 for species the table does not know."""
    if new == old:
        return 1.0
    try:
        return float(prob.cond_prob(new, old))
    except (ZeroDivisionError, KeyError, ValueError):
        return 0.0


def _scale_to_radii(new, old):
    """Scale the cell by the ratio of summed atomic volumes (covalent radii)."""
    from ase.data import atomic_numbers, covalent_radii

    def vol(s):
        return sum(covalent_radii[atomic_numbers[sp.symbol]] ** 3 for sp in s.species)

    ratio = vol(new) / max(vol(old), 1e-9)
    out = new.copy()
    out.scale_lattice(old.volume * ratio)
    return out

