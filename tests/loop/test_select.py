"""The select stage's choice of what to label (loop.stages.choose)."""

import numpy as np

from nodestore.loop.stages import choose


def _screened(e_hull, n_atoms=None, origin=None):
    n = len(e_hull)
    return (np.array(origin or ["relaxed"] * n, dtype=object), np.array(e_hull, dtype=float),
            np.array(n_atoms or [8] * n), np.array([f"Li{i}PS4" for i in range(n)], dtype=object),
            np.array([1] * n))


def test_uncertain_pick_is_made_near_the_hull():
    # rows 0-1 lowest; row 5 is the most novel of all but 1.2 eV/atom above the hull
    cols = _screened([0.0, 0.02, 0.05, 0.2, 0.25, 1.2])
    novelty = {2: 0.1, 3: 0.5, 4: 0.3, 5: 9.0}
    p = {"n_lowest": 2, "n_diverse": 0, "n_uncertain": 1, "uncertain_max_e_hull": 0.3}
    chosen, reasons = choose(*cols, p, lambda rows: [novelty[r] for r in rows])
    assert chosen == [0, 1, 3]
    assert reasons[3] == "uncertain (highest dH, E_hull <= 0.3)"
    # without the window the far structure wins, as before
    chosen, reasons = choose(*cols, {**p, "uncertain_max_e_hull": None, "max_e_hull": None},
                             lambda rows: [novelty[r] for r in rows])
    assert chosen == [0, 1, 5] and reasons[5] == "uncertain (highest dH)"


def test_uncertain_pick_falls_back_to_all_when_none_is_near():
    cols = _screened([0.0, 0.8, 1.5])
    p = {"n_lowest": 1, "n_diverse": 0, "n_uncertain": 1, "uncertain_max_e_hull": 0.3, "max_e_hull": None}
    chosen, reasons = choose(*cols, p, lambda rows: [float(r) for r in rows])
    assert chosen == [0, 2] and reasons[2] == "uncertain (highest dH)"


def test_guarded_too_large_and_unrelaxed_rows_are_never_chosen():
    cols = _screened([np.nan, 0.0, 0.01, 0.02], n_atoms=[8, 8, 40, 8],
                     origin=["relaxed", "reference", "relaxed", "relaxed"])
    p = {"n_lowest": 3, "n_diverse": 1, "n_uncertain": 1, "max_atoms": 16}
    chosen, _ = choose(*cols, p, lambda rows: [0.0] * len(rows))
    assert chosen == [3]


def test_no_label_goes_far_above_the_hull():
    # 6 picks asked for, but only three candidates lie within 0.5 eV/atom of the screen's hull
    cols = _screened([0.0, 0.45, 0.2, 0.9, 0.51, 2.0])
    p = {"n_lowest": 3, "n_diverse": 2, "n_uncertain": 1, "uncertain_max_e_hull": None}
    chosen, _ = choose(*cols, p, lambda rows: [float(r) for r in rows])
    assert sorted(chosen) == [0, 1, 2]
    chosen, _ = choose(*cols, {**p, "max_e_hull": None}, lambda rows: [float(r) for r in rows])
    assert len(chosen) == 6
