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
            if len(atoms) > max_atoms or not min_distance_ok(atoms, self.min_distance):
                continue
            atoms.info.update({"generator": self.backend, "composition": comp, "z": z, "spacegroup": sg,
                               "generator_checkpoint": self.hash or ""})
            if "target_e_hull" in conditions:
                atoms.info["target_e_hull"] = float(conditions["target_e_hull"])
            out.append(atoms)
        return out

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
        from ase.geometry import cellpar_to_cell

        rng = np.random.default_rng(self._rng.randrange(2**63))
        symbols = [el for el, k in zip(species, numbers) for _ in range(k)]
        counts = {el: k for el, k in zip(species, numbers)}
        lo, hi = self.volume_bounds(counts)
        volume = rng.uniform(lo, hi) * len(symbols)
        lengths = rng.uniform(1.0, 1.5, 3)
        angles = rng.uniform(60.0, 120.0, 3)
        cell = cellpar_to_cell(np.concatenate([lengths, angles]))
        vol = abs(np.linalg.det(cell))
        if vol < 0.2 * np.prod(lengths):  # a nearly flat cell: draw again
            return None
        cell *= (volume / vol) ** (1 / 3)
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
                 pair_weights: dict | None = None, scale_volume: bool = True):
        super().__init__()
        from pymatgen.core import Structure

        self.elements = list(elements)
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

    def sample(self, n, compositions=None, conditions=None):
        from pymatgen.io.ase import AseAtomsAdaptor

        out, seen = [], set()
        allowed = {_formula(_reduce(_parse(c))) for c in compositions} if compositions else None
        for cand in self.candidates():
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
                "pair_weights": self.pair_weights, "scale_volume": self.scale_volume}

    @classmethod
    def from_state(cls, state):
        return cls(**state)

    def _config(self):
        return {"elements": self.elements, "n_prototypes": len(self.prototypes), "threshold": self.threshold}


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

