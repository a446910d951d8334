"""Fixtures of the loop's analyses."""

import pytest

from conftest import REFERENCE_FILES
from test_loop import tiny_params


@pytest.fixture
def stability_node(tmp_path):
    from ase.build import bulk
    from ase.io import write

    from nodestore.loop import create_node
    from nodestore.loop.actions import label_references

    params = tiny_params()
    params["forcefield"] = {"backend": "pair"}
    node = create_node("Li-P-S", tmp_path / "n", reference_method="lj-s2-e0.05", params=params)
    li = tmp_path / "Li.cif"
    write(str(li), [bulk("Li", "bcc", a=3.44, cubic=True)])
    node.import_files([*REFERENCE_FILES, li], origin="reference", message="references")
    label_references(node)
    return node
