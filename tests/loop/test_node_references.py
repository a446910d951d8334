"""The node's reference phases are its own labelled reference frames: a phase left out of them
is unknown to the screen's hull as well as to novelty."""

import numpy as np

from nodestore.chem.hull import reference_structures
from nodestore.loop import create_node
from nodestore.loop.actions import label_files, node_references

from test_loop import LJ, tiny_params


def _node_without_li2s(tmp_path):
    node = create_node("Li-P-S", tmp_path / "n", reference_method=LJ, params=tiny_params())
    refs = [a for a in reference_structures(node.system) if a.info["name"] != "Li2S_antifluorite"]
    for a in refs:
        a.info["source"] = a.info["name"]
    r = label_files(node, [], images=refs, origin="reference", message="references without Li2S")
    assert r.labelled == len(refs) == 6
    return node


def test_node_references_are_the_labelled_reference_frames(tmp_path):
    fresh = create_node("Li-P-S", tmp_path / "fresh", reference_method=LJ)
    assert len(node_references(fresh, fresh.table)) == len(reference_structures(fresh.system)) == 7
    node = _node_without_li2s(tmp_path)
    refs = node_references(node, node.table)
    formulas = {a.get_chemical_formula("metal", empirical=True) for a in refs}
    assert len(refs) == 6 and "Li2S" not in formulas and {"Li", "P", "S", "Li3P", "Li3PS4"} <= formulas
    assert all(a.calc is None and a.info["origin"] == "reference" for a in refs)


def test_screen_builds_its_hull_on_the_node_references(tmp_path):
    from nodestore.loop import stages
    from nodestore.loop.iterate import iterate

    node = _node_without_li2s(tmp_path)
    iterate(node)
    stages.generate(node, 1)
    stages.screen(node, 1)
    screened = stages.read_table(stages.iter_dir(node, 1) / "screened")
    ref_rows = np.nonzero(screened.column("origin") == "reference")[0]
    formulas = sorted(screened.column("formula")[ref_rows].tolist())
    assert len(ref_rows) == 6 and not any(f in ("Li2S", "Li4S2", "Li8S4") for f in formulas)
