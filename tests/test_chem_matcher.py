"""The matcher's verdicts equal an exhaustive StructureMatcher run, and its prefilters are safe."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from nodestore.chem import _kernels
from nodestore.chem.matcher import Matcher, exhaustive_dedup, primitive_unchanged, successive_minima
from nodestore.chem.synthetic import lips_set, perturbed, strained


@pytest.fixture(scope="module")
def structures():
    # pyxtal crystals of 8 Li-P-S compositions + copies: 0.02 A perturbations (true
    # duplicates), strains around ltol, displacements around stol, isotropic scaling
    return lips_set(240, seed=3, copy_fraction=0.25, near_misses=True, max_atoms=16)


def test_dedup_identical_to_group_structures(structures):
    m = Matcher()
    ours = m.dedup(structures)
    ref = exhaustive_dedup(structures)
    assert np.array_equal(ours, ref)
    n_dup = int((ref >= 0).sum())
    assert n_dup >= 20  # the set holds real matches...
    assert m.stats.fits < m.stats.pairs_in_buckets  # ...and the prefilter skipped pairs


def test_dedup_against_all_matches_pairwise_fit(structures):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    subset = structures[:80]
    m = Matcher()
    ours = m.dedup(subset, against="all")
    sm = StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5, primitive_cell=True, scale=True,
                          attempt_supercell=False)
    red = [sm._get_reduced_structure(s, True, True) for s in subset]
    for j in range(len(subset)):
        first = -1
        for i in range(j):
            if sm.fit(red[i], red[j], skip_structure_reduction=True):
                first = i
                break
        assert ours[j] == first


def test_prefilters_never_reject_a_lattice_mapping(structures):
    """Every pair that pymatgen can map (lattice step of fit) passes both lattice bounds,
    and every pair that fit accepts passes the site test too."""
    from pymatgen.core import Lattice

    m = Matcher()
    preps = m.prepare(structures)
    buckets = defaultdict(list)
    for i, p in enumerate(preps):
        buckets[p.formula].append(i)
    checked = mapped = fitted = 0
    for idx in buckets.values():
        for a in idx[:25]:
            for c in idx[:25]:
                if a == c:
                    continue
                pa, pc = preps[a], preps[c]
                s1, s2 = pa.reduced.copy(), pc.reduced.copy()
                r = (s2.volume / s1.volume) ** (1 / 6)
                s1.lattice = Lattice(s1.lattice.matrix * r)
                s2.lattice = Lattice(s2.lattice.matrix / r)
                pym = any(True for _ in m.sm._get_lattices(s2.lattice, s1, 1))
                checked += 1
                if pym:
                    mapped += 1
                    assert _kernels.may_map_many(pa.unit[None], pa.minima[None], pc.cell_lengths, pc.lengths,
                                                 pc.cell_angles, m._t, m._atol)[0]
                    mats = m._lattice_triples(pa, pc)
                    assert len(mats)
                    if m.sm.fit(pa.reduced, pc.reduced, skip_structure_reduction=True):
                        fitted += 1
                        assert m._sites_may_match(pa, pc, mats)
    assert checked > 500 and mapped > 20 and fitted > 10


def test_site_count_bucket_is_the_matchers_own():
    """Different reduced site counts: fit is False (no supercells), so the bucket is exact."""
    from ase.build import bulk
    from pymatgen.io.ase import AseAtomsAdaptor

    m = Matcher()
    a = AseAtomsAdaptor.get_structure(bulk("Li", "bcc", a=3.51, cubic=True))  # 2 atoms, primitive 1
    b = a.copy()
    b.translate_sites([1], [0.05, 0, 0])  # breaks the centring: primitive stays 2 atoms
    pa, pb = m.prepare([a, b])
    assert pa.n_sites == 1 and pb.n_sites == 2
    assert m.sm.fit(a, b) == (pa.n_sites == pb.n_sites)


def test_primitive_shortcut_agrees_with_pymatgen(structures):
    """Where the matcher skips pymatgen's primitive-cell search, the search finds nothing;
    and the matcher's reduction equals StructureMatcher's own, site for site."""
    from ase.build import bulk
    from pymatgen.analysis.structure_matcher import SiteOrderedIStructure
    from pymatgen.io.ase import AseAtomsAdaptor

    centred = [AseAtomsAdaptor.get_structure(bulk("Li", "bcc", a=3.51, cubic=True)),
               AseAtomsAdaptor.get_structure(bulk("Li", "bcc", a=3.51, cubic=True) * (2, 1, 1))]
    m = Matcher()
    skipped = 0
    for s in list(structures) + centred:
        nig = SiteOrderedIStructure.from_sites(s).get_reduced_structure(reduction_algo="niggli")
        prim = nig.get_primitive_structure()
        if primitive_unchanged(nig):
            skipped += 1
            assert len(prim) == len(nig)
            assert np.array_equal(prim.lattice.matrix, nig.lattice.matrix)
        ours, theirs = m._reduce(s), m.sm._get_reduced_structure(s, True, True)
        assert np.array_equal(ours.lattice.matrix, theirs.lattice.matrix)
        assert np.array_equal(ours.frac_coords, theirs.frac_coords)
        assert [str(x) for x in ours.species] == [str(x) for x in theirs.species]
    assert skipped > len(structures) // 2
    nig = [SiteOrderedIStructure.from_sites(s).get_reduced_structure(reduction_algo="niggli") for s in centred]
    assert not any(primitive_unchanged(x) for x in nig)


def test_successive_minima_exact():
    from pymatgen.core import Lattice

    rng = np.random.default_rng(0)
    for _ in range(20):
        lat = Lattice.from_parameters(*rng.uniform(3, 9, 3), *rng.uniform(60, 120, 3))
        mins = successive_minima(lat.matrix)
        # brute force over a big box
        g = np.arange(-6, 7)
        n = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
        v = n @ lat.matrix
        d = np.linalg.norm(v, axis=1)
        assert mins[0] == pytest.approx(d[d > 1e-9].min())
        assert np.all(np.diff(mins) >= -1e-12)


def test_perturbed_and_scaled_copies_match_strained_do_not():
    from nodestore.chem.hull import reference_structures
    from pymatgen.io.ase import AseAtomsAdaptor

    ref = {a.info["name"]: AseAtomsAdaptor.get_structure(a) for a in reference_structures()}
    s = ref["Li3PS4_gamma"]
    rng = np.random.default_rng(1)
    m = Matcher()
    hits = m.match([perturbed(s, 0.02, rng), strained(s, [1.05, 1.05, 1.05]), strained(s, [1.4, 1, 1])],
                   list(ref.values()))
    names = list(ref)
    assert names[hits[0]] == "Li3PS4_gamma"
    assert names[hits[1]] == "Li3PS4_gamma"
    assert hits[2] == -1


def test_fingerprint_is_a_string_column():
    from nodestore.chem.hull import reference_structures

    fps = Matcher().fingerprints(reference_structures())
    assert all(isinstance(f, str) and f.count("|") == 2 for f in fps)
    assert fps[-1].startswith("Li2S|3|")


def test_cartesian_site_test_rejects_what_fit_rejects():
    """One atom moved well beyond stol: the compiled site tests say no, and so does fit;
    a 0.02 A perturbation passes both."""
    from nodestore.chem.hull import reference_structures
    from pymatgen.io.ase import AseAtomsAdaptor

    ref = {a.info["name"]: AseAtomsAdaptor.get_structure(a) for a in reference_structures()}
    s = ref["Li3PS4_gamma"]
    moved = s.copy()
    moved.translate_sites([0], [1.2, 0.0, 0.0], frac_coords=False)
    near = perturbed(s, 0.02, np.random.default_rng(2))
    m = Matcher()
    pa, pm, pn = m.prepare([s, moved, near])
    for other, expected in ((pm, False), (pn, True)):
        mats = m._lattice_triples(pa, other)
        assert len(mats)  # the lattices map: only the sites decide
        assert bool(m.sm.fit(pa.reduced, other.reduced, skip_structure_reduction=True)) is expected
        assert m._sites_may_match(pa, other, mats) is expected


def test_dedup_with_settled_representatives_equals_the_full_run(structures):
    # the first 160 items were curated before (their representatives are settled); 80 arrive
    m = Matcher()
    prepared = m.prepare(structures)
    old = m.dedup(prepared[:160])
    settled = np.zeros(len(prepared), dtype=bool)
    settled[:160] = old < 0
    full = Matcher().dedup(prepared)
    fast = Matcher()
    assert np.array_equal(fast.dedup(prepared, settled=settled), full)
    assert (full[160:] >= 0).sum() >= 5  # the new items do duplicate earlier ones
    slow = Matcher()
    slow.dedup(prepared)
    assert fast.stats.pairs_in_buckets < slow.stats.pairs_in_buckets
    with pytest.raises(Exception, match="settled"):
        Matcher().dedup(prepared, settled=settled[:10])
