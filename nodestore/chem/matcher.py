"""Structure matching without comparing all pairs, with the verdicts of an exhaustive run.

The verdict of every pair is pymatgen's ``StructureMatcher.fit`` (ltol 0.2,
stol 0.3, angle_tol 5, primitive_cell, scale, no supercells).  What is new is
*which* pairs reach it.  A pair is only handed to ``fit`` when it passes six
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
4. **A lattice mapping.**  The bases of ``a``'s lattice that
   ``Lattice.find_all_mappings`` and ``_get_lattices`` would accept (lengths
   within ``ltol``, angles within ``angle_tol`` of ``b``'s cell, unimodular),
   enumerated completely.  None: ``fit`` is False.
5. **Sites, fractional.**  For each such basis, ``_cmp_fstruct`` with the
   translations ``_strict_match`` tries and its tolerance from the averaged
   lattice.
6. **Sites, Cartesian.**  ``_cart_dists`` accepts only if the displacements of
   the assigned sites, minus their mean, are all shorter than
   ``stol * (V/n)^(1/3)``: so some rigid translation must bring every site of
   ``b`` that close to a same-species site of ``a``.  A branch-and-bound over
   translations proves when none exists (undecided counts as "may match").

Tests 3-6 are compiled (:mod:`nodestore.chem._kernels`) and run for a candidate
against its whole bucket at once; only pairs that pass all of them reach
``fit``, which alone can say "match".  Each structure is reduced once, by the
matcher's own steps (Niggli, then ``get_primitive_structure``); the primitive
search is skipped only where :func:`primitive_unchanged` proves it finds nothing.

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
#: relative slack on every tolerance, far above float rounding
_SLACK = 1e-6
#: most lattice mappings kept for the site test (more: the pair goes to pymatgen)
_MAX_MAPS = 512
#: species label -> small int, shared by every Prepared of this process
_SPECIES: dict[str, int] = {}


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
    from nodestore.chem import _kernels

    return _kernels.successive_minima(np.ascontiguousarray(matrix, dtype=float))


def primitive_unchanged(structure, tolerance: float = 0.25) -> bool:
    """True only if ``structure.get_primitive_structure(tolerance)`` is sure to return a
    copy of ``structure``: then the matcher's reduction can skip pymatgen's search.

    pymatgen looks for a smaller cell among sublattices of index ``2..num_fu``
    (``num_fu``: gcd of the species counts).  Each needs every row ``r`` of its
    inverse supercell matrix -- one of them with a component at least ``1/num_fu``
    away from an integer -- within ``ftol = tolerance / abc`` of a translation ``v``
    that maps every species group onto itself within ``2 ftol`` (its ``min_vecs``).
    If every such ``v`` (found here with slack, so a superset) is within ``2 ftol``
    of a lattice vector and ``3 ftol < 1/num_fu``, no row can qualify and no smaller
    cell is possible.  ``num_fu == 1`` leaves nothing to try at all.  Anything else
    returns False, and pymatgen does the search.
    """
    from functools import reduce
    from math import gcd

    labels = [site.species_string for site in structure]
    groups: dict[str, list[int]] = {}
    for i in sorted(range(len(labels)), key=labels.__getitem__):
        groups.setdefault(labels[i], []).append(i)
    num_fu = reduce(gcd, (len(g) for g in groups.values()))
    if num_fu == 1:
        return True
    ftol = tolerance / np.asarray(structure.lattice.abc)
    if np.any(3 * ftol * (1 + _SLACK) >= 1 / num_fu):
        return False
    tol2 = 2 * ftol * (1 + _SLACK)
    fc = np.asarray(structure.frac_coords)
    grouped = [fc[g] for g in groups.values()]
    smallest = min(grouped, key=len)
    vecs = smallest - smallest[0]
    alive = np.ones(len(vecs), dtype=bool)
    for g in grouped:  # v survives if it maps each site of g close to some site of g
        d = vecs[:, None, None, :] - (g[None, :, :] - g[:, None, :])[None]  # (v, site, other, 3)
        d -= np.round(d)
        alive &= np.all(np.abs(d) <= tol2, axis=-1).any(axis=2).all(axis=1)
        if not alive.any():
            break
    v = vecs[alive] - np.round(vecs[alive])
    return bool(np.all(np.abs(v) <= tol2))


def composition_key(comp) -> str:
    """A string equal for two compositions exactly when ``SpeciesComparator.get_hash`` (their
    fractional compositions) are equal: the reduced composition, species by species.  A string
    (unlike the Composition the comparator returns) can be stored and compared exactly."""
    red = comp.reduced_composition
    return " ".join(f"{sp}:{float(red[sp])!r}" for sp in sorted(red, key=str))


@dataclass
class Prepared:
    """One structure as the matcher sees it: reduced once, with its invariants."""

    reduced: object  # pymatgen Structure, Niggli + primitive, as StructureMatcher makes it (None: see structure())
    formula: str  # the comparator's hash as a string: see composition_key
    reduced_formula: str
    anonymous: str  # anonymized formula
    n_sites: int
    minima: np.ndarray  # successive minima at unit cell volume
    lengths: np.ndarray  # sorted cell lengths of the reduced cell at unit volume
    unit: np.ndarray = None  # reduced cell (rows) scaled to unit volume
    frac: np.ndarray = None  # fractional coordinates of the reduced structure
    species: np.ndarray = None  # species code of each site (the comparator's notion)
    cell_lengths: np.ndarray = None  # a, b, c of ``unit`` (cell order)
    cell_angles: np.ndarray = None  # alpha, beta, gamma of ``unit`` (degrees)
    lattice: np.ndarray = None  # the reduced cell at its own scale (rows)
    site_species: tuple = None  # species symbol of each site of the reduced structure

    def structure(self):
        """The reduced structure; built from the cached arrays on first use when it was read
        from a :class:`PreparedCache` (only pairs that reach ``fit`` need it)."""
        if self.reduced is None:
            from pymatgen.core import Lattice, Structure

            self.reduced = Structure(Lattice(self.lattice), list(self.site_species), self.frac)
        return self.reduced

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
    pairs_prefiltered: int = 0  # of those, rejected by a lattice test (bound or mapping)
    fits: int = 0  # calls to StructureMatcher
    extra: dict = field(default_factory=dict)

    def count(self, key: str, n: int = 1) -> None:
        self.extra[key] = self.extra.get(key, 0) + n


class _Bucket:
    """The comparable members of one (formula, site count) key, with their cells
    packed for the compiled lattice test."""

    def __init__(self):
        self.members: list[int] = []
        self.units = np.empty((8, 3, 3))
        self.minima = np.empty((8, 3))

    def add(self, i: int, p: Prepared) -> None:
        n = len(self.members)
        if n == len(self.units):
            self.units = np.concatenate([self.units, np.empty_like(self.units)])
            self.minima = np.concatenate([self.minima, np.empty_like(self.minima)])
        self.units[n] = p.unit
        self.minima[n] = p.minima
        self.members.append(i)


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
        self._t = (1 + ltol) * (1 + _SLACK)
        self._atol = angle_tol + 1e-6
        self.stats = MatchStats()

    # -- preparation -----------------------------------------------------
    def _reduce(self, s):
        """``StructureMatcher._get_reduced_structure(s, primitive_cell, niggli=True)``,
        the same steps without its LRU cache (each structure is reduced once here)."""
        from pymatgen.analysis.structure_matcher import SiteOrderedIStructure
        from pymatgen.core import Structure

        reduced = SiteOrderedIStructure.from_sites(s).get_reduced_structure(reduction_algo="niggli")
        if self.params["primitive_cell"] and not primitive_unchanged(reduced):
            reduced = reduced.get_primitive_structure()
        return Structure.from_sites(reduced)

    def prepare(self, structures: Sequence) -> list[Prepared]:
        """Reduce each structure once, exactly as the matcher would, and take its invariants."""
        from nodestore.chem import _kernels

        out = []
        for obj in structures:
            if isinstance(obj, Prepared):
                out.append(obj)
                continue
            red = self._reduce(as_structure(obj))
            comp = red.composition
            lat = red.lattice.matrix
            m = np.ascontiguousarray(lat / abs(np.linalg.det(lat)) ** (1 / 3))
            cell_lengths = np.linalg.norm(m, axis=1)
            codes = np.array([_SPECIES.setdefault(str(sp), len(_SPECIES)) for sp in red.species_and_occu],
                             dtype=np.int64)
            out.append(Prepared(
                reduced=red,
                formula=composition_key(comp),
                reduced_formula=comp.reduced_formula,
                anonymous=comp.anonymized_formula,
                n_sites=len(red),
                minima=_kernels.successive_minima(m),
                lengths=np.sort(cell_lengths),
                unit=m,
                frac=np.ascontiguousarray(red.frac_coords, dtype=float),
                species=codes,
                cell_lengths=cell_lengths,
                cell_angles=np.array(red.lattice.angles),
                lattice=np.array(lat, dtype=float),
                site_species=tuple(str(sp) for sp in red.species) if red.is_ordered else None,
            ))
        return out

    def fingerprints(self, structures: Sequence) -> list[str]:
        return [p.fingerprint for p in self.prepare(structures)]

    # -- the pair tests ----------------------------------------------------
    def _lattice_triples(self, ref: Prepared, cand: Prepared) -> np.ndarray | None:
        """Integer matrices ``F`` (rows: bases of ``ref``'s lattice) with the lengths and
        angles of ``cand``'s cell, as ``Lattice.find_all_mappings`` + the unimodular test of
        ``_get_lattices`` would find them -- a superset, thanks to a small slack.  None if
        there are more than ``_MAX_MAPS`` (then the pair is not judged here)."""
        from nodestore.chem import _kernels

        out = np.empty((_MAX_MAPS, 3, 3), dtype=np.int64)
        n = _kernels.lattice_maps(ref.unit, cand.cell_lengths, cand.cell_angles, self._t, self._atol, False, out)
        return None if n < 0 else out[:n]

    def _sites_may_match(self, ref: Prepared, cand: Prepared, mats: np.ndarray) -> bool:
        """The site test of ``_strict_match`` (``_cmp_fstruct``: every site of ``cand``
        within the fractional tolerance of a same-species site of ``ref``, for one of the
        translations pymatgen tries), over all lattice mappings at once, with slack."""
        from nodestore.chem import _kernels

        return bool(_kernels.sites_may_match(ref.unit, ref.frac, ref.species, cand.cell_lengths, cand.cell_angles,
                                             cand.frac, cand.species, mats, self.params["stol"], True))

    def _candidates(self, bucket: _Bucket, cand: Prepared) -> np.ndarray:
        """Positions in ``bucket`` whose lattice may map onto ``cand``'s (bound + mapping)."""
        from nodestore.chem import _kernels

        n = len(bucket.members)
        ok = _kernels.may_map_many(bucket.units[:n], bucket.minima[:n], cand.cell_lengths, cand.lengths,
                                   cand.cell_angles, self._t, self._atol)
        self.stats.pairs_in_buckets += n
        self.stats.pairs_prefiltered += int(n - ok.sum())
        return np.nonzero(ok)[0]

    def _fit(self, ref: Prepared, cand: Prepared, anonymous: bool) -> bool:
        if not anonymous:
            mats = self._lattice_triples(ref, cand)
            if mats is not None and not self._sites_may_match(ref, cand, mats):
                self.stats.count("no_site_map")
                return False
        self.stats.fits += 1
        if anonymous:
            ok = self.sm.fit_anonymous(ref.structure(), cand.structure(), skip_structure_reduction=True)
        else:
            ok = self.sm.fit(ref.structure(), cand.structure(), skip_structure_reduction=True)
        if not ok:
            self.stats.count("fit_false")
        return bool(ok)

    @staticmethod
    def _key(p: Prepared, anonymous: bool):
        return (p.anonymous if anonymous else p.formula, p.n_sites)

    # -- public ------------------------------------------------------------
    def dedup(self, structures: Sequence, against: str = "representatives",
              anonymous: bool = False, settled=None) -> np.ndarray:
        """For each item, -1 if it is new against the items before it, else the index of
        the first earlier item it matches (an earlier representative by default, any
        earlier item with ``against="all"``).

        ``settled`` (a boolean per item, representatives only): items already known to match
        none of each other, such as a node's entries from its last curation.  A settled item
        is then compared only with the earlier items that are not settled, so adding a few
        items to a large curated set costs time linear in the set, not quadratic; the verdicts
        are those of the full run whenever the settled items indeed match none of each other.
        """
        if against not in ("representatives", "all"):
            raise ValidationError(f"against must be 'representatives' or 'all', not {against!r}")
        preps = self.prepare(structures)
        settled = np.zeros(len(preps), dtype=bool) if settled is None else np.asarray(settled, dtype=bool)
        if len(settled) != len(preps) or (settled.any() and against != "representatives"):
            raise ValidationError("settled needs one flag per item, and against='representatives'")
        result = np.full(len(preps), -1, dtype=np.int64)
        buckets: dict = defaultdict(_Bucket)  # every representative so far
        fresh: dict = defaultdict(_Bucket)  # the representatives so far that are not settled
        for j, p in enumerate(preps):
            key = self._key(p, anonymous)
            bucket = (fresh if settled[j] else buckets)[key]
            if bucket.members:
                for pos in self._candidates(bucket, p):
                    i = bucket.members[pos]
                    if self._fit(preps[i], p, anonymous):
                        result[j] = i
                        break
            if result[j] < 0 or against == "all":
                buckets[key].add(j, p)
                if not settled[j]:
                    fresh[key].add(j, p)
        return result

    def match(self, candidates: Sequence, references: Sequence, anonymous: bool = False) -> np.ndarray:
        """For each candidate, the index of the first reference it matches
        (``fit(reference, candidate)``), or -1."""
        cands = self.prepare(candidates)
        refs = self.prepare(references)
        buckets: dict = defaultdict(_Bucket)
        for r, p in enumerate(refs):
            buckets[self._key(p, anonymous)].add(r, p)
        result = np.full(len(cands), -1, dtype=np.int64)
        for j, p in enumerate(cands):
            bucket = buckets.get(self._key(p, anonymous))
            if bucket is None:
                continue
            for pos in self._candidates(bucket, p):
                r = bucket.members[pos]
                if self._fit(refs[r], p, anonymous):
                    result[j] = r
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



class PreparedCache:
    """Prepared structures kept on disk, keyed by frame id.

    A frame id is a content hash of the geometry, and the reduction depends on nothing else, so
    a node's entries are reduced once, not again in every stage that matches against them (a
    screen against the node's entries, a curation of the node).  The folder holds shards
    (``shard-*.npz``, written whole and renamed into place, so readers never see a half-written
    one); a reader that finds an id here gets back exactly what :meth:`Matcher.prepare` made,
    and the reduced structure itself is rebuilt only for pairs that reach ``fit``.  Disordered
    structures are not kept.  Many shards are merged into one now and then.

    >>> cache = PreparedCache(node.state_dir / "cache" / "prepared")
    >>> known = cache.prepare(matcher, frame_ids, lambda missing: table.structures(rows[missing]))
    """

    MAX_SHARDS = 16

    def __init__(self, folder):
        from pathlib import Path

        import pymatgen.core

        ver = getattr(pymatgen.core, "__version__", "0")
        self.folder = Path(folder) / f"v1-pymatgen{ver}-prim{int(MATCH_PARAMS['primitive_cell'])}"
        self._index: dict[str, tuple[dict, int]] | None = None
        self.hits = self.misses = 0

    # -- reading ---------------------------------------------------------
    def _shards(self):
        return sorted(self.folder.glob("shard-*.npz")) if self.folder.is_dir() else []

    @staticmethod
    def _read_shard(path) -> dict | None:
        try:
            with np.load(path, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError, EOFError):
            return None  # a cache: a shard merged away (or damaged) meanwhile is just a miss
        d["offsets"] = np.concatenate([[0], np.cumsum(d["n_sites"])])
        return d

    def _load(self) -> dict:
        if self._index is None:
            self._index = {}
            for path in self._shards():
                d = self._read_shard(path)
                if d is not None:
                    for i, fid in enumerate(d["ids"].tolist()):
                        self._index[fid] = (d, i)
        return self._index

    def get(self, frame_ids: Sequence[str]) -> list[Prepared | None]:
        index = self._load()
        out = []
        for fid in frame_ids:
            hit = index.get(str(fid))
            out.append(None if hit is None else self._prepared(*hit))
        n = sum(p is not None for p in out)
        self.hits += n
        self.misses += len(out) - n
        return out

    @staticmethod
    def _prepared(d: dict, i: int) -> Prepared:
        a, b = d["offsets"][i], d["offsets"][i + 1]
        keys = d["species_key"][a:b].tolist()
        codes = np.array([_SPECIES.setdefault(k, len(_SPECIES)) for k in keys], dtype=np.int64)
        unit = d["unit"][i]
        cell_lengths = np.linalg.norm(unit, axis=1)
        return Prepared(reduced=None, formula=str(d["formula"][i]), reduced_formula=str(d["reduced_formula"][i]),
                        anonymous=str(d["anonymous"][i]), n_sites=int(d["n_sites"][i]), minima=d["minima"][i],
                        lengths=np.sort(cell_lengths), unit=np.ascontiguousarray(unit),
                        frac=np.ascontiguousarray(d["frac"][a:b]), species=codes, cell_lengths=cell_lengths,
                        cell_angles=d["cell_angles"][i], lattice=d["lattice"][i],
                        site_species=tuple(d["site_species"][a:b].tolist()))

    # -- writing ---------------------------------------------------------
    def put(self, frame_ids: Sequence[str], prepared: Sequence[Prepared]) -> int:
        """Keep these (ids not yet here, ordered structures only); returns how many were written."""
        index = self._load()
        seen, rows = set(), []
        for fid, p in zip(frame_ids, prepared):
            fid = str(fid)
            if fid and fid not in index and fid not in seen and p.site_species is not None and p.lattice is not None:
                seen.add(fid)
                rows.append((fid, p))
        if not rows:
            return 0
        self._write(self._arrays(rows))
        self._index = None
        if len(self._shards()) > self.MAX_SHARDS:
            self.compact()
        return len(rows)

    @staticmethod
    def _arrays(rows: list) -> dict:
        inv = {v: k for k, v in _SPECIES.items()}
        return {
            "ids": np.array([f for f, _ in rows]),
            "n_sites": np.array([p.n_sites for _, p in rows], dtype=np.int64),
            "formula": np.array([p.formula for _, p in rows]),
            "reduced_formula": np.array([p.reduced_formula for _, p in rows]),
            "anonymous": np.array([p.anonymous for _, p in rows]),
            "minima": np.array([p.minima for _, p in rows], dtype=float),
            "unit": np.array([p.unit for _, p in rows], dtype=float),
            "cell_angles": np.array([p.cell_angles for _, p in rows], dtype=float),
            "lattice": np.array([p.lattice for _, p in rows], dtype=float),
            "frac": np.concatenate([p.frac for _, p in rows]).astype(float),
            "site_species": np.array([s for _, p in rows for s in p.site_species]),
            "species_key": np.array([inv[int(c)] for _, p in rows for c in p.species]),
        }

    def _write(self, arrays: dict) -> None:
        import os
        import uuid

        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"shard-{uuid.uuid4().hex}"
        tmp = self.folder / f".{name}.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, self.folder / f"{name}.npz")

    def compact(self) -> None:
        """Merge every shard into one (written before the old ones go; an id kept twice, by two
        writers at once, is kept once)."""
        shards = self._shards()
        self._index = None
        index = self._load()
        if len(shards) > 1 and index:
            self._write(self._arrays([(fid, self._prepared(*hit)) for fid, hit in index.items()]))
            for path in shards:
                path.unlink(missing_ok=True)
        self._index = None

    # -- the usual call --------------------------------------------------
    def prepare(self, matcher: "Matcher", frame_ids: Sequence[str], load) -> list[Prepared]:
        """Prepared structures of ``frame_ids``: from here where kept, else ``matcher.prepare``
        of ``load(positions)`` (the structures at those positions of ``frame_ids``), kept for
        next time."""
        got = self.get(frame_ids)
        missing = [i for i, p in enumerate(got) if p is None]
        if missing:
            fresh = matcher.prepare(load(np.array(missing, dtype=np.int64)))
            for i, p in zip(missing, fresh):
                got[i] = p
            self.put([frame_ids[i] for i in missing], fresh)
        return got

