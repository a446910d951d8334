"""The structure table: segments, manifest, reads, overlays, atomicity."""

import json
import os

import numpy as np
import pytest

from conftest import AIMD, LI3PS4_SAMPLES
from nodestore.errors import IntegrityError, SchemaError
from nodestore.frames import FrameBatch, FrameTable, as_frames
from nodestore.frames.io import read_file


@pytest.fixture
def aimd_batch():
    return as_frames(read_file(AIMD), method="vasp-pbe")


@pytest.fixture
def table(tmp_path, aimd_batch):
    t = FrameTable.create(tmp_path / "t")
    t.append(aimd_batch)
    return t


def test_round_trip_every_frame(table, aimd_batch):
    images = read_file(AIMD)
    assert len(table) == 200
    back = table.to_atoms()
    for a, b in zip(images, back):
        assert np.array_equal(a.numbers, b.numbers)
        assert np.allclose(a.positions, b.positions, atol=0)
        assert np.allclose(a.cell.array, b.cell.array, atol=0)
        assert a.get_potential_energy() == b.get_potential_energy()
        assert np.array_equal(a.get_forces(), b.get_forces())
        assert b.info["method"] == "vasp-pbe"


def test_random_access_matches_sequential(table):
    rows = np.array([199, 0, 57, 57, 3, 120])
    batch = table.read(rows)
    every = table.read()
    for j, r in enumerate(rows):
        s, e = batch.offsets[j], batch.offsets[j + 1]
        s2, e2 = every.offsets[r], every.offsets[r + 1]
        assert np.array_equal(batch["positions"][s:e], every["positions"][s2:e2])
        assert batch["frame_id"][j] == every["frame_id"][r]
        assert batch["energy"][j] == every["energy"][r]
    one = table.atoms(-1)
    assert one.info["frame_id"] == every["frame_id"][199]


def test_column_reads_do_not_touch_per_atom_arrays(table, monkeypatch):
    from nodestore.frames import segment

    calls = []
    orig = segment.Segment.atom_column
    monkeypatch.setattr(segment.Segment, "atom_column", lambda self, *a, **k: calls.append(a) or orig(self, *a, **k))
    e = table.column("energy")
    assert e.shape == (200,) and np.isfinite(e).all()
    assert calls == []
    table.read([5], columns=["positions"])
    assert len(calls) == 1


def test_append_is_new_files_only_and_dedups(tmp_path, table, aimd_batch):
    before = {p: p.stat().st_mtime_ns for p in (table.path / "segments").iterdir()}
    assert table.append(aimd_batch) is None  # every row already present
    samples = as_frames(read_file(LI3PS4_SAMPLES[1]), method="pbesol")
    seg = table.append(samples)
    after = {p: p.stat().st_mtime_ns for p in (table.path / "segments").iterdir()}
    assert all(after[p] == m for p, m in before.items())  # nothing rewritten
    assert len(after) == len(before) + 1 and seg in {p.name[:-4] for p in after}
    assert len(table) == 200 + len(samples)
    # same configuration, other method: a second row, labels keyed by method
    relabel = aimd_batch.take([0]).with_columns(method="pbesol", energy=[-1.0])
    table.append(relabel)
    assert len(table) == 200 + len(samples) + 1


def test_segment_is_content_addressed(tmp_path, aimd_batch):
    a = FrameTable.create(tmp_path / "a")
    b = FrameTable.create(tmp_path / "b")
    assert a.append(aimd_batch) == b.append(aimd_batch)


@pytest.mark.parametrize("where", ["segment", "manifest"])
def test_crash_mid_write_leaves_table_as_it_was(tmp_path, table, monkeypatch, where):
    manifest = (table.path / "manifest.json").read_text()
    segments = sorted(p.name for p in (table.path / "segments").iterdir())
    samples = as_frames(read_file(LI3PS4_SAMPLES[2]), method="pbesol")
    from nodestore.frames import segment, table as table_mod

    calls = []

    def crash_second_array(*a, **k):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("killed")
        return orig_write(*a, **k)

    def crash(*a, **k):
        raise RuntimeError("killed")

    orig_write = segment._write_array
    if where == "segment":
        monkeypatch.setattr(segment, "_write_array", crash_second_array)
    else:
        monkeypatch.setattr(table_mod, "_write_manifest", crash)
    with pytest.raises(RuntimeError):
        table.append(samples)
    assert (table.path / "manifest.json").read_text() == manifest
    assert len(FrameTable.open(table.path)) == 200
    left = sorted(p.name for p in (table.path / "segments").iterdir())
    assert not [n for n in left if n.startswith(".tmp")]
    if where == "segment":
        assert left == segments  # no half-written segment


def test_overlay_annotations(table):
    keys = table.row_keys()[:3]
    table.annotate(list(keys), {"e_hull": [0.1, 0.2, 0.3], "novelty": ["novel", "duplicate", "novel"]})
    t = FrameTable.open(table.path)
    assert np.allclose(t.column("e_hull")[:3], [0.1, 0.2, 0.3])
    assert np.isnan(t.column("e_hull")[3])
    assert list(t.read([1, 0])["novelty"]) == ["duplicate", "novel"]
    t.annotate([keys[0]], {"e_hull": [0.5]})
    assert np.allclose(FrameTable.open(table.path).column("e_hull")[:3], [0.5, 0.2, 0.3])
    with pytest.raises(Exception, match="not mutable"):
        t.annotate([keys[0]], {"energy": [1.0]})
    t.annotate([], {}, delete=[keys[1]])
    assert len(FrameTable.open(table.path)) == 199


def test_schema_checked_on_open(tmp_path, table):
    m = json.loads((table.path / "manifest.json").read_text())
    m["format_version"] = 99
    (table.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(SchemaError):
        FrameTable.open(table.path)
    m["format_version"] = 1
    m["segments"][0]["rows"] = "many"
    (table.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(SchemaError, match="rows"):
        FrameTable.open(table.path)


def test_corrupted_segment_is_reported(tmp_path, table):
    seg = table.path / "segments" / f"{table.segment_ids[0]}.zip"
    os.chmod(seg, 0o644)
    seg.write_bytes(b"not a zip")
    with pytest.raises(IntegrityError, match="corrupted"):
        FrameTable.open(table.path).column("energy")


def test_as_frames_accepts_structures_and_atoms():
    from ase.build import bulk
    from pymatgen.io.ase import AseAtomsAdaptor

    li = bulk("Li", "bcc", a=3.51)
    s = AseAtomsAdaptor.get_structure(bulk("Li2S", "fluorite", a=5.70))
    b = as_frames([li, s])
    assert list(b["formula"]) == ["Li", "Li2S"]
    assert len(set(b["frame_id"])) == 2
    assert isinstance(b, FrameBatch)
