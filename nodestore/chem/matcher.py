"""Structure matching without comparing all pairs, with the verdicts of an exhaustive run.

The verdict of every pair is pymatgen's ``StructureMatcher.fit`` (ltol 0.2,
stol 0.3, angle_tol 5, primitive_cell, scale, no supercells).  What is new is
*which* pairs reach it.  A pair is only handed to ``fit`` when it passes three
tests, each of which ``fit`` itself implies, so none can reject a true match:

1. **Same formula hash** (reduced formula; anonymized formula for substitution
   matching).  ``fit`` returns False at once when the comparator's hashes
   differ; ``fit_anonymous`` needs a species permutation that makes them equal.
2. **Same number of sites after the matcher's own reduction** (Niggli, then
   ``get_primitive_structure``, computed by the very function the matcher
   uses).  Without supercells, ``_strict_match`` returns None whenever the two
   reduced structures differ in size.  (A primitive cell found by spglib at
   some other tolerance would *not* be safe: only the matcher's own is.)
3. **A lattice bound.**  ``fit(a, b)`` scales both lattices to one volume and
   needs three linearly independent vectors ``v`` of lattice ``a`` with
   ``|v_i| < (1 + ltol) * l_i(b)``, where ``l(b)`` are the cell lengths of the
   reduced ``b``.  So the k-th successive minimum of ``a`` is at most
   ``(1 + ltol)`` times the k-th smallest cell length of ``b`` (lengths taken at
   unit volume per cell).  Successive minima are computed exactly, by a
   complete enumeration of short lattice vectors.

Space group, volume per atom or a spglib primitive cell are *not* invariant
under the tolerances and are never used to reject a pair.

"Identical verdicts" are defined per candidate, in order: in ``dedup``, item
``j`` is a duplicate of the first earlier representative ``i`` (an item that is
not itself a duplicate) with ``fit(s_i, s_j)`` -- exactly the grouping of
``StructureMatcher.group_structures``; ``against="all"`` compares with every
earlier item instead.  Against a reference set, candidate ``j`` matches the
first reference ``r`` (in order) with ``fit(ref_r, cand_j)``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from nodestore.errors import ValidationError

#: StructureMatcher settings the verdicts follow
MATCH_PARAMS = dict(ltol=0.2, stol=0.3, angle_tol=5.0, primitive_cell=True, scale=True,
                    attempt_supercell=False)
#: relative slack on the lattice bound, far above float rounding
_SLACK = 1e-6
#: enumeration box beyond which successive minima are not computed (bound skipped)
_MAX_BOX = 8


def as_structure(obj):
    """A pymatgen Structure from Atoms, a Structure, or a ComputedStructureEntry."""
    from pymatgen.core import IStructure, Structure

    if isinstance(obj, (Structure, IStructure)):
        return obj
    if hasattr(obj, "structure") and not hasattr(obj, "get_positions"):
        return obj.structure
    if hasattr(obj, "get_positions"):
        from pymatgen.io.ase import AseAtomsAdaptor

        return AseAtomsAdaptor.get_structure(obj)
    raise ValidationError(f"cannot match a {type(obj).__name__}: expected ASE Atoms or a pymatgen Structure")


def successive_minima(matrix: np.ndarray) -> np.ndarray:
    """The three successive minima of the lattice with row vectors ``matrix``.

    Exact: every lattice vector not longer than the longest basis vector is
    enumerated (``|n_i| <= R * |column i of M^-1|``).  Returns zeros (a bound
    that rejects nothing) if the box would be unreasonably large.
    """
    m = np.asarray(matrix, dtype=float)
    radius = np.linalg.norm(m, axis=1).max() * (1 + 1e-9)
    inv = np.linalg.inv(m)
    box = np.floor(radius * np.linalg.norm(inv, axis=0) + 1e-9).astype(int)
    if box.max() > _MAX_BOX:
        return np.zeros(3)
    grids = np.meshgrid(*[np.arange(-b, b + 1) for b in box], indexing="ij")
    coeffs = np.stack([g.ravel() for g in grids], axis=1)
    vecs = coeffs @ m
    norms = np.linalg.norm(vecs, axis=1)
    order = np.argsort(norms, kind="stable")
    picked: list[np.ndarray] = []
    minima = []
    for idx in order:
        if norms[idx] < 1e-12:
            continue
        trial = np.array([*picked, vecs[idx]])
        if np.linalg.matrix_rank(trial, tol=1e-8 * norms[idx]) == len(trial):
            picked.append(vecs[idx])
            minima.append(norms[idx])
            if len(minima) == 3:
                break
    if len(minima) < 3:  # cannot happen for a full-rank lattice; stay conservative
        return np.zeros(3)
    return np.array(minima)


@dataclass
class Prepared:
    """One structure as the matcher sees it: reduced once, with its invariants."""

    reduced: object  # pymatgen Structure, Niggli + primitive, as StructureMatcher makes it
    formula: str  # the comparator's hash (fractional composition)
    reduced_formula: str
    anonymous: str  # anonymized formula
    n_sites: int
    minima: np.ndarray  # successive minima at unit cell volume
    lengths: np.ndarray  # sorted cell lengths of the reduced cell at unit volume
    unit: np.ndarray = None  # reduced cell (rows) scaled to unit volume
    frac: np.ndarray = None  # fractional coordinates of the reduced structure
    species: np.ndarray = None  # species label of each site (the comparator's notion)
    _short: tuple = None  # cached (coeffs, vectors, norms) of short lattice vectors
    _radius: float = 0.0

    def short_vectors(self, radius: float):
        """All lattice vectors of the unit-volume cell with norm <= radius (complete)."""
        if self._short is None or radius > self._radius:
            r = max(radius, 1.25 * self._radius)
            m = self.unit
            inv = np.linalg.inv(m)
            box = np.floor(r * np.linalg.norm(inv, axis=0) + 1e-9).astype(int)
            grids = np.meshgrid(*[np.arange(-b, b + 1) for b in box], indexing="ij")
            coeffs = np.stack([g.ravel() for g in grids], axis=1)
            vecs = coeffs @ m
            norms = np.linalg.norm(vecs, axis=1)
            keep = (norms <= r) & (norms > 1e-12)
            self._short = (coeffs[keep], vecs[keep], norms[keep])
            self._radius = r
        return self._short

    @property
    def fingerprint(self) -> str:
        """Cheap invariant string, usable as a table column.

        ``<formula>|<sites>|<l1>,<l2>,<l3>``: formula and site count are exact
        bucket keys; the three numbers (successive minima at unit volume) are
        informative only and never compared for equality.
        """
        mins = ",".join(f"{x:.3f}" for x in self.minima)
        return f"{self.reduced_formula}|{self.n_sites}|{mins}"


@dataclass
class MatchStats:
    pairs_in_buckets: int = 0  # pairs that shared formula and site count
    pairs_prefiltered: int = 0  # of those, rejected by the lattice bound
    fits: int = 0  # calls to StructureMatcher
    extra: dict = field(default_factory=dict)


class Matcher:
    """Deduplication and novelty with exhaustive-StructureMatcher verdicts.

    >>> m = Matcher()
    >>> first = m.dedup(structures)          # -1, or index of the earlier match
    >>> hit = m.match(candidates, references)  # -1, or index of the first reference
    """

    def __init__(self, ltol: float = 0.2, stol: float = 0.3, angle_tol: float = 5.0):
        from pymatgen.analysis.structure_matcher import StructureMatcher

        self.params = dict(MATCH_PARAMS, ltol=ltol, stol=stol, angle_tol=angle_tol)
        self.sm = StructureMatcher(**self.params)
        self.ltol = ltol
        self.stats = MatchStats()

    # -- preparation -----------------------------------------------------
    def prepare(self, structures: Sequence) -> list[Prepared]:
        """Reduce each structure once, exactly as the matcher would, and take its invariants."""
        from pymatgen.core import Structure

        out = []
        for obj in structures:
            if isinstance(obj, Prepared):
                out.append(obj)
                continue
            s = Structure.from_sites(as_structure(obj))
            red = self.sm._get_reduced_structure(s, self.params["primitive_cell"], niggli=True)
            comp = red.composition
            m = red.lattice.matrix / red.volume ** (1 / 3)
            out.append(Prepared(
                reduced=red,
                formula=self.sm._comparator.get_hash(comp),
                reduced_formula=comp.reduced_formula,
                anonymous=comp.anonymized_formula,
                n_sites=len(red),
                minima=successive_minima(m),
                lengths=np.sort(np.linalg.norm(m, axis=1)),
                unit=m,
                frac=np.array(red.frac_coords),
                species=np.array([str(sp) for sp in red.species_and_occu], dtype=object),
            ))
        return out

    def fingerprints(self, structures: Sequence) -> list[str]:
        return [p.fingerprint for p in self.prepare(structures)]

    # -- the pair test -----------------------------------------------------
    def _may_match(self, ref_minima: np.ndarray, cand_lengths: np.ndarray) -> np.ndarray:
        """Lattice bound for fit(ref, cand) over many refs at once (True: must call fit)."""
        bound = (1 + self.ltol) * (1 + _SLACK) * cand_lengths
        return np.all(ref_minima <= bound[None, :], axis=1)

    def _lattice_triples(self, ref: Prepared, cand: Prepared) -> np.ndarray:
        """Integer matrices ``C`` (rows: bases of ``ref``'s lattice) with the lengths and
        angles of ``cand``'s cell, as ``Lattice.find_all_mappings`` + the unimodular test of
        ``_get_lattices`` would find them -- a superset, thanks to a small slack."""
        t = (1 + self.ltol) * (1 + _SLACK)
        m = cand.unit
        lengths = np.linalg.norm(m, axis=1)
        coeffs, vecs, norms = ref.short_vectors(lengths.max() * t)
        sets = []
        for ln in lengths:
            sel = (norms < ln * t) & (norms > ln / t)
            if not sel.any():
                return np.zeros((0, 3, 3))
            sets.append((coeffs[sel], vecs[sel] / norms[sel, None]))
        u = m / lengths[:, None]
        cos_alpha, cos_beta, cos_gamma = u[1] @ u[2], u[0] @ u[2], u[0] @ u[1]
        atol = self.params["angle_tol"] + 1e-6

        def close(ua, ub, cos_target):
            ang = np.degrees(np.arccos(np.clip(ua @ ub.T, -1, 1)))
            return np.abs(ang - np.degrees(np.arccos(np.clip(cos_target, -1, 1)))) <= atol

        (fa, ua), (fb, ub), (fc, uc) = sets
        g_ab = close(ua, ub, cos_gamma)
        if not g_ab.any():
            return np.zeros((0, 3, 3))
        b_ac = close(ua, uc, cos_beta)
        a_bc = close(ub, uc, cos_alpha)
        found = []
        for i, j in np.argwhere(g_ab):
            ks = np.nonzero(b_ac[i] & a_bc[j])[0]
            if len(ks):
                mats = np.empty((len(ks), 3, 3))
                mats[:, 0] = fa[i]
                mats[:, 1] = fb[j]
                mats[:, 2] = fc[ks]
                good = np.abs(np.abs(np.linalg.det(mats)) - 1) < 0.5
                if good.any():
                    found.append(mats[good])
        return np.concatenate(found) if found else np.zeros((0, 3, 3))

    def _lattice_maps(self, ref: Prepared, cand: Prepared) -> bool:
        return len(self._lattice_triples(ref, cand)) > 0

    def _sites_may_match(self, ref: Prepared, cand: Prepared, mats: np.ndarray) -> bool:
        """The site test of ``_strict_match`` (``_cmp_fstruct``: every site of ``cand``
        within the fractional tolerance of a same-species site of ``ref``, for one of the
        translations pymatgen tries), over all lattice mappings at once, with slack."""
        n = cand.n_sites
        mask = cand.species[:, None] != ref.species[None, :]  # (n2, n1): True where species differ
        i0 = int(np.argmax(mask.sum(axis=1)))
        ks = np.nonzero(~mask[i0])[0]
        f2 = cand.frac
        stol = self.params["stol"]
        # parameters of the mapped lattices and of cand (unit volume), then their average
        basis = mats @ ref.unit  # (M, 3, 3)
        la = np.linalg.norm(basis, axis=2)
        ub = basis / la[:, :, None]
        ang = np.degrees(np.arccos(np.clip(np.stack([
            np.einsum("mi,mi->m", ub[:, 1], ub[:, 2]),
            np.einsum("mi,mi->m", ub[:, 0], ub[:, 2]),
            np.einsum("mi,mi->m", ub[:, 0], ub[:, 1])], axis=1), -1, 1)))
        lc = np.linalg.norm(cand.unit, axis=1)
        uc = cand.unit / lc[:, None]
        angc = np.degrees(np.arccos(np.clip([uc[1] @ uc[2], uc[0] @ uc[2], uc[0] @ uc[1]], -1, 1)))
        L = (la + lc) / 2
        cosang = np.cos(np.radians((ang + angc) / 2))  # alpha, beta, gamma
        G = np.empty((len(mats), 3, 3))
        G[:, 0, 0], G[:, 1, 1], G[:, 2, 2] = L[:, 0] ** 2, L[:, 1] ** 2, L[:, 2] ** 2
        G[:, 0, 1] = G[:, 1, 0] = L[:, 0] * L[:, 1] * cosang[:, 2]
        G[:, 0, 2] = G[:, 2, 0] = L[:, 0] * L[:, 2] * cosang[:, 1]
        G[:, 1, 2] = G[:, 2, 1] = L[:, 1] * L[:, 2] * cosang[:, 0]
        det = np.linalg.det(G)
        ok_lat = det > 0
        if not ok_lat.any():
            return True  # degenerate average lattice: do not judge, let pymatgen do it
        vol = np.sqrt(np.where(ok_lat, det, 1.0))
        recip = 2 * np.pi * np.sqrt(np.abs(np.diagonal(np.linalg.inv(np.where(ok_lat[:, None, None], G, np.eye(3))),
                                                       axis1=1, axis2=2)))
        norm = (n / vol) ** (1 / 3)
        tol = recip * stol / (np.pi * norm[:, None]) * (1 + 1e-6) + 1e-9  # (M, 3)
        s1fc = ref.frac @ np.linalg.inv(mats)  # (M, n1, 3)
        s1fc -= np.floor(s1fc)
        if not ok_lat.all():
            return True  # degenerate average lattice somewhere: do not judge, let pymatgen do it
        # first the sites of the rarest species alone (a necessary condition), then all sites
        # for the (mapping, translation) pairs that survive
        sub2 = np.nonzero(cand.species == cand.species[i0])[0]
        tr = s1fc[:, ks, :] - f2[i0]  # (M, T, 3)
        d = f2[sub2][None, None, :, None, :] + tr[:, :, None, None, :] - s1fc[:, None, None, ks, :]
        d -= np.round(d)
        close = np.all(np.abs(d) <= tol[:, None, None, None, :], axis=-1)  # (M, T, n_sub, T)
        alive = np.argwhere(np.all(np.any(close, axis=-1), axis=-1))  # (K, 2): mapping, translation
        if len(alive) == 0:
            return False
        if len(sub2) == n:
            return True
        chunk = max(1, int(2_000_000 // max(1, n * n * 3)))
        for start in range(0, len(alive), chunk):
            mi, ti = alive[start:start + chunk].T
            a = s1fc[mi]  # (k, n1, 3)
            dd = f2[None, :, None, :] + tr[mi, ti][:, None, None, :] - a[:, None, :, :]
            dd -= np.round(dd)
            ok = np.all(np.abs(dd) <= tol[mi][:, None, None, :], axis=-1) & ~mask[None]
            if np.any(np.all(np.any(ok, axis=-1), axis=-1)):
                return True
        return False

    def _fit(self, ref: Prepared, cand: Prepared, anonymous: bool) -> bool:
        mats = self._lattice_triples(ref, cand)
        if not len(mats):
            self.stats.extra["no_lattice_map"] = self.stats.extra.get("no_lattice_map", 0) + 1
            return False
        if not anonymous and not self._sites_may_match(ref, cand, mats):
            self.stats.extra["no_site_map"] = self.stats.extra.get("no_site_map", 0) + 1
            return False
        self.stats.fits += 1
        if anonymous:
            return bool(self.sm.fit_anonymous(ref.reduced, cand.reduced, skip_structure_reduction=True))
        return bool(self.sm.fit(ref.reduced, cand.reduced, skip_structure_reduction=True))

    @staticmethod
    def _key(p: Prepared, anonymous: bool):
        return (p.anonymous if anonymous else p.formula, p.n_sites)

    # -- public ------------------------------------------------------------
    def dedup(self, structures: Sequence, against: str = "representatives",
              anonymous: bool = False) -> np.ndarray:
        """For each item, -1 if it is new against the items before it, else the index of
        the first earlier item it matches (an earlier representative by default, any
        earlier item with ``against="all"``)."""
        if against not in ("representatives", "all"):
            raise ValidationError(f"against must be 'representatives' or 'all', not {against!r}")
        preps = self.prepare(structures)
        result = np.full(len(preps), -1, dtype=np.int64)
        buckets: dict = defaultdict(lambda: ([], []))  # key -> (indices, minima rows)
        for j, p in enumerate(preps):
            idx, mins = buckets[self._key(p, anonymous)]
            if idx:
                self.stats.pairs_in_buckets += len(idx)
                ok = self._may_match(np.asarray(mins), p.lengths)
                self.stats.pairs_prefiltered += int((~ok).sum())
                for pos in np.nonzero(ok)[0]:
                    i = idx[pos]
                    if self._fit(preps[i], p, anonymous):
                        result[j] = i
                        break
            if result[j] < 0 or against == "all":
                idx.append(j)
                mins.append(p.minima)
        return result

    def match(self, candidates: Sequence, references: Sequence, anonymous: bool = False) -> np.ndarray:
        """For each candidate, the index of the first reference it matches
        (``fit(reference, candidate)``), or -1."""
        cands = self.prepare(candidates)
        refs = self.prepare(references)
        buckets: dict = defaultdict(list)
        for r, p in enumerate(refs):
            buckets[self._key(p, anonymous)].append(r)
        mins = {k: np.array([refs[r].minima for r in v]) for k, v in buckets.items()}
        result = np.full(len(cands), -1, dtype=np.int64)
        for j, p in enumerate(cands):
            key = self._key(p, anonymous)
            idx = buckets.get(key)
            if not idx:
                continue
            self.stats.pairs_in_buckets += len(idx)
            ok = self._may_match(mins[key], p.lengths)
            self.stats.pairs_prefiltered += int((~ok).sum())
            for pos in np.nonzero(ok)[0]:
                if self._fit(refs[idx[pos]], p, anonymous):
                    result[j] = idx[pos]
                    break
        return result


def exhaustive_dedup(structures: Sequence, **params) -> np.ndarray:
    """Reference implementation: ``StructureMatcher.group_structures`` as per-item verdicts.

    Returns, like :meth:`Matcher.dedup`, -1 for a group's first member and the
    index of that first member for every other one.  Slow (all pairs); for tests
    and benchmarks.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher

    sm = StructureMatcher(**dict(MATCH_PARAMS, **params))
    structs = [as_structure(s) for s in structures]
    where = {id(s): i for i, s in enumerate(structs)}
    if len(where) != len(structs):  # the same object twice: copy so identities are distinct
        structs = [s.copy() for s in structs]
        where = {id(s): i for i, s in enumerate(structs)}
    result = np.full(len(structs), -1, dtype=np.int64)
    for group in sm.group_structures(structs):
        first = where[id(group[0])]
        for s in group[1:]:
            result[where[id(s)]] = first
    return result

