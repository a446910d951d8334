"""Immutable, content-addressed segments: one Zarr v3 group zipped into one file.

A segment is written once to a temporary directory, zipped (stored, not
deflated: the Zarr codecs already compress), fsynced and renamed to
``<sha256-prefix>.zip``.  One file per segment keeps DVC fast (it slows down
with many small files) and makes the rename the single atomic step.

Layout (written since layout 2; layout-1 segments, 8192-atom zstd chunks, read
the same way):

* per-atom columns are sharded: one shard holds up to ``ATOM_SHARD`` atoms in
  inner chunks of ``ATOM_CHUNK`` atoms, so that a random frame decodes about
  one small chunk per column;
* per-frame columns are one chunk each (``FRAME_CHUNK`` rows);
* numeric chunks are Blosc-zstd with byte shuffle (about 9 % smaller than
  plain zstd on float64 positions and forces); strings are vlen-utf8 + zstd.

Reads go through :mod:`nodestore.frames.chunks`, which decodes the chunks a
selection needs straight from the mapped file, and fall back to
``zarr.storage.ZipStore`` for any layout it does not know.  Per-frame columns
of a segment are cached per process (segments never change): a training epoch
reads them once.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from nodestore.errors import IntegrityError, SchemaError

from .batch import FrameBatch
from .columns import BY_NAME, COLUMNS, FORMAT_VERSION

ATOM_CHUNK = 1024  # atoms per inner chunk of a per-atom column
ATOM_SHARD = ATOM_CHUNK * 4096  # atoms per shard (one shard for any usual segment)
FRAME_CHUNK = 65536  # rows per chunk of a per-frame column
LAYOUT = 2
SEGMENT_SUFFIX = ".zip"
FRAME_CACHE_BYTES = 512 * 2**20  # per-process cache of per-frame columns
#: what a damaged chunk raises while it is read or decoded
_READ_ERRORS = (zipfile.BadZipFile, ValueError, RuntimeError, struct.error)


def content_hash(batch: FrameBatch, kind: str = "frames") -> str:
    h = hashlib.sha256(f"nodestore-segment:{kind}:{FORMAT_VERSION}".encode())
    h.update(batch.offsets.tobytes())
    for name in sorted(batch.columns):
        arr = batch.columns[name]
        h.update(name.encode() + b"\0")
        if arr.dtype == object:
            h.update("\0".join(arr.tolist()).encode())
        else:
            h.update(str(arr.dtype).encode())
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:32]


def write_segment(directory: Path, batch: FrameBatch, kind: str = "frames", extra: dict | None = None) -> str:
    """Write ``batch`` as a segment under ``directory``; return its id.

    Writing a segment that already exists is a no-op (content addressing).
    """
    import zarr
    from zarr.storage import MemoryStore

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "frames":
        batch = batch.complete()
    seg_id = content_hash(batch, kind)
    final = directory / f"{seg_id}{SEGMENT_SUFFIX}"
    if final.exists():
        return seg_id
    buffers: dict = {}
    store = MemoryStore(buffers)
    group = zarr.open_group(store, mode="w", zarr_format=3)
    group.attrs.update(
        {"nodestore": {"format_version": FORMAT_VERSION, "layout": LAYOUT, "kind": kind, "rows": len(batch),
                       "atoms": batch.n_atoms, **(extra or {})}}
    )
    _write_array(group, "offsets", batch.offsets, per_atom=False)
    for name, arr in batch.columns.items():
        col = BY_NAME.get(name)
        _write_array(group, name, arr, per_atom=col is not None and col.per_atom)
    fd, tmpzip = tempfile.mkstemp(prefix=".tmp-seg-", suffix=SEGMENT_SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
                for key in sorted(buffers):
                    zf.writestr(key, buffers[key].to_bytes())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmpzip, final)
    except BaseException:
        if os.path.exists(tmpzip):
            os.unlink(tmpzip)
        raise
    _fsync_dir(directory)
    return seg_id


def _write_array(group, name: str, arr: np.ndarray, per_atom: bool) -> None:
    from zarr.codecs import BloscCodec

    n = max(len(arr), 1)
    rest = arr.shape[1:]
    kw: dict = {}
    if arr.dtype == object:
        dtype = str
    else:
        dtype = arr.dtype
        kw["compressors"] = [BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")]
    inner = ATOM_CHUNK * (16 if _small_per_atom(arr.dtype, rest) else 1)
    if per_atom and n > inner:
        shard = min(-(-n // inner) * inner, ATOM_SHARD)
        kw["chunks"], kw["shards"] = (inner, *rest), (shard, *rest)
    else:
        kw["chunks"] = (min(ATOM_CHUNK if per_atom else FRAME_CHUNK, n), *rest)
    z = group.create_array(name, shape=arr.shape, dtype=dtype, **kw)
    if len(arr):
        z[...] = arr


def _small_per_atom(dtype: np.dtype, rest: tuple) -> bool:
    """A per-atom column of one byte per atom (atomic numbers): read whole and cached like a
    per-frame column, so it is stored in larger chunks."""
    return dtype != object and dtype.itemsize * int(np.prod(rest, dtype=np.int64)) <= 1


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Segment:
    """Read access to one segment; per-frame columns are cached on first read."""

    def __init__(self, path: Path):
        from .chunks import ZipArrays

        self.path = Path(path)
        self.id = self.path.name[: -len(SEGMENT_SUFFIX)]
        if not self.path.exists():
            raise IntegrityError(f"segment {self.id} is missing ({self.path}); run `nodestore pull` or `dvc checkout`")
        self._group = None
        try:
            self._arrays = ZipArrays(self.path)
            root = self._arrays.json("zarr.json")
            if root is None or root.get("node_type") != "group":
                raise KeyError("no zarr group at the root")
            meta = root.get("attributes", {})["nodestore"]
        except (zipfile.BadZipFile, KeyError, ValueError, OSError, struct.error) as exc:
            raise IntegrityError(f"segment {self.id} is unreadable or corrupted: {exc}") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise SchemaError(
                f"segment {self.id} has format version {meta.get('format_version')}, "
                f"this nodestore reads version {FORMAT_VERSION}"
            )
        self.meta = meta
        self.kind = meta["kind"]
        self.rows = int(meta["rows"])
        self._names = self._arrays.names()
        st = self.path.stat()
        self._cache_key = (str(self.path.resolve()), st.st_size, st.st_mtime_ns)

    @property
    def group(self):
        """The segment as a read-only zarr group (the general, slower path)."""
        if self._group is None:
            import zarr
            from zarr.storage import ZipStore

            self._store = ZipStore(self.path, mode="r")
            self._group = zarr.open_group(self._store, mode="r", zarr_format=3)
        return self._group

    def names(self) -> list[str]:
        return list(self._names)

    @property
    def offsets(self) -> np.ndarray:
        return self.frame_column("offsets")

    def _read_whole(self, name: str) -> np.ndarray:
        fast = self._arrays.array(name)
        try:
            arr = fast.read_all() if fast is not None else self.group[name][...]
        except _READ_ERRORS as exc:
            raise IntegrityError(f"segment {self.id}: column {name} is unreadable: {exc}") from None
        if arr.dtype.kind in "UT" or arr.dtype == object:
            arr = np.asarray(arr, dtype=object)
        return arr

    def frame_column(self, name: str) -> np.ndarray:
        """A whole per-frame column (cached per process: segments never change)."""
        key = (*self._cache_key, name)
        arr = _FRAME_CACHE.get(key)
        if arr is None:
            if name in self._names:
                arr = self._read_whole(name)
            else:
                arr = BY_NAME[name].empty(self.rows)
            arr.setflags(write=False)
            _FRAME_CACHE.put(key, arr)
        return arr

    def atom_column(self, name: str, atom_idx: np.ndarray | slice) -> np.ndarray:
        """Rows of a per-atom column; each chunk the selection touches is decoded once."""
        fast = self._arrays.array(name)
        if fast is not None and _small_per_atom(fast.dtype, fast.shape[1:]):
            return self.frame_column(name)[atom_idx]  # one byte per atom: the whole column is cached
        if fast is None:
            return self._atom_column_zarr(name, atom_idx)
        if isinstance(atom_idx, slice):
            atom_idx = np.arange(fast.shape[0])[atom_idx]
        try:
            return fast.take(atom_idx)
        except _READ_ERRORS as exc:
            raise IntegrityError(f"segment {self.id}: column {name} is unreadable: {exc}") from None

    def _atom_column_zarr(self, name: str, atom_idx) -> np.ndarray:
        arr = self.group[name]
        if isinstance(atom_idx, slice):
            return arr[atom_idx]
        if len(atom_idx) == 0:
            return np.zeros((0, *arr.shape[1:]), dtype=arr.dtype)
        lo, hi = int(atom_idx[0]), int(atom_idx[-1]) + 1
        if hi - lo == len(atom_idx):  # contiguous: a plain slice is cheapest
            return arr[lo:hi]
        return arr.get_orthogonal_selection((atom_idx,) + (slice(None),) * (arr.ndim - 1))

    def verify(self) -> None:
        """Raise IntegrityError unless the file's content hashes to its name."""
        batch = self.read_all()
        if content_hash(batch, self.kind) != self.id:
            raise IntegrityError(f"segment {self.id} does not match its content hash (corrupted)")

    def read_all(self) -> FrameBatch:
        cols = {}
        for name in self.names():
            if name == "offsets":
                continue
            col = BY_NAME.get(name)
            if col is not None and col.per_atom:
                cols[name] = self._read_whole(name)
            else:
                cols[name] = self.frame_column(name)
        if self.kind != "frames":
            return OverlayBatch(cols, self.rows)
        return FrameBatch(cols, self.offsets)

    def close(self) -> None:
        self._arrays.close()
        if self._group is not None:
            try:
                self._store.close()
            except Exception:
                pass
            self._group = None


class _LRU:
    """A byte-bounded least-recently-used cache of read-only arrays."""

    def __init__(self, budget: int):
        from collections import OrderedDict

        self.budget, self.used = budget, 0
        self._d: OrderedDict = OrderedDict()

    @staticmethod
    def _size(arr: np.ndarray) -> int:
        return arr.nbytes + (64 * arr.size if arr.dtype == object else 0)

    def get(self, key):
        arr = self._d.get(key)
        if arr is not None:
            self._d.move_to_end(key)
        return arr

    def put(self, key, arr: np.ndarray) -> None:
        size = self._size(arr)
        if size > self.budget:
            return
        old = self._d.pop(key, None)
        if old is not None:
            self.used -= self._size(old)
        self._d[key] = arr
        self.used += size
        while self.used > self.budget:
            _, dropped = self._d.popitem(last=False)
            self.used -= self._size(dropped)

    def clear(self) -> None:
        self._d.clear()
        self.used = 0


_FRAME_CACHE = _LRU(FRAME_CACHE_BYTES)


def clear_cache() -> None:
    """Forget the cached per-frame columns of every segment (benchmarks time cold reads with it)."""
    _FRAME_CACHE.clear()


class OverlayBatch(FrameBatch):
    """Per-frame columns keyed by row key, no atoms: an overlay's content."""

    def __init__(self, columns: dict[str, np.ndarray], n: int | None = None):
        if n is None:
            n = len(next(iter(columns.values()))) if columns else 0
        self.offsets = np.zeros(n + 1, dtype=np.int64)
        self.columns = columns


def columns_known() -> set[str]:
    return {c.name for c in COLUMNS}
