"""``nodestore motifs`` on a node: the census per iteration and the motifs new to the node."""

import subprocess
import sys

import pytest

from nodestore.errors import ValidationError


def test_census_of_the_reference_phases_and_a_new_motif(tmp_path, data_dir):
    from ase.io import write

    from nodestore.loop.actions import motifs_report
    from nodestore.repo import Node

    from chem.test_motifs import _p2s6_pp

    node = Node.init("Li-P-S", tmp_path / "n")
    refs = sorted((data_dir / "structures").glob("*.cif")) + sorted((data_dir / "structures").glob("*.json"))
    node.import_files(refs, origin="reference", message="refs")
    with pytest.raises(ValidationError, match="no curated entries"):
        motifs_report(node)
    # a frame of iteration 1 holding a unit no reference phase has
    write(tmp_path / "p2s6.extxyz", _p2s6_pp())
    node.import_files([tmp_path / "p2s6.extxyz"], message="a P2S6 unit", iteration=1)
    r = motifs_report(node, all_rows=True)
    it0, it1 = r["iterations"]
    assert it0["counts"]["PS4"] == 6 and it0["counts"]["S8 ring"] == 16 and it0["counts"]["P (phosphide)"] == 2
    assert it0["new"] == []
    assert it1 == {"iteration": 1, "counts": {"P2S6 (P-P bonded)": 1}, "new": ["P2S6 (P-P bonded)"]}


def test_cli_without_entries_is_one_message(tmp_path):
    from nodestore.repo import Node

    Node.init("Li-P-S", tmp_path / "n")
    r = subprocess.run([sys.executable, "-m", "nodestore", "-C", str(tmp_path / "n"), "motifs"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no curated entries" in r.stderr and "Traceback" not in r.stderr


def test_motif_columns_in_query_and_the_cli(tmp_path, data_dir):
    import json

    from nodestore.loop.query import select_rows
    from nodestore.repo import Node

    node = Node.init("Li-P-S", tmp_path / "n")
    refs = sorted((data_dir / "structures").glob("*.cif")) + sorted((data_dir / "structures").glob("*.json"))
    node.import_files(refs, origin="reference", message="refs")
    t = node.table
    formula = t.column("formula").astype(str)
    rows = select_rows(t, "motif_ps4 > 0", node=node)
    assert sorted(formula[rows]) == ["Li3PS4", "Li3PS4"]  # beta (4 units per cell) and gamma (2)
    rows = select_rows(t, "motifs == 'PS4 x2'", node=node)
    assert list(formula[rows]) == ["Li3PS4"] and t.column("n_atoms")[rows[0]] == 16  # gamma, Pmn2_1
    assert list(formula[select_rows(t, "motif_p > 0 or motif_s > 0", node=node)]) == ["Li3P"]
    r = subprocess.run([sys.executable, "-m", "nodestore", "-C", str(node.path), "query", "motif_ps4 >= 4",
                        "--format", "json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    (rec,) = json.loads(r.stdout)
    assert rec["motif_ps4"] == 4.0 and rec["formula"] == "Li3PS4"
