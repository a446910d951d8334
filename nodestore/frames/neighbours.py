"""Neighbour lists: matscipy's C code for periodic cells, ASE's otherwise (same interface as ASE's
``neighbor_list``: quantities ``i j d D S``, a global cutoff or one radius per atom).

The relaxation's collapse guard, the generator's distance check and the pair force field call
this once per structure and step; matscipy is about 50x faster than ASE's numpy code on the small
cells of a screen (matscipy comes with sevenn; without it, ASE's is used).
"""

from __future__ import annotations

import numpy as np


def neighbour_list(quantities: str, atoms, cutoff):
    """``quantities`` (e.g. ``"ijd"``) of every ordered pair closer than ``cutoff`` (images included).

    ``cutoff``: one distance, or one radius per atom (pairs closer than ``r_i + r_j``).
    """
    if atoms.pbc.all() and abs(atoms.cell.volume) > 1e-9:
        try:
            from matscipy.neighbours import neighbour_list as fast
        except ImportError:  # pragma: no cover - matscipy is a dependency of sevenn
            fast = None
        if fast is not None:
            cut = cutoff if np.isscalar(cutoff) else np.asarray(cutoff, dtype=float)
            return fast(quantities, atoms, cut)
    from ase.neighborlist import neighbor_list

    return neighbor_list(quantities, atoms, cutoff)
