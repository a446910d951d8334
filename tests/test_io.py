"""Formats in and out, and validation of every imported frame."""

import json

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from conftest import AIMD, REFERENCE_FILES
from nodestore.errors import ValidationError
from nodestore.frames import as_frames
from nodestore.frames.io import read_file, write_frames
from nodestore.frames.validate import Rules, validate_batch

LIPS = Rules(elements=frozenset({"Li", "P", "S"}), min_distance=0.5)


def labelled_li2s():
    a = bulk("Li2S", "fluorite", a=5.70)
    a.rattle(0.02, seed=1)
    a.calc = SinglePointCalculator(a, energy=-12.5, forces=np.full((len(a), 3), 0.1),
                                   stress=np.array([0.01, 0.02, 0.03, 0.0, 0.0, 0.001]))
    return a


def test_reference_structures_read():
    names = {p.name: read_file(p) for p in REFERENCE_FILES}
    assert len(names) == 5
    formulas = {n: as_frames(v)["formula"][0] for n, v in names.items()}
    assert formulas["Li3PS4_beta_Pnma_mp-985583.json"] == "Li3PS4"
    assert formulas["S_alpha_Fddd.cif"] == "S"
    for imgs in names.values():
        validate_batch(as_frames(imgs), LIPS)


@pytest.mark.parametrize("fmt,name", [("extxyz", "x.extxyz"), ("vasp", "POSCAR"), ("ase-db", "x.db")])
def test_formats_round_trip(tmp_path, fmt, name):
    a = labelled_li2s()
    path = tmp_path / name
    if fmt == "ase-db":
        from ase.db import connect

        with connect(str(path)) as db:
            db.write(a)
    else:
        write(str(path), a, format="extxyz" if fmt == "extxyz" else "vasp")
    (b,) = read_file(path)
    assert np.allclose(a.positions, b.positions, atol=1e-6)
    if fmt != "vasp":
        assert b.get_potential_energy() == pytest.approx(-12.5)
        assert np.allclose(b.get_forces(), 0.1)
        assert np.allclose(b.get_stress(), a.get_stress())


def test_pymatgen_computed_entry(tmp_path):
    from pymatgen.entries.computed_entries import ComputedStructureEntry
    from pymatgen.io.ase import AseAtomsAdaptor

    s = AseAtomsAdaptor.get_structure(bulk("Li", "bcc", a=3.51))
    e = ComputedStructureEntry(s, -1.9)
    p = tmp_path / "entries.json"
    p.write_text(json.dumps([e.as_dict(), s.as_dict()]))
    a, b = read_file(p)
    assert a.get_potential_energy() == pytest.approx(-1.9)
    assert b.calc is None


def test_export_formats(tmp_path):
    batch = as_frames(read_file(AIMD)[:3], method="vasp-pbe")
    for fmt in ("extxyz", "cif", "csv", "json"):
        out = tmp_path / f"out.{fmt}"
        write_frames(batch, out, fmt)
        assert out.stat().st_size > 0
    back = read_file(tmp_path / "out.extxyz")
    assert [a.get_potential_energy() for a in back] == list(batch["energy"])
    rows = json.loads((tmp_path / "out.json").read_text())
    assert rows[0]["method"] == "vasp-pbe" and rows[0]["formula"] == "Li27P12S44"
    assert len(read_file(tmp_path / "out.cif")) == 3


def test_broken_cif_is_one_clear_error(tmp_path):
    bad = tmp_path / "broken.cif"
    bad.write_text("data_x\n_cell_length_a 3\nloop_\n_atom_site_label\n")
    with pytest.raises(ValidationError, match="broken.cif"):
        read_file(bad)


@pytest.mark.parametrize("labels, what", [
    ({"energy": float("nan")}, "energy"),
    ({"energy": float("inf"), "forces": np.zeros((2, 3))}, "energy"),
    ({"energy": -3.0, "forces": np.full((2, 3), np.nan)}, "forces"),
])
def test_non_finite_labels_in_a_file_are_refused(tmp_path, labels, what):
    # NaN means "not labelled" inside the table: a file's NaN energy must not slip in as an unlabelled frame
    a = bulk("Li", "bcc", a=3.51, cubic=True)
    a.calc = SinglePointCalculator(a, **labels)
    write(str(tmp_path / "nan.extxyz"), [bulk("Li", "bcc", a=3.51), a], format="extxyz")
    with pytest.raises(ValidationError, match=f"nan.extxyz frame 1: {what} is not a finite number"):
        read_file(tmp_path / "nan.extxyz")


def test_unknown_format(tmp_path):
    p = tmp_path / "x.pdfx"
    p.write_text("hello")
    with pytest.raises(ValidationError, match="unknown structure format"):
        read_file(p)


def bad_batches():
    li = bulk("Li", "bcc", a=3.51)
    na = bulk("Na", "bcc", a=4.2)
    close = bulk("Li2S", "fluorite", a=5.70)
    close.positions[1] = close.positions[0] + [0.1, 0, 0]
    flat = li.copy()
    flat.cell[2] = [0, 0, 0]
    nan_e = li.copy()
    nan_e.calc = SinglePointCalculator(nan_e, energy=float("nan"), forces=np.zeros((1, 3)))
    nan_f = li.copy()
    nan_f.calc = SinglePointCalculator(nan_f, energy=-1.0, forces=np.array([[np.nan, 0, 0]]))
    return {"outside the node": na, "apart": close, "volume": flat, "energy is not": nan_e, "forces contain": nan_f}


@pytest.mark.parametrize("what", list(bad_batches()))
def test_validation_rejects(what):
    atoms = bad_batches()[what]
    with pytest.raises(ValidationError, match=what):
        validate_batch(as_frames([atoms]), LIPS, names=["file.xyz frame 0"])
