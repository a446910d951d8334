"""Branch, merge (by content and structural equivalence) and extend, on real Li-P-S data."""

import json

import numpy as np
import pytest
import yaml
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from conftest import AIMD, STRUCTURES
from nodestore.errors import MergeConflict
from nodestore.frames.io import read_file
from nodestore.repo import Node


def write_frames(path, images):
    write(str(path), images, format="extxyz")
    return path


def snapshot(node):
    files = {}
    for rel in ("node.yaml", "data/table/manifest.json", "data/table.dvc", "models.dvc", "models/current.json"):
        p = node.path / rel
        files[rel] = p.read_text() if p.exists() else None
    return str(node.git.head.target), files


def test_merge_is_union_with_overlap_once(node, tmp_path):
    images = read_file(AIMD)
    node.import_files([STRUCTURES / "Li3P_P63mmc.cif"], message="base")
    node.branch("a")
    node.import_files([write_frames(tmp_path / "late.xyz", images[80:])], method="vasp-pbe", message="frames 80-199")
    node.checkout("a")
    node.import_files([write_frames(tmp_path / "early.xyz", images[:120])], method="vasp-pbe", message="frames 0-119")
    node.checkout("main")
    r = node.merge("a")
    assert r["result"] == "merged"
    assert r["rows_on_both_sides"] == 40 and r["rows_from_theirs"] == 80
    t = Node.open(node.path).table
    ids = t.column("frame_id")
    assert len(t) == 201 and len(set(ids)) == 201
    merged = Node.open(node.path)
    commit = merged.git.head.peel()
    assert len(commit.parents) == 2
    assert merged.status()["clean"]
    e = dict(zip(t.column("frame_id"), t.column("energy")))
    batch = __import__("nodestore").as_frames(images)
    for fid, en in zip(batch["frame_id"], batch["energy"]):
        assert e[fid] == en
    rec = json.loads((node.path / "data/merges.json").read_text())[-1]
    assert rec["merged"] == "a" and len(rec["segments_from_theirs"]) == 1
    # merging again is a no-op
    assert node.merge("a")["result"] == "up-to-date"


def test_fast_forward(node):
    node.branch("b")
    node.checkout("b")
    node.import_files([STRUCTURES / "Li3P_P63mmc.cif"], message="on b")
    node.checkout("main")
    assert len(node.table) == 0
    r = node.merge("b")
    assert r["result"] == "fast-forward" and len(Node.open(node.path).table) == 1
    assert node.git.head.shorthand == "main"


def perturbed_entry(seed, energy_per_atom):
    (a,) = read_file(STRUCTURES / "Li3PS4_beta_Pnma_mp-985583.json")
    a.rattle(0.01, seed=seed)
    a.calc = SinglePointCalculator(a, energy=energy_per_atom * len(a))
    return a


def mark_entries(node):
    t = node.table
    keys = t.row_keys()
    t.annotate(list(keys), {"is_entry": [True] * len(keys)})
    node.commit("curate")


def test_same_crystal_on_both_sides_is_one_entry(node, tmp_path):
    node.branch("a")
    node.import_files([write_frames(tmp_path / "m.xyz", [perturbed_entry(1, -4.10)])], method="vasp-pbe", message="main finds it")
    mark_entries(node)
    node.checkout("a")
    node.import_files([write_frames(tmp_path / "a.xyz", [perturbed_entry(2, -4.15)])], method="vasp-pbe", message="a finds it")
    mark_entries(node)
    node.checkout("main")
    r = node.merge("a")
    assert r["entries_linked"] == 1
    t = Node.open(node.path).table
    assert len(t) == 2  # both frames kept: frames are never dropped for resembling each other
    entry = t.column("is_entry")
    dup = t.column("duplicate_of")
    e = t.column("energy") / t.column("n_atoms")
    assert entry.sum() == 1
    rep = int(np.nonzero(entry)[0][0])
    assert e[rep] == pytest.approx(-4.15)  # the lower-energy frame represents the crystal
    other = 1 - rep
    assert dup[other] == t.column("frame_id")[rep]


def test_label_conflict_stops_then_prefer_resolves(node, tmp_path):
    images = read_file(AIMD)[:5]
    node.branch("relabel")
    node.import_files([write_frames(tmp_path / "x.xyz", images)], method="vasp-pbe", message="5 frames")
    node.checkout("relabel")
    changed = [a.copy() for a in images[:2]]
    for a, src in zip(changed, images[:2]):
        a.calc = SinglePointCalculator(a, energy=src.get_potential_energy() + 0.5, forces=src.get_forces())
    other = [a.copy() for a in images[:1]]
    other[0].calc = SinglePointCalculator(other[0], energy=-1.0)
    node.import_files([write_frames(tmp_path / "y.xyz", changed)], method="vasp-pbe", message="relabelled")
    node.import_files([write_frames(tmp_path / "z.xyz", other)], method="pbesol", message="other method")
    node.checkout("main")
    before = snapshot(node)
    with pytest.raises(MergeConflict, match="2 conflict") as exc:
        node.merge("relabel")
    assert len(exc.value.conflicts) == 2
    assert snapshot(node) == before  # same HEAD, same files
    r = node.merge("relabel", prefer="theirs")
    assert r["conflicts_resolved"] == 2
    t = Node.open(node.path).table
    energies = dict(zip(t.row_keys(), t.column("energy")))
    batch = __import__("nodestore").as_frames(images)
    k0 = f"{batch['frame_id'][0]}@vasp-pbe"
    assert energies[k0] == pytest.approx(batch["energy"][0] + 0.5)
    assert f"{batch['frame_id'][0]}@pbesol" in energies  # labels of another method are kept beside
    assert len(t) == 5 + 1


def add_checkpoint(node, tmp_path, name, value):
    d = tmp_path / name
    d.mkdir()
    (d / "meta.json").write_text(json.dumps({"kind": "forcefield", "backend": "test", "value": value}))
    (d / "weights.bin").write_bytes(bytes([value]) * 64)
    node.add_checkpoint(d, "forcefield")
    node.commit(f"checkpoint {name}")


def test_checkpoint_changed_on_both_sides_is_a_conflict(node, tmp_path):
    node.branch("a")
    add_checkpoint(node, tmp_path, "ours", 1)
    node.checkout("a")
    add_checkpoint(node, tmp_path, "theirs", 2)
    node.checkout("main")
    before = snapshot(node)
    with pytest.raises(MergeConflict, match="checkpoint conflict on forcefield"):
        node.merge("a")
    assert snapshot(node) == before
    r = node.merge("a", prefer="ours")
    cur = json.loads((node.path / "models/current.json").read_text())
    models = {m["id"] for m in node.list_checkpoints()}
    assert len(models) == 2 and cur["forcefield"] in models
    assert r["result"] == "merged"


def test_extend_carries_frames_checkpoints_and_lineage(node, tmp_path):
    node.import_files([AIMD], method="vasp-pbe", message="aimd")
    add_checkpoint(node, tmp_path, "ff", 3)
    new = node.extend("Cl", tmp_path / "Cl-Li-P-S")
    assert new.system == ["Cl", "Li", "P", "S"]
    assert len(new.table) == 200
    assert [m["id"] for m in new.list_checkpoints()] == [m["id"] for m in node.list_checkpoints()]
    ext = new.config["lineage"][-1]
    assert ext["event"] == "extend" and ext["parent_node"] == node.config["node_id"]
    assert ext["parent_commit"] == str(node.git.head.target) and ext["added_elements"] == ["Cl"]
    assert new.status()["clean"]
    # Cl is now accepted
    from ase.build import bulk

    licl = tmp_path / "LiCl.xyz"
    write(str(licl), bulk("LiCl", "rocksalt", a=5.13), format="extxyz")
    assert new.import_files([licl], message="LiCl")["new"] == 1


def test_merge_of_larger_system_makes_union(node, tmp_path):
    node.branch("cl")
    node.checkout("cl")
    cfg = yaml.safe_load((node.path / "node.yaml").read_text())
    cfg["system"] = ["Cl", "Li", "P", "S"]
    (node.path / "node.yaml").write_text(yaml.safe_dump(cfg))
    node.commit("add Cl")
    node.checkout("main")
    node.import_files([STRUCTURES / "Li3P_P63mmc.cif"], message="diverge")
    node.merge("cl")
    assert Node.open(node.path).system == ["Cl", "Li", "P", "S"]


def test_merge_across_schema_versions_is_refused(node, tmp_path):
    from nodestore.errors import SchemaError
    from nodestore.repo import git

    node.import_files([STRUCTURES / "Li3P_P63mmc.cif"], message="base")
    node.branch("future")
    node.import_files([STRUCTURES / "P_black_Cmce.cif"], message="on main")
    node.checkout("future")
    # a commit written by a later nodestore: node.yaml at schema version 2
    cfg = yaml.safe_load((node.path / "node.yaml").read_text())
    cfg["schema_version"] = 2
    (node.path / "node.yaml").write_text(yaml.safe_dump(cfg))
    git.commit(node.git, "node.yaml at schema version 2")
    node.checkout("main")
    before = snapshot(node)
    with pytest.raises(SchemaError, match="cannot merge across schema versions: ours is 1, theirs is 2"):
        node.merge("future")
    assert snapshot(node) == before
