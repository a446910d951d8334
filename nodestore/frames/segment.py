"""Immutable, content-addressed segments: one Zarr v3 group zipped into one file.

A segment is written once to a temporary directory, zipped (stored, not
deflated: the Zarr codecs already compress), fsynced and renamed to
``<sha256-prefix>.zip``.  Readers open it through ``zarr.storage.ZipStore``.
One file per segment keeps DVC fast (it slows down with many small files) and
makes the rename the single atomic step.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from nodestore.errors import IntegrityError, SchemaError

from .batch import FrameBatch
from .columns import BY_NAME, COLUMNS, FORMAT_VERSION

ATOM_CHUNK = 8192
FRAME_CHUNK = 4096
SEGMENT_SUFFIX = ".zip"


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
        {"nodestore": {"format_version": FORMAT_VERSION, "kind": kind, "rows": len(batch),
                       "atoms": batch.n_atoms, **(extra or {})}}
    )
    _write_array(group, "offsets", batch.offsets, FRAME_CHUNK)
    for name, arr in batch.columns.items():
        col = BY_NAME.get(name)
        chunk = ATOM_CHUNK if (col is not None and col.per_atom) else FRAME_CHUNK
        _write_array(group, name, arr, chunk)
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


def _write_array(group, name: str, arr: np.ndarray, chunk: int) -> None:
    n = max(len(arr), 1)
    chunks = (min(chunk, n), *arr.shape[1:])
    dtype = str if arr.dtype == object else arr.dtype
    z = group.create_array(name, shape=arr.shape, chunks=chunks, dtype=dtype)
    if len(arr):
        z[...] = arr


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
        import zarr
        from zarr.storage import ZipStore

        self.path = Path(path)
        self.id = self.path.name[: -len(SEGMENT_SUFFIX)]
        if not self.path.exists():
            raise IntegrityError(f"segment {self.id} is missing ({self.path}); run `nodestore pull` or `dvc checkout`")
        try:
            self._store = ZipStore(self.path, mode="r")
            self.group = zarr.open_group(self._store, mode="r", zarr_format=3)
            meta = self.group.attrs["nodestore"]
        except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
            raise IntegrityError(f"segment {self.id} is unreadable or corrupted: {exc}") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise SchemaError(
                f"segment {self.id} has format version {meta.get('format_version')}, "
                f"this nodestore reads version {FORMAT_VERSION}"
            )
        self.meta = meta
        self.kind = meta["kind"]
        self.rows = int(meta["rows"])
        self._cache: dict[str, np.ndarray] = {}

    def names(self) -> list[str]:
        return [k for k in self.group.array_keys()]

    @property
    def offsets(self) -> np.ndarray:
        return self.frame_column("offsets")

    def frame_column(self, name: str) -> np.ndarray:
        """A whole per-frame column (cached: they are small)."""
        if name not in self._cache:
            if name in self.group:
                arr = self.group[name][...]
                if arr.dtype.kind in "UT" or arr.dtype == object:
                    arr = np.asarray(arr, dtype=object)
            else:
                col = BY_NAME[name]
                arr = col.empty(self.rows)
            self._cache[name] = arr
        return self._cache[name]

    def atom_column(self, name: str, atom_idx: np.ndarray | slice) -> np.ndarray:
        """Rows of a per-atom column, in one batched read (each chunk decoded once)."""
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
                cols[name] = self.group[name][...]
            else:
                cols[name] = self.frame_column(name)
        if self.kind != "frames":
            return OverlayBatch(cols, self.rows)
        return FrameBatch(cols, self.offsets)

    def close(self) -> None:
        try:
            self._store.close()
        except Exception:
            pass


class OverlayBatch(FrameBatch):
    """Per-frame columns keyed by row key, no atoms: an overlay's content."""

    def __init__(self, columns: dict[str, np.ndarray], n: int | None = None):
        if n is None:
            n = len(next(iter(columns.values()))) if columns else 0
        self.offsets = np.zeros(n + 1, dtype=np.int64)
        self.columns = columns


def columns_known() -> set[str]:
    return {c.name for c in COLUMNS}
