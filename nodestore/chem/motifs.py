"""The polyanion census: the connected clusters of non-alkali atoms (P-S, P-P and S-S bonds in
Li-P-S) of a structure, each given a canonical label.

Bonds: two non-alkali atoms closer than ``factor`` x the sum of their covalent radii (ASE's
``covalent_radii``; P-S bonds are 2.0-2.1 A, the cutoff 1.2 x 2.12 = 2.54 A).  Clusters are the
connected components of that graph over the periodic crystal; a component that reaches its own
periodic image is polymeric (a chain, layer or framework).  Known thiophosphate units get their
usual names (PS4, P2S7 corner-sharing, P2S6 with a P-P bond, P2S6 edge-sharing, the (PS3)3 trimer,
the P2S8 and P3S8 rings, (PS4)n chains, S-S bonded units); any other cluster is named by its
composition and the Weisfeiler-Lehman hash of its bond graph, so that the same unit gets the same
name wherever it appears.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

ALKALI = frozenset({"H", "Li", "Na", "K", "Rb", "Cs", "Fr", "Be", "Mg", "Ca", "Sr", "Ba", "Ra"})


@dataclass(frozen=True)
class Cluster:
    label: str
    formula: str
    atoms: tuple[int, ...]
    polymeric: bool
    bonds: tuple[tuple[str, str, int], ...] = field(default=())  # (element, element, count)


def _formula(symbols) -> str:
    c = Counter(symbols)
    order = sorted(c, key=lambda e: (e != "P", e))  # the cation first, as the literature writes PS4
    return "".join(f"{e}{'' if c[e] == 1 else c[e]}" for e in order)


def clusters(atoms, factor: float = 1.2, alkali=ALKALI) -> list[Cluster]:
    """The clusters of non-alkali atoms of ``atoms`` (an ASE Atoms), each labelled."""
    import networkx as nx
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    symbols = atoms.get_chemical_symbols()
    keep = np.array([s not in alkali for s in symbols])
    if not keep.any():
        return []
    cut = factor * covalent_radii[atoms.numbers]
    i, j, S = neighbor_list("ijS", atoms, cut * keep + 1e-9)  # alkali atoms: no bond
    ok = keep[i] & keep[j]
    i, j, S = i[ok], j[ok], S[ok]
    adj: dict[int, list[tuple[int, np.ndarray]]] = {a: [] for a in np.nonzero(keep)[0].tolist()}
    for a, b, s in zip(i.tolist(), j.tolist(), S):
        adj[a].append((b, s))
    seen: dict[int, np.ndarray] = {}
    out = []
    for start in adj:
        if start in seen:
            continue
        seen[start] = np.zeros(3, dtype=int)
        comp, stack, periodic = [start], [start], False
        while stack:
            a = stack.pop()
            for b, s in adj[a]:
                img = seen[a] + s
                if b not in seen:
                    seen[b] = img
                    comp.append(b)
                    stack.append(b)
                elif not np.array_equal(seen[b], img):
                    periodic = True  # reaches its own periodic image
        g = nx.Graph()
        for a in comp:
            g.add_node(a, el=symbols[a])
        for a in comp:
            for b, s in adj[a]:
                if a < b or (a == b):
                    g.add_edge(a, b)
        out.append(_label(g, sorted(comp), [symbols[a] for a in sorted(comp)], periodic))
    return out


def _label(g, comp, syms, periodic) -> Cluster:
    import networkx as nx

    formula = _formula(syms)
    el = nx.get_node_attributes(g, "el")
    bonds = Counter(tuple(sorted((el[a], el[b]))) for a, b in g.edges() if a != b)
    bond_t = tuple(sorted((a, b, n) for (a, b), n in bonds.items()))
    n_pp, n_ss = bonds.get(("P", "P"), 0), bonds.get(("S", "S"), 0)
    c = Counter(syms)
    p, s = c.get("P", 0), c.get("S", 0)
    only_ps = set(c) <= {"P", "S"}
    label = None
    if periodic:
        if only_ps and p and s == 3 * p and not n_pp and not n_ss:
            label = "(PS3)n chain"  # corner-sharing PS4 tetrahedra: each P has 2 bridging S
        elif only_ps and p and all(g.degree(a) == 4 for a in comp if el[a] == "P") and not n_pp:
            label = "(PS4)n polymer"
        else:
            label = f"polymeric {_key(g, formula)}"
    elif only_ps:
        if p == 0:
            label = ("S" if s == 1 else "S2 (disulfide)" if s == 2 else
                     f"S{s} ring" if _ring(g, s) else f"S{s} (polysulfide)")
        elif p == 1 and s == 0:
            label = "P (phosphide)"
        elif p == 1 and s == 4 and not n_ss:
            label = "PS4"
        elif p == 1 and s == 3 and not n_ss:
            label = "PS3"
        elif p == 2 and s == 7 and not n_pp and not n_ss:
            label = "P2S7 (corner-sharing)"
        elif p == 2 and s == 6 and n_pp == 1 and not n_ss:
            label = "P2S6 (P-P bonded)"
        elif p == 2 and s == 6 and not n_pp and not n_ss:
            label = "P2S6 (edge-sharing)"
        elif p == 3 and s == 9 and not n_pp and not n_ss and _ring(g, 6):
            label = "(PS3)3 trimer"
        elif p == 2 and s == 8 and n_ss and not n_pp:
            label = "P2S8 ring"
        elif p == 3 and s == 8:
            label = "P3S8 ring"
        elif p and n_ss and not n_pp:
            label = f"{formula} (S-S bonded)"
    if label is None:
        label = _key(g, formula)
    return Cluster(label=label, formula=formula, atoms=tuple(comp), polymeric=periodic, bonds=bond_t)


def _ring(g, size: int) -> bool:
    import networkx as nx

    return any(len(c) == size for c in nx.cycle_basis(g))


def _key(g, formula: str) -> str:
    import networkx as nx

    h = nx.weisfeiler_lehman_graph_hash(g, node_attr="el", iterations=3)
    return f"{formula}#{h[:6]}"


def census(atoms, factor: float = 1.2) -> Counter:
    """The motif multiset of one structure: label -> count in the cell."""
    return Counter(c.label for c in clusters(atoms, factor=factor))


def motif_string(counts: Counter) -> str:
    """A multiset as one string, e.g. ``"PS4 x4"`` or ``"P2S6 (P-P bonded) x2; S x1"``."""
    return "; ".join(f"{k} x{v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
