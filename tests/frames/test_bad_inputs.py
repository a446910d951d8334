"""Defect 6 of issue 11: malformed input is one message and exit 2 (never accepted, a hang or exit 70)."""

import time

import pytest

from conftest import REFERENCE_FILES
from nodestore.errors import NodestoreError, SchemaError, ValidationError
from nodestore.frames.io import read_file

from faults.helpers import run

CIF = """data_Li
_cell_length_a 3.51
_cell_length_b 3.51
_cell_length_c 3.51
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Li1 Li 0 0 0 1
Li2 Li 0.5 0.5 0.5 1
"""

XYZ = ('2\nLattice="3.5 0 0 0 3.5 0 0 0 3.5" Properties=species:S:1:pos:R:3 {extra}pbc="T T T"\n'
       "Li 0 0 0\nLi {x} 1.75 1.75\n")


def write(tmp_path, name, text, mode="w"):
    p = tmp_path / name
    p.write_bytes(text) if isinstance(text, bytes) else p.write_text(text)
    return p


def test_a_good_cif_still_reads(tmp_path):
    (a,) = read_file(write(tmp_path, "ok.cif", CIF))
    assert len(a) == 2


@pytest.mark.parametrize("name,text,match", [
    ("neg.cif", CIF.replace("_cell_length_a 3.51", "_cell_length_a -3.51"), "positive"),
    ("huge.cif", CIF.replace("_cell_length_a 3.51", "_cell_length_a 1e308"), "beyond|positive|finite"),
    ("occ.cif", CIF.replace("0.5 0.5 0.5 1", "0.5 0.5 0.5 inf"), "occupancy"),
    ("angle.cif", CIF.replace("_cell_angle_gamma 90", "_cell_angle_gamma 0.0001"), "angle"),
    ("tiny.cif", CIF.replace("3.51", "0.01"), "long|volume"),
    ("coord.xyz", XYZ.format(extra="", x="1e308"), "beyond"),
    ("energy.xyz", XYZ.format(extra="energy= ", x="1.75"), "not a number"),
    ("count.xyz", XYZ.format(extra="", x="1.75").replace("2\n", "1000000000\n", 1), "atoms"),
    ("short.xyz", XYZ.format(extra="", x="1.75").replace("2\n", "9\n", 1), "only"),
])
def test_malformed_files_are_refused_quickly(tmp_path, name, text, match):
    t0 = time.process_time()  # CPU time: a busy machine's other processes do not count
    with pytest.raises(ValidationError, match=match):
        read_file(write(tmp_path, name, text))
    assert time.process_time() - t0 < 10


def test_a_cif_with_a_byte_order_mark_reads(tmp_path):
    (a,) = read_file(write(tmp_path, "bom.cif", b"\xef\xbb\xbf" + CIF.encode()))
    assert len(a) == 2


def test_malformed_input_through_the_cli_is_exit_2(node, tmp_path):
    bad = write(tmp_path, "energy.xyz", XYZ.format(extra="energy= ", x="1.75"))
    rc, out = run(node.path, "import", bad, "--method", "x", "-m", "x")
    assert rc == 2 and "not a number" in out, out
    for q in ("-" * 20000, "not " * 5000 + "novel", "", "   "):
        rc, out = run(node.path, "query", q)
        assert rc == 2, (q[:20], out)
    assert node.status()["clean"]


def test_a_nan_min_distance_is_refused(node):
    import yaml

    p = node.path / "params.yaml"
    doc = yaml.safe_load(p.read_text())
    doc["import"]["min_distance"] = float("nan")
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValidationError, match="min_distance"):
        node.import_files(REFERENCE_FILES, message="x")
    assert len(node.table) == 0


def test_a_node_yaml_error_names_node_yaml(node):
    import yaml

    p = node.path / "node.yaml"
    doc = yaml.safe_load(p.read_text())
    doc["system"] = ["Li", "Xx"]
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(NodestoreError, match="node.yaml"):
        node.import_files(REFERENCE_FILES, message="x")


def test_an_empty_lock_file_is_not_taken_over_while_fresh(node):
    from nodestore.errors import LockedError
    from nodestore.repo.lock import node_lock

    node.state_dir.mkdir(exist_ok=True)
    (node.state_dir / "lock").write_text("")
    with pytest.raises(LockedError):
        with node_lock(node.state_dir):
            pass
