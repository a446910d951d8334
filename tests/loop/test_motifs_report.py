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
