"""A direct read path for the Zarr v3 arrays inside one stored (uncompressed) zip.

zarr-python spends a few hundred microseconds of event-loop and indexing work
on each chunk it reads, whatever the chunk's size.  A random frame needs one
or two small chunks of three per-atom arrays, so through zarr 1,000 random
frames cost seconds.  The bytes on disk are plain Zarr v3, though: a segment is
a ZIP_STORED archive, so every chunk (or shard) is one contiguous byte range of
the file.  This module maps the file once, parses the arrays' ``zarr.json``
documents, reads the sharding index, and decodes exactly the inner chunks a
selection needs with numcodecs (the same codec implementations zarr uses).

It understands the layouts nodestore writes, old and new:

* a regular chunk grid along the first axis only (every other axis whole);
* codecs ``bytes`` (+ ``zstd`` or ``blosc``), or ``vlen-utf8`` (+ ``zstd``/``blosc``);
* optionally wrapped in ``sharding_indexed`` with the index at the end,
  encoded as ``bytes`` little-endian + ``crc32c``;
* chunks that zarr did not write (equal to the fill value).

Anything else is reported as unsupported (``array()`` returns None) and the
caller reads that array through zarr itself.  ``tests/frames/test_chunks.py``
checks the two paths agree on every column and layout.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import zipfile
from pathlib import Path

import numpy as np

_DTYPES = {
    "bool": "?", "int8": "i1", "int16": "i2", "int32": "i4", "int64": "i8",
    "uint8": "u1", "uint16": "u2", "uint32": "u4", "uint64": "u8",
    "float32": "f4", "float64": "f8",
}
_EMPTY = np.uint64(2**64 - 1)


class _one_blosc_thread:
    """Blosc decodes these small chunks fastest on one thread: its thread pool costs more per
    chunk than it saves (measured: 8,000 random atoms 25 ms on one thread, 91 ms on two).
    The process-wide setting is restored on exit."""

    def __enter__(self):
        from numcodecs import blosc

        self._prev = blosc.set_nthreads(1)

    def __exit__(self, *exc):
        from numcodecs import blosc

        blosc.set_nthreads(self._prev)


class Unsupported(Exception):
    """The array's layout is not one this reader handles (use zarr)."""


def _blosc_decompress(raw, out) -> None:
    from numcodecs import blosc

    blosc.decompress(raw, out)


def _compressor(spec: dict):
    import numcodecs

    name = spec["name"]
    if name == "zstd":
        return numcodecs.Zstd()
    if name == "blosc":
        return numcodecs.Blosc()  # blosc frames describe themselves
    if name == "gzip":
        return numcodecs.GZip()
    raise Unsupported(f"codec {name!r}")


def _fill(value, dtype):
    if dtype == object:
        return "" if value is None else value
    if isinstance(value, str):
        value = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}.get(value, value)
    return np.array(value, dtype=dtype)


class ZipArrays:
    """The arrays of one segment file, read directly from its bytes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with zipfile.ZipFile(self.path) as zf:
            infos = zf.infolist()
        # the mapping keeps a descriptor of its own: this one is closed at once, so that a reader
        # dropped without close() holds no descriptor once its mapping is gone
        fd = os.open(self.path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            self._mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ) if size else None
        finally:
            os.close(fd)
        self._members: dict[str, tuple[int, int]] = {}
        self._stored = True
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED:
                self._stored = False
            self._members[info.filename] = (info.header_offset, info.file_size)
        self._arrays: dict[str, "FastArray | None"] = {}
        self._spans: dict[str, tuple[int, int]] = {}
        self._view = memoryview(self._mm) if self._mm is not None else memoryview(b"")

    # -- bytes ---------------------------------------------------------------
    def member(self, name: str) -> memoryview | None:
        """The bytes of zip member ``name`` (None when absent)."""
        entry = self._members.get(name)
        if entry is None:
            return None
        if not self._stored:
            with zipfile.ZipFile(self.path) as zf:
                return memoryview(zf.read(name))
        span = self._spans.get(name)
        if span is None:
            header, size = entry
            sig, = struct.unpack_from("<I", self._mm, header)
            if sig != 0x04034B50:
                raise zipfile.BadZipFile(f"bad local header for {name}")
            n, m = struct.unpack_from("<HH", self._mm, header + 26)
            start = header + 30 + n + m
            if start + size > len(self._mm):
                raise zipfile.BadZipFile(f"member {name} runs past the end of the file")
            span = self._spans[name] = (start, start + size)
        return self._view[span[0]:span[1]]

    def json(self, name: str) -> dict | None:
        raw = self.member(name)
        return None if raw is None else json.loads(bytes(raw))

    def names(self) -> list[str]:
        return sorted({k[: -len("/zarr.json")] for k in self._members
                       if k.endswith("/zarr.json") and k.count("/") == 1})

    def array(self, name: str) -> "FastArray | None":
        """The array ``name``, or None when it is absent or its layout is unsupported."""
        if name not in self._arrays:
            meta = self.json(f"{name}/zarr.json")
            arr = None
            if meta is not None and self._stored:
                try:
                    arr = FastArray(self, name, meta)
                except (Unsupported, KeyError, TypeError, ValueError):
                    arr = None
            self._arrays[name] = arr
        return self._arrays[name]

    def close(self) -> None:
        self._arrays.clear()
        try:
            self._view.release()
            if self._mm is not None:
                self._mm.close()
        except BufferError:  # a caller still holds a view of the file: unmapped when it goes
            pass
        self._mm = None


class FastArray:
    """One array chunked along its first axis."""

    def __init__(self, zips: ZipArrays, name: str, meta: dict):
        if meta.get("zarr_format") != 3 or meta.get("node_type") != "array" or meta.get("storage_transformers"):
            raise Unsupported("not a plain zarr v3 array")
        self.zips, self.name = zips, name
        self.shape = tuple(meta["shape"])
        dt = meta["data_type"]
        grid = meta["chunk_grid"]
        if grid["name"] != "regular":
            raise Unsupported("chunk grid")
        outer = tuple(grid["configuration"]["chunk_shape"])
        if tuple(outer[1:]) != self.shape[1:]:
            raise Unsupported("chunked along more than the first axis")
        kenc = meta["chunk_key_encoding"]
        if kenc["name"] != "default":
            raise Unsupported("chunk key encoding")
        self.sep = kenc.get("configuration", {}).get("separator", "/")
        codecs = meta["codecs"]
        self.sharded = len(codecs) == 1 and codecs[0]["name"] == "sharding_indexed"
        if self.sharded:
            cfg = codecs[0]["configuration"]
            inner = tuple(cfg["chunk_shape"])
            if tuple(inner[1:]) != self.shape[1:] or outer[0] % inner[0]:
                raise Unsupported("inner chunks")
            ic = cfg.get("index_codecs", [])
            names = [c["name"] for c in ic]
            if cfg.get("index_location", "end") != "end" or names not in (["bytes", "crc32c"], ["bytes"]):
                raise Unsupported("shard index codecs")
            if ic[0].get("configuration", {}).get("endian", "little") != "little":
                raise Unsupported("shard index endianness")
            self._index_tail = 4 if "crc32c" in names else 0
            self.per_shard = outer[0] // inner[0]
            codecs = cfg["codecs"]
            self.chunk_len = inner[0]
        else:
            self.per_shard = 1
            self.chunk_len = outer[0]
        self.outer_len = outer[0]
        first = codecs[0]
        if dt == "string":
            if first["name"] != "vlen-utf8":
                raise Unsupported("string codec")
            import numcodecs

            self.dtype = np.dtype(object)
            self._vlen = numcodecs.VLenUTF8()
        else:
            if dt not in _DTYPES or first["name"] != "bytes":
                raise Unsupported(f"data type {dt}")
            endian = first.get("configuration", {}).get("endian", "little")
            self.dtype = np.dtype(("<" if endian == "little" else ">") + _DTYPES[dt])
            self._vlen = None
        self._comp = [_compressor(c) for c in codecs[1:]]
        self._blosc_direct = len(self._comp) == 1 and type(self._comp[0]).__name__ == "Blosc"
        self.fill = _fill(meta.get("fill_value"), self.dtype)
        self._inner_shape = (self.chunk_len, *self.shape[1:])
        self._indexes: dict[int, np.ndarray | None] = {}

    # -- chunks ------------------------------------------------------------
    def _key(self, outer_idx: int) -> str:
        idx = (outer_idx,) + (0,) * (len(self.shape) - 1)
        return f"{self.name}/c{self.sep}" + self.sep.join(str(i) for i in idx)

    def _shard_index(self, s: int) -> np.ndarray | None:
        if s not in self._indexes:
            raw = self.zips.member(self._key(s))
            if raw is None:
                self._indexes[s] = None
            else:
                n = self.per_shard * 16
                end = len(raw) - self._index_tail
                idx = np.frombuffer(raw[end - n:end], dtype="<u8").reshape(self.per_shard, 2).copy()
                self._indexes[s] = idx
        return self._indexes[s]

    def _chunk_bytes(self, c: int):
        if not self.sharded:
            return self.zips.member(self._key(c))
        s, j = divmod(c, self.per_shard)
        idx = self._shard_index(s)
        if idx is None:
            return None
        off, nb = idx[j]
        if off == _EMPTY:
            return None
        raw = self.zips.member(self._key(s))
        return raw[int(off):int(off) + int(nb)]

    def chunk(self, c: int, out: np.ndarray | None = None) -> np.ndarray:
        """Decoded chunk ``c`` (inner chunk when sharded), full length; into ``out`` if given."""
        raw = self._chunk_bytes(c)
        if raw is None:
            if out is None:
                out = np.empty(self._inner_shape, dtype=self.dtype)
            out[...] = self.fill
            return out
        if out is not None and self._vlen is None and len(self._comp) == 1:
            comp = self._comp[0]
            if self._blosc_direct and out.flags.c_contiguous:
                # numcodecs' Blosc.decode checks both buffers again before this same call (18 of
                # its 56 us on a 12 KB chunk): a random read decodes thousands of small chunks
                _blosc_decompress(raw, out)
            else:
                comp.decode(raw, out=out)
            return out
        if out is not None:
            out[...] = self.chunk(c)
            return out
        for comp in reversed(self._comp):
            raw = comp.decode(raw)
        if self._vlen is not None:
            return np.asarray(self._vlen.decode(raw), dtype=object).reshape(self._inner_shape)
        return np.frombuffer(raw, dtype=self.dtype).reshape(self._inner_shape)

    @property
    def n_chunks(self) -> int:
        return -(-self.shape[0] // self.chunk_len) if self.shape[0] else 0

    # -- selections ----------------------------------------------------------
    def read_all(self) -> np.ndarray:
        n = self.shape[0]
        if n == 0:
            return np.zeros(self.shape, dtype=self._native())
        return self.read_range(0, n)

    def read_range(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` along the first axis (each chunk decoded straight into place)."""
        lo, hi = max(int(lo), 0), min(int(hi), self.shape[0])
        if hi <= lo:
            return np.zeros((0, *self.shape[1:]), dtype=self._native())
        L = self.chunk_len
        c0, c1 = lo // L, -(-hi // L)
        buf = np.empty(((c1 - c0) * L, *self.shape[1:]), dtype=self.dtype)
        with _one_blosc_thread():
            for k, c in enumerate(range(c0, c1)):
                self.chunk(c, out=buf[k * L:(k + 1) * L])
        return self._native_array(buf[lo - c0 * L:hi - c0 * L])

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (sorted ascending, in range) along the first axis."""
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) == 0:
            return np.zeros((0, *self.shape[1:]), dtype=self._native())
        if int(idx[-1]) - int(idx[0]) + 1 == len(idx):  # contiguous (sorted, unique): a range
            return self.read_range(int(idx[0]), int(idx[-1]) + 1)
        ck = idx // self.chunk_len
        uniq, inv = np.unique(ck, return_inverse=True)
        blocks = np.empty((len(uniq), *self._inner_shape), dtype=self.dtype)
        with _one_blosc_thread():
            for k, c in enumerate(uniq.tolist()):
                self.chunk(c, out=blocks[k])
        return self._native_array(blocks[inv, idx - ck * self.chunk_len])

    def _native(self):
        return self.dtype if self.dtype == object else self.dtype.newbyteorder("=")

    def _native_array(self, a: np.ndarray) -> np.ndarray:
        if self.dtype != object and not self.dtype.isnative:
            a = a.astype(self._native())
        elif not a.flags.writeable:
            a = np.array(a)
        return a
