"""Novelty classes of new structures: duplicate, substitution or novel; chemical validity.

* ``duplicate``: matches (StructureMatcher, species kept) a known structure --
  a node entry or a reference phase -- or an earlier structure of the same batch;
* ``substitution``: not a duplicate, but matches a known prototype once
  elements are relabelled (anonymous matching: Li3AsS4 in the Li3PS4 cell);
* ``novel``: neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .matcher import Matcher

CLASSES = ("duplicate", "substitution", "novel")


@dataclass
class Novelty:
    """Per structure: its class and what it matched.

    ``known_match[i]``: index into ``known`` of the structure it duplicates (-1);
    ``batch_match[i]``: index of the earlier batch item it duplicates (-1);
    ``prototype[i]``: index into ``prototypes`` of the substitution prototype (-1).
    """

    classes: list[str]
    known_match: np.ndarray
    batch_match: np.ndarray
    prototype: np.ndarray

    def counts(self) -> dict[str, int]:
        return {c: self.classes.count(c) for c in CLASSES}


def classify(structures: Sequence, known: Sequence = (), prototypes: Sequence | None = None,
             matcher: Matcher | None = None, dedup_batch: bool = True) -> Novelty:
    """Classify each structure against ``known`` (and earlier items of the batch).

    ``prototypes`` (default: ``known``) are the structures an element
    substitution is checked against.
    """
    m = matcher or Matcher()
    cands = m.prepare(structures)
    known_p = m.prepare(known)
    protos = known_p if prototypes is None else m.prepare(prototypes)
    n = len(cands)
    known_match = m.match(cands, known_p) if known_p else np.full(n, -1, dtype=np.int64)
    batch_match = np.full(n, -1, dtype=np.int64)
    if dedup_batch:
        rest = np.nonzero(known_match < 0)[0]
        sub = m.dedup([cands[i] for i in rest])
        for pos, hit in enumerate(sub):
            if hit >= 0:
                batch_match[rest[pos]] = rest[hit]
    dup = (known_match >= 0) | (batch_match >= 0)
    prototype = np.full(n, -1, dtype=np.int64)
    todo = np.nonzero(~dup)[0]
    if len(todo) and protos:
        hits = m.match([cands[i] for i in todo], protos, anonymous=True)
        prototype[todo] = hits
    classes = ["duplicate" if dup[i] else "substitution" if prototype[i] >= 0 else "novel" for i in range(n)]
    return Novelty(classes, known_match, batch_match, prototype)


def chemically_valid(things: Sequence) -> np.ndarray:
    """SMACT validity (charge neutrality with common oxidation states, and the
    Pauling electronegativity test) of each composition / structure / Atoms.

    Pure elements count as valid (SMACT treats them as metals/alloys).
    """
    import warnings

    from smact.screening import smact_validity

    from .hull import _composition

    out = np.zeros(len(things), dtype=bool)
    cache: dict[str, bool] = {}
    for i, thing in enumerate(things):
        comp = _composition(thing)
        key = comp.reduced_formula
        if key not in cache:
            if len(comp.elements) == 1:
                cache[key] = True
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    cache[key] = bool(smact_validity(comp.reduced_composition))
        out[i] = cache[key]
    return out
