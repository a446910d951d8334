"""The torch datasets over a table: every row once per epoch, in batches, across workers."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from nodestore.frames import FrameBatch, FrameTable
from nodestore.frames.io import read_file

pytest.importorskip("torch")

DATA = Path(__file__).resolve().parents[2] / "nodestore/data/li-p-s/labelled/lips_aimd_Li27P12S44.extxyz"


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("ds") / "table"
    images = read_file(DATA)[:90]
    t = FrameTable.create(path)
    t.append(FrameBatch.from_atoms(images[:50], method="vasp-pbe"))
    t.append(FrameBatch.from_atoms(images[50:], method="vasp-pbe"))
    return FrameTable.open(path)


def _ids(items):
    return [a.info["frame_id"] for a in items]


def test_map_dataset_items_are_the_tables_frames(table):
    rows = [3, 77, 12, 50]
    ds = table.dataset(rows)
    assert len(ds) == 4
    want = table.to_atoms(rows)
    got = [ds[i] for i in range(4)]
    assert _ids(got) == _ids(want)
    assert np.allclose(got[1].get_forces(), want[1].get_forces())
    assert got[2].get_potential_energy() == want[2].get_potential_energy()
    assert _ids(ds.__getitems__([3, 0])) == _ids([want[3], want[0]])


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_covers_every_row_once_in_shuffled_batches(table, workers):
    rows = np.arange(5, 85)
    ds = table.dataset(rows)
    loader = ds.loader(batch_size=16, shuffle=True, num_workers=workers, seed=1)
    batches = list(loader)
    assert all(isinstance(b, list) for b in batches) and len(batches) == 5
    seen = [i for b in batches for i in _ids(b)]
    ids = table.column("frame_id")
    assert sorted(seen) == sorted(ids[rows].tolist())
    assert seen != ids[rows].tolist()  # shuffled
    again = [i for b in ds.loader(batch_size=16, shuffle=True, seed=1) for i in _ids(b)]
    assert again == seen or workers  # reproducible from the seed (the worker order may interleave)


@pytest.mark.parametrize("workers", [0, 2])
def test_iterable_streams_every_row_once_per_epoch(table, workers):
    import torch.utils.data as tud

    it = table.iterable(shuffle=True, seed=3, block=16, buffer=2)
    loader = tud.DataLoader(it, batch_size=None, num_workers=workers)
    epoch0 = _ids(loader)
    ids = table.column("frame_id").tolist()
    assert sorted(epoch0) == sorted(ids) and epoch0 != ids
    it.set_epoch(1)
    epoch1 = _ids(tud.DataLoader(it, batch_size=None, num_workers=workers))
    assert sorted(epoch1) == sorted(ids) and epoch1 != epoch0
    plain = _ids(table.iterable(block=7))
    assert plain == ids


def test_datasets_pin_the_manifest_and_pickle_small(table, tmp_path):
    t = FrameTable.create(tmp_path / "t")
    t.adopt(table)
    ds = t.dataset([0, 1])
    first = _ids([ds[0], ds[1]])
    t.annotate([], {}, delete=[f"{x}@vasp-pbe" for x in first])  # the live table loses those rows
    assert len(FrameTable.open(tmp_path / "t")) == len(table) - 2
    assert _ids([ds[0], ds[1]]) == first
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000
    assert _ids([pickle.loads(blob)[1]]) == first[1:]
    with pytest.raises(IndexError):
        t.dataset([10_000])


def test_transform_and_columns(table):
    ds = table.dataset([0, 1], columns=["numbers", "positions", "cell", "pbc", "energy"],
                       transform=lambda a: (len(a), a.get_potential_energy()))
    n, e = ds[1]
    assert n == 83 and np.isfinite(e)
