"""PyTorch datasets over a structure table: map-style with batched fetches, and a streaming iterable.

>>> ds = table.dataset(rows)                       # torch.utils.data.Dataset of ASE Atoms
>>> for batch in ds.loader(batch_size=32, shuffle=True, num_workers=2):
...     ...                                        # a list of 32 Atoms, one table read per batch
>>> for atoms in table.iterable(rows, shuffle=True, seed=epoch):  # streaming, contiguous block reads
...     ...

A DataLoader with a batch size hands a map-style dataset the whole batch of
indices (``__getitems__``), so one batch is one ``FrameTable.read``: each chunk
the batch touches is decoded once.  Both datasets pickle as the table's path
and rows only; each worker process opens the table itself.  Items are ASE
Atoms (labels on a SinglePointCalculator, metadata in ``info``) or whatever
``transform`` makes of one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch.utils.data as tud


def collate_list(items: list) -> list:
    """A batch as a plain list (Atoms do not stack into tensors)."""
    return list(items)


def _pin(path, manifest, n_total):
    from .table import FrameTable

    t = FrameTable(Path(path), manifest) if manifest is not None else FrameTable.open(path)
    return t.manifest, (len(t) if n_total is None else n_total)


class _TableAccess:
    def _setup(self, path, rows, n_total, columns, transform, manifest):
        self.path = Path(path)
        self.manifest = manifest  # pinned: the rows mean what they meant when the dataset was made
        self.rows = np.arange(n_total, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(self.rows) and (self.rows.min() < 0 or self.rows.max() >= n_total):
            raise IndexError(f"dataset rows out of range for a table of {n_total} frames")
        self.columns = None if columns is None else list(columns)
        self.transform = transform
        self._table = None

    @property
    def table(self):
        if self._table is None:
            from .table import FrameTable

            self._table = FrameTable(self.path, self.manifest)
        return self._table

    def _fetch(self, rows: np.ndarray) -> list:
        items = self.table.read(rows, columns=self.columns).to_atoms()
        if self.transform is not None:
            items = [self.transform(a) for a in items]
        return items

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_table"] = None  # each process opens the table itself
        return state

    def __len__(self) -> int:
        return len(self.rows)


class FrameDataset(_TableAccess, tud.Dataset):
    """Map-style dataset of table rows ``rows`` (all by default)."""

    def __init__(self, path, rows: Sequence[int] | None = None, *, n_total: int | None = None,
                 columns: Sequence[str] | None = None, transform: Callable | None = None, manifest: dict | None = None):
        manifest, n_total = _pin(path, manifest, n_total)
        self._setup(path, rows, n_total, columns, transform, manifest)

    def __getitem__(self, i):
        return self._fetch(self.rows[[int(i)]])[0]

    def __getitems__(self, indices: list[int]) -> list:
        return self._fetch(self.rows[np.asarray(indices, dtype=np.int64)])

    def subset(self, positions: Sequence[int]) -> "FrameDataset":
        """The dataset of items ``positions`` of this one (same table, same pinned manifest)."""
        out = object.__new__(type(self))
        out.__dict__.update(self.__getstate__())
        out.rows = self.rows[np.asarray(positions, dtype=np.int64).reshape(-1)]
        return out

    def column(self, name: str) -> np.ndarray:
        """Per-frame column ``name`` of each item (no atoms read)."""
        return self.table.column(name)[self.rows]

    def frame_ids(self) -> np.ndarray:
        """The frame id of each item."""
        return self.column("frame_id")

    def loader(self, batch_size: int = 32, shuffle: bool = True, num_workers: int = 0, seed: int = 0,
               drop_last: bool = False, order: Sequence[int] | None = None, **kw) -> tud.DataLoader:
        """A DataLoader of lists of items: shuffled reproducibly with ``seed``, or in ``order``
        (positions in this dataset) when given."""
        import torch

        if order is not None:
            batches = tud.BatchSampler(list(order), batch_size, drop_last)
            return tud.DataLoader(self, batch_sampler=batches, num_workers=num_workers,
                                  collate_fn=collate_list, **kw)
        gen = torch.Generator()
        gen.manual_seed(seed)
        return tud.DataLoader(self, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                              collate_fn=collate_list, generator=gen, drop_last=drop_last, **kw)


class FrameIterable(_TableAccess, tud.IterableDataset):
    """Streams rows ``rows`` in blocks of ``block`` rows (contiguous reads), shuffled within a buffer.

    With ``shuffle``, the order of blocks is shuffled and items are drawn at random from a
    buffer of ``buffer`` blocks; ``set_epoch`` (or ``seed``) gives each epoch its own order.
    Workers of a DataLoader split the blocks between them: every row comes once per epoch.
    """

    def __init__(self, path, rows: Sequence[int] | None = None, *, n_total: int | None = None,
                 columns: Sequence[str] | None = None, transform: Callable | None = None,
                 shuffle: bool = False, seed: int = 0, block: int = 1024, buffer: int = 4,
                 manifest: dict | None = None):
        manifest, n_total = _pin(path, manifest, n_total)
        self._setup(path, rows, n_total, columns, transform, manifest)
        self.shuffle, self.seed, self.block, self.buffer = shuffle, seed, max(1, int(block)), max(1, int(buffer))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _blocks(self) -> list[np.ndarray]:
        rows = np.sort(self.rows) if self.shuffle else self.rows
        blocks = [rows[i:i + self.block] for i in range(0, len(rows), self.block)]
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(blocks)
        info = tud.get_worker_info()
        if info is not None:
            blocks = blocks[info.id::info.num_workers]
        return blocks

    def __iter__(self):
        info = tud.get_worker_info()
        rng = random.Random((self.seed * 1_000_003 + self.epoch) * 7919 + (info.id if info else 0) + 1)
        blocks = self._blocks()
        if not self.shuffle:
            for b in blocks:
                yield from self._fetch(b)
            return
        pool: list = []
        for b in blocks:
            pool.extend(self._fetch(b))
            if len(pool) >= self.buffer * self.block:
                rng.shuffle(pool)
                keep = len(pool) - self.block
                yield from pool[keep:]
                del pool[keep:]
        rng.shuffle(pool)
        yield from pool
