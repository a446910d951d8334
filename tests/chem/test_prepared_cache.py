"""PreparedCache: the matcher's reductions kept by frame id give exactly the verdicts of fresh ones."""

from __future__ import annotations

import numpy as np
import pytest

from nodestore.chem.matcher import Matcher, PreparedCache, exhaustive_dedup
from nodestore.chem.synthetic import lips_set


@pytest.fixture(scope="module")
def structures():
    return lips_set(60, seed=5, copy_fraction=0.3, near_misses=True, max_atoms=12)


def ids_of(structures):
    return [f"frame-{i}" for i in range(len(structures))]


def test_cached_prepared_equal_fresh_and_give_the_same_verdicts(tmp_path, structures):
    m = Matcher()
    ids = ids_of(structures)
    fresh = m.prepare(structures)
    cache = PreparedCache(tmp_path)
    loads = []
    first = cache.prepare(m, ids, lambda pos: loads.append(len(pos)) or [structures[i] for i in pos])
    assert loads == [len(structures)] and cache.misses == len(structures)
    # a new reader (another process) finds every one and loads nothing
    again = PreparedCache(tmp_path)
    got = again.prepare(m, ids, lambda pos: pytest.fail("nothing should be loaded"))
    assert again.hits == len(structures)
    for a, b in zip(fresh, got):
        assert b.reduced is None  # rebuilt only when a pair reaches fit
        assert (a.formula, a.reduced_formula, a.anonymous, a.n_sites, a.fingerprint) == \
               (b.formula, b.reduced_formula, b.anonymous, b.n_sites, b.fingerprint)
        for name in ("minima", "lengths", "unit", "frac", "species", "cell_lengths", "cell_angles", "lattice"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert b.structure() == a.reduced
    assert [p.fingerprint for p in first] == [p.fingerprint for p in fresh]
    verdict = m.dedup(got)
    assert np.array_equal(verdict, exhaustive_dedup(structures))
    assert (verdict >= 0).sum() >= 5
    assert np.array_equal(Matcher().match(got[30:], got[:30]), Matcher().match(fresh[30:], fresh[:30]))


def test_shards_merge_and_damage_is_a_miss(tmp_path, structures):
    m = Matcher()
    ids = ids_of(structures)
    cache = PreparedCache(tmp_path)
    cache.MAX_SHARDS = 3
    for lo in range(0, 50, 10):  # five writers, one shard each: merged past MAX_SHARDS
        cache.prepare(m, ids[lo:lo + 10], lambda pos, lo=lo: [structures[lo + i] for i in pos])
    assert len(list(cache.folder.glob("shard-*.npz"))) <= 3
    reader = PreparedCache(tmp_path)
    assert all(p is not None for p in reader.get(ids[:50]))
    assert reader.get(ids[50:]) == [None] * 10
    # a damaged shard is a miss, never an error
    for path in cache.folder.glob("shard-*.npz"):
        path.write_bytes(b"not a zip")
    assert PreparedCache(tmp_path).get(ids[:5]) == [None] * 5
    out = PreparedCache(tmp_path).prepare(m, ids[:5], lambda pos: [structures[i] for i in pos])
    assert [p.fingerprint for p in out] == [p.fingerprint for p in m.prepare(structures[:5])]


def test_disordered_structures_are_not_kept(tmp_path):
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(4.0), [{"Li": 0.5, "Na": 0.5}, "S"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    cache = PreparedCache(tmp_path)
    cache.prepare(Matcher(), ["x"], lambda pos: [s])
    assert PreparedCache(tmp_path).get(["x"]) == [None]
