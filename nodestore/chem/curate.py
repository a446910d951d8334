"""Stable-unique-novel (S.U.N.) curation counts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nodestore.errors import ValidationError

#: E_hull thresholds always reported, eV/atom
THRESHOLDS = (0.0, 0.025, 0.1)
DEFAULT_THRESHOLD = 0.1


def sun_mask(e_hull: Sequence[float], unique: Sequence[bool], novelty: Sequence[str],
             threshold: float = DEFAULT_THRESHOLD, count_substitutions: bool = False) -> np.ndarray:
    """Per item: stable (E_hull <= threshold, NaN is not), unique and novel.

    ``novel`` means novelty class "novel"; with ``count_substitutions``,
    element substitutions of known prototypes count as novel too.
    """
    e = np.asarray(e_hull, dtype=float)
    u = np.asarray(unique, dtype=bool)
    nov = np.asarray(novelty, dtype=object)
    if not (len(e) == len(u) == len(nov)):
        raise ValidationError(f"e_hull, unique and novelty differ in length ({len(e)}, {len(u)}, {len(nov)})")
    novel = nov == "novel"
    if count_substitutions:
        novel |= nov == "substitution"
    with np.errstate(invalid="ignore"):
        stable = np.isfinite(e) & (e <= threshold + 1e-12)
    return stable & u & novel


def sun_counts(e_hull: Sequence[float], unique: Sequence[bool], novelty: Sequence[str],
               threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Counts of stable, stable-unique and S.U.N. items at ``threshold`` and at 0, 0.025, 0.1 eV/atom.

    Returns ``{"threshold": t, "total": n, "unique": ..., "novel": ..., "substitution": ...,
    "by_threshold": {t: {"stable", "stable_unique", "sun", "sun_with_substitutions"}}}``.
    """
    e = np.asarray(e_hull, dtype=float)
    u = np.asarray(unique, dtype=bool)
    nov = np.asarray(novelty, dtype=object)
    out = {
        "threshold": float(threshold),
        "total": int(len(e)),
        "unique": int(u.sum()),
        "novel": int(np.sum(nov == "novel")),
        "substitution": int(np.sum(nov == "substitution")),
        "duplicate": int(np.sum(nov == "duplicate")),
        "by_threshold": {},
    }
    for t in sorted({*THRESHOLDS, float(threshold)}):
        with np.errstate(invalid="ignore"):
            stable = np.isfinite(e) & (e <= t + 1e-12)
        out["by_threshold"][t] = {
            "stable": int(stable.sum()),
            "stable_unique": int((stable & u).sum()),
            "sun": int(sun_mask(e, u, nov, t).sum()),
            "sun_with_substitutions": int(sun_mask(e, u, nov, t, count_substitutions=True).sum()),
        }
    out.update({k: v for k, v in out["by_threshold"][float(threshold)].items()})
    return out
