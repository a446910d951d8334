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


def test_duplicates_after_relaxation_are_never_chosen():
    # row 0 relaxed into a reference phase, row 2 into row 1's crystal: both skipped
    cols = _screened([0.0, 0.01, 0.02, 0.05, 0.1])
    dup = np.array(["known", "", "repeat", "", ""], dtype=object)
    p = {"n_lowest": 2, "n_diverse": 0, "n_uncertain": 1, "uncertain_max_e_hull": 0.3}
    chosen, reasons = choose(*cols, p, lambda rows: [float(r) for r in rows], duplicate=dup)
    assert chosen == [1, 3, 4]
    assert reasons[1] == "lowest e_hull" and reasons[4].startswith("uncertain")


def test_relaxed_duplicates_of_the_node_and_of_each_other(stability_node):
    """On a real node: a relaxed candidate that is a reference phase (as a supercell) is "known";
    the second of two copies of one new crystal is a "repeat" of the lower one."""
    from ase.build import bulk

    from nodestore.frames import FrameBatch
    from nodestore.loop.iterate import iterate
    from nodestore.loop.stages import iter_dir, relaxed_duplicates, snapshot_table, write_table

    node = stability_node
    iterate(node)  # iteration 1 set up: iter-0's table pinned
    table = snapshot_table(node, 0)
    ref = np.nonzero(table.column("origin") == "reference")[0][0]
    known = table.to_atoms([int(ref)])[0].repeat((2, 1, 1))
    new = bulk("Li", "fcc", a=4.3)  # not among the references (the node's Li is bcc)
    moved = new.copy()
    moved.translate([0.3, 0.1, 0.2])
    images = [known, new, moved]
    for a in images:
        a.info = {"origin": "relaxed", "source": "screen@1", "spacegroup": 0}
    batch = FrameBatch.from_atoms(images, method="ff:test", iteration=1, checkpoint="")
    batch = batch.with_columns(e_hull=np.array([0.0, 0.05, 0.01]), e_form=np.zeros(3))
    write_table(iter_dir(node, 1) / "screened_test", batch)
    from nodestore.loop.stages import read_table

    dup = relaxed_duplicates(node, 1, read_table(iter_dir(node, 1) / "screened_test"))
    # the translated copy has the lower E_hull: it is kept, the other is the repeat
    assert list(dup) == ["known", "repeat", ""]
