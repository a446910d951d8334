"""Compile the numba kernels the loop uses once, at set-up, instead of in a loop stage.

The matcher's pair tests (:mod:`nodestore.chem._kernels`) and QUESTS' descriptor and
kernel sums are numba functions with ``cache=True``: the first process that calls them
compiles them (about 20 s on 2 cores) and writes the machine code next to their source,
where every later process loads it in milliseconds.  On a fresh clone that first call
would fall inside a timed loop stage (select, curate), so ``scripts/setup.sh`` runs
``python -m nodestore.chem.precompile`` after installing.

Each function is called with the argument types the loop passes (float64 descriptors,
int64 species codes), which is what numba keys its cache on.
"""

from __future__ import annotations

import sys
import time


def _cells():
    """Two 8-atom Li2S antifluorite cells, the second one slightly displaced."""
    import numpy as np
    from ase.build import bulk

    a = bulk("Li2S", "fluorite", a=5.7, cubic=False) * (2, 1, 1)
    b = a.copy()
    b.positions += np.random.default_rng(0).normal(0.0, 0.01, b.positions.shape)
    return a, b


def precompile() -> float:
    """Call every compiled kernel of the matcher and of the entropy once; returns seconds."""
    t0 = time.perf_counter()
    from nodestore.chem.entropy import delta_entropy_of, descriptors, diversity_of, entropy_of
    from nodestore.chem.matcher import Matcher

    a, b = _cells()
    result = Matcher().dedup([a, b])  # successive minima, lattice bound and maps, site tests
    if result[1] != 0:
        raise RuntimeError("precompile: a displaced copy did not match its original")
    x, _ = descriptors([a, b])
    entropy_of(x)
    diversity_of(x)
    delta_entropy_of(x[:2], x[2:])
    return time.perf_counter() - t0


def main() -> int:
    seconds = precompile()
    print(f"numba kernels compiled or loaded from cache in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
