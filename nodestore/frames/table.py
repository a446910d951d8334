"""The structure table: live segments listed by a manifest, plus one overlay.

Layout of a table directory::

    manifest.json            {"format_version", "segments": [...], "overlay": id|null}
    segments/<id>.zip        immutable frame segments (Zarr v3 groups)
    overlays/<id>.zip        the mutable per-frame columns, keyed by row key

Every write first writes new content-addressed files, then replaces
``manifest.json`` atomically: a crash at any point leaves the previous table.
Reads touch only the segments and columns they need.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from nodestore.errors import SchemaError, ValidationError

from .batch import FrameBatch, _ranges
from .columns import BY_NAME, FORMAT_VERSION, MUTABLE, PER_ATOM, PER_FRAME, coerce, row_key
from .segment import SEGMENT_SUFFIX, OverlayBatch, Segment, write_segment

MANIFEST = "manifest.json"


def _schema():
    from nodestore.schemas_util import load_schema

    return load_schema("table")


class FrameTable:
    """Columnar, append-only table of frames.

    >>> t = FrameTable.create("data/table")
    >>> t.append(FrameBatch.from_atoms(images, method="vasp-pbe"))
    >>> t.column("energy"); t.atoms(0); t.to_atoms([3, 17, 42])
    """

    def __init__(self, path: Path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        self._segments: dict[str, Segment] = {}
        self._index = None  # (seg_pos, local_row) for live rows
        self._overlay = None  # dict row_key -> {col: value}, deleted set

    # -- opening ---------------------------------------------------------
    @classmethod
    def create(cls, path, exist_ok: bool = False) -> "FrameTable":
        path = Path(path)
        if (path / MANIFEST).exists():
            if exist_ok:
                return cls.open(path)
            raise ValidationError(f"a table already exists at {path}")
        path.mkdir(parents=True, exist_ok=True)
        manifest = {"format_version": FORMAT_VERSION, "segments": [], "overlay": None}
        _write_manifest(path, manifest)
        return cls(path, manifest)

    @classmethod
    def open(cls, path) -> "FrameTable":
        path = Path(path)
        mpath = path / MANIFEST
        if not mpath.exists():
            raise SchemaError(f"no structure table at {path} (missing {MANIFEST})")
        from nodestore.schemas_util import load_document

        manifest = load_document(mpath, "table")
        if manifest["format_version"] != FORMAT_VERSION:
            raise SchemaError(
                f"table at {path} has format version {manifest['format_version']}; "
                f"this nodestore reads version {FORMAT_VERSION}"
            )
        return cls(path, manifest)

    # -- segments --------------------------------------------------------
    @property
    def segment_ids(self) -> list[str]:
        return [s["id"] for s in self.manifest["segments"]]

    def segment(self, seg_id: str) -> Segment:
        if seg_id not in self._segments:
            self._segments[seg_id] = Segment(self.path / "segments" / f"{seg_id}{SEGMENT_SUFFIX}")
        return self._segments[seg_id]

    def files(self) -> list[Path]:
        """Every file the current manifest needs."""
        out = [self.path / MANIFEST]
        out += [self.path / "segments" / f"{s}{SEGMENT_SUFFIX}" for s in self.segment_ids]
        if self.manifest.get("overlay"):
            out.append(self.path / "overlays" / f"{self.manifest['overlay']}{SEGMENT_SUFFIX}")
        return out

    # -- overlay ---------------------------------------------------------
    def _load_overlay(self):
        if self._overlay is None:
            values: dict[str, dict] = {}
            deleted: set[str] = set()
            oid = self.manifest.get("overlay")
            if oid:
                seg = Segment(self.path / "overlays" / f"{oid}{SEGMENT_SUFFIX}")
                keys = seg.frame_column("row_key")
                dels = seg.frame_column("deleted")
                cols = [n for n in seg.names() if n in MUTABLE]
                data = {n: seg.frame_column(n) for n in cols}
                setmask = {n: seg.frame_column(f"set_{n}") for n in cols if f"set_{n}" in seg.names()}
                for i, k in enumerate(keys):
                    if dels[i]:
                        deleted.add(k)
                    row = {n: data[n][i] for n in cols if n not in setmask or setmask[n][i]}
                    if row:
                        values[k] = row
                seg.close()
            self._overlay = (values, deleted)
        return self._overlay

    def overlay(self) -> tuple[dict, set]:
        """The mutable columns set per row key, and the deleted keys (copies)."""
        values, deleted = self._load_overlay()
        return {k: dict(v) for k, v in values.items()}, set(deleted)

    def segment_of(self, row: int) -> str:
        """The id of the segment that holds live row ``row``."""
        seg_pos, _ = self._live()
        return self.manifest["segments"][int(seg_pos[row])]["id"]

    # -- index of live rows ---------------------------------------------
    def _live(self):
        if self._index is None:
            seg_pos, local = [], []
            _, deleted = self._load_overlay()
            for p, s in enumerate(self.manifest["segments"]):
                rows = np.arange(s["rows"], dtype=np.int64)
                if deleted:
                    seg = self.segment(s["id"])
                    keys = _keys(seg.frame_column("frame_id"), seg.frame_column("method"))
                    sid = s["id"]
                    keep = np.array([k not in deleted and f"{sid}:{k}" not in deleted for k in keys], dtype=bool)
                    rows = rows[keep]
                seg_pos.append(np.full(len(rows), p, dtype=np.int64))
                local.append(rows)
            if seg_pos:
                self._index = (np.concatenate(seg_pos), np.concatenate(local))
            else:
                self._index = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        return self._index

    def __len__(self) -> int:
        return len(self._live()[0])

    @property
    def n_atoms(self) -> int:
        return int(self.column("n_atoms").sum()) if len(self) else 0

    # -- reading ---------------------------------------------------------
    def column(self, name: str) -> np.ndarray:
        """One per-frame column over all live rows (no per-atom data is read)."""
        if name not in PER_FRAME:
            raise KeyError(f"{name!r} is not a per-frame column; use read() for per-atom data")
        seg_pos, local = self._live()
        parts = []
        for p, s in enumerate(self.manifest["segments"]):
            mask = seg_pos == p
            if mask.any():
                parts.append(self.segment(s["id"]).frame_column(name)[local[mask]])
        if not parts:
            return BY_NAME[name].empty(0)
        out = np.concatenate(parts)
        if name in MUTABLE:
            out = self._apply_overlay(name, out)
        return out

    def columns(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        return {n: self.column(n) for n in names}

    def _apply_overlay(self, name: str, values: np.ndarray, rows=None) -> np.ndarray:
        over, _ = self._load_overlay()
        if not over:
            return values
        keys = self.row_keys() if rows is None else self.row_keys()[rows]
        values = values.copy()
        for i, k in enumerate(keys):
            row = over.get(k)
            if row is not None and name in row:
                values[i] = row[name]
        return values

    def row_keys(self) -> np.ndarray:
        return _keys(self._base_column("frame_id"), self._base_column("method"))

    def _base_column(self, name):
        seg_pos, local = self._live()
        parts = [self.segment(s["id"]).frame_column(name)[local[seg_pos == p]]
                 for p, s in enumerate(self.manifest["segments"]) if (seg_pos == p).any()]
        return np.concatenate(parts) if parts else BY_NAME[name].empty(0)

    def read(self, rows=None, columns: Sequence[str] | None = None) -> FrameBatch:
        """Frames ``rows`` (indices, a slice, or None for all) as a FrameBatch.

        Per-atom columns are fetched with one batched read per segment and
        array, so that every Zarr chunk is decoded at most once.
        """
        n = len(self)
        if rows is None:
            rows = np.arange(n)
        elif isinstance(rows, slice):
            rows = np.arange(n)[rows]
        else:
            rows = np.asarray(rows, dtype=np.int64).reshape(-1)
            if len(rows) and (rows.min() < -n or rows.max() >= n):
                raise IndexError(f"frame index out of range for a table of {n} frames")
            rows = np.where(rows < 0, rows + n, rows)
        names = list(columns) if columns is not None else list(PER_ATOM) + list(PER_FRAME)
        seg_pos, local = self._live()
        sp, lr = seg_pos[rows], local[rows]
        # gather per segment, in sorted local order, then scatter back to the request order
        counts = np.zeros(len(rows), dtype=np.int64)
        frame_parts: dict[str, np.ndarray] = {
            name: BY_NAME[name].empty(len(rows)) for name in names if name in PER_FRAME
        }
        atom_pieces: dict[int, dict[str, np.ndarray]] = {}
        for p in np.unique(sp):
            seg = self.segment(self.manifest["segments"][p]["id"])
            sel = np.nonzero(sp == p)[0]
            order = np.argsort(lr[sel], kind="stable")
            sel = sel[order]
            loc = lr[sel]
            offs = seg.offsets
            cnt = offs[loc + 1] - offs[loc]
            counts[sel] = cnt
            for name in names:
                if name in PER_FRAME:
                    frame_parts[name][sel] = seg.frame_column(name)[loc]
            atom_idx = _ranges(offs[loc], cnt)
            pieces = {}
            for name in names:
                if name in PER_ATOM:
                    pieces[name] = seg.atom_column(name, atom_idx)
            atom_pieces[int(p)] = (sel, cnt, pieces)
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        cols = dict(frame_parts)
        for name in names:
            if name in PER_ATOM:
                col = BY_NAME[name]
                out = np.empty((int(offsets[-1]), *col.shape), dtype=col.dtype)
                for sel, cnt, pieces in atom_pieces.values():
                    lo = int(offsets[sel[0]]) if len(sel) else 0
                    if len(sel) and np.all(np.diff(sel) == 1):
                        out[lo:lo + len(pieces[name])] = pieces[name]  # rows in order: one block copy
                    else:
                        out[_ranges(offsets[sel], cnt)] = pieces[name]
                cols[name] = out
        for name in names:
            if name in MUTABLE:
                cols[name] = self._apply_overlay(name, cols[name], rows)
        return FrameBatch(cols, offsets)

    def atoms(self, i: int):
        return self.read([i]).atoms(0)

    def to_atoms(self, rows=None, columns: Sequence[str] | None = None) -> list:
        """Frames ``rows`` as ASE Atoms; ``columns`` limits what is read (the structure columns
        numbers, positions, cell and pbc are always read; other per-frame columns go to ``info``)."""
        if columns is not None:
            columns = list(dict.fromkeys(["numbers", "positions", "cell", "pbc", *columns]))
        return self.read(rows, columns=columns).to_atoms()

    def structures(self, rows=None) -> list:
        return self.read(rows).to_structures()

    def iter_atoms(self, batch_size: int = 1024) -> Iterator:
        for start in range(0, len(self), batch_size):
            yield from self.read(slice(start, start + batch_size)).to_atoms()

    def __iter__(self):
        return self.iter_atoms()

    def dataset(self, rows=None, *, columns: Sequence[str] | None = None, transform=None):
        """Rows ``rows`` (all by default) as a ``torch.utils.data.Dataset`` of Atoms.

        Batched: a DataLoader's batch is one read (``FrameDataset.loader`` makes one that
        shuffles, with workers).  See :mod:`nodestore.frames.dataset`.
        """
        from .dataset import FrameDataset

        return FrameDataset(self.path, rows, n_total=len(self), columns=columns, transform=transform,
                            manifest=self.manifest)

    def iterable(self, rows=None, *, shuffle: bool = False, seed: int = 0, block: int = 1024, buffer: int = 4,
                 columns: Sequence[str] | None = None, transform=None):
        """Rows ``rows`` as a streaming ``torch.utils.data.IterableDataset`` of Atoms (block reads)."""
        from .dataset import FrameIterable

        return FrameIterable(self.path, rows, n_total=len(self), columns=columns, transform=transform,
                             shuffle=shuffle, seed=seed, block=block, buffer=buffer, manifest=self.manifest)

    def find(self, frame_ids: Sequence[str]) -> np.ndarray:
        """Row indices whose frame id is in ``frame_ids``."""
        wanted = set(frame_ids)
        ids = self.column("frame_id")
        return np.array([i for i, f in enumerate(ids) if f in wanted], dtype=np.int64)

    # -- writing ---------------------------------------------------------
    def append(self, batch: FrameBatch, dedup: bool = True) -> str | None:
        """Add rows as one new segment; rows already in the table are skipped.

        Returns the new segment id, or None when nothing was new.
        """
        batch = batch.complete()
        if dedup and len(self):
            have = set(self.row_keys().tolist())
            keys = _keys(batch["frame_id"], batch["method"])
            seen = set()
            keep = []
            for i, k in enumerate(keys):
                if k not in have and k not in seen:
                    keep.append(i)
                    seen.add(k)
            if len(keep) < len(batch):
                batch = batch.take(keep)
        if len(batch) == 0:
            return None
        seg_id = write_segment(self.path / "segments", batch)
        if seg_id in self.segment_ids:
            return None
        manifest = dict(self.manifest)
        manifest["segments"] = [*self.manifest["segments"],
                                {"id": seg_id, "rows": len(batch), "atoms": batch.n_atoms}]
        self._commit_manifest(manifest)
        return seg_id

    def add_segment(self, seg_id: str, rows: int, atoms: int) -> None:
        """List an existing segment file (e.g. one brought by a merge)."""
        if seg_id in self.segment_ids:
            return
        manifest = dict(self.manifest)
        manifest["segments"] = [*self.manifest["segments"], {"id": seg_id, "rows": rows, "atoms": atoms}]
        self._commit_manifest(manifest)

    def adopt(self, other: "FrameTable", ids: Sequence[str] | None = None, overlay: bool = False) -> list[str]:
        """List segments ``ids`` (all by default) of table ``other`` here, copying their files.

        Segments are content-addressed, so a copy is the same segment.  With
        ``overlay``, ``other``'s overlay is taken too (for a table that has none).
        """
        import shutil

        wanted = list(other.segment_ids) if ids is None else list(ids)
        by_id = {s["id"]: s for s in other.manifest["segments"]}
        seg_dir = self.path / "segments"
        seg_dir.mkdir(exist_ok=True)
        added = []
        for sid in wanted:
            if sid in self.segment_ids or sid in added:
                continue
            src = other.path / "segments" / f"{sid}{SEGMENT_SUFFIX}"
            dest = seg_dir / src.name
            if not dest.exists():
                tmp = seg_dir / f".tmp-{src.name}"
                shutil.copyfile(src, tmp)
                os.chmod(tmp, 0o644)
                os.replace(tmp, dest)
            added.append(sid)
        manifest = dict(self.manifest)
        manifest["segments"] = [*self.manifest["segments"],
                                *({"id": s, "rows": by_id[s]["rows"], "atoms": by_id[s]["atoms"]} for s in added)]
        oid = other.manifest.get("overlay")
        if overlay and oid and not self.manifest.get("overlay"):
            src = other.path / "overlays" / f"{oid}{SEGMENT_SUFFIX}"
            (self.path / "overlays").mkdir(exist_ok=True)
            dest = self.path / "overlays" / src.name
            if not dest.exists():
                tmp = dest.with_name(f".tmp-{src.name}")
                shutil.copyfile(src, tmp)
                os.chmod(tmp, 0o644)
                os.replace(tmp, dest)
            manifest["overlay"] = oid
        if added or manifest.get("overlay") != self.manifest.get("overlay"):
            self._commit_manifest(manifest)
        return added

    def update_rows(self, rows: dict[str, dict], delete: Sequence[str] = ()) -> None:
        """Set mutable columns row by row (``{row key: {column: value}}``) and drop rows ``delete``,
        as one new overlay."""
        over, deleted = self._load_overlay()
        over = {k: dict(v) for k, v in over.items()}
        for k, row in rows.items():
            for name in row:
                if name not in MUTABLE:
                    raise ValidationError(f"column {name!r} is not mutable (mutable: {', '.join(MUTABLE)})")
            over.setdefault(k, {}).update({c: coerce(c, [v])[0] for c, v in row.items()})
        self._write_overlay(over, set(deleted) | set(delete))

    def annotate(self, keys: Sequence[str], values: dict[str, Sequence], delete: Sequence[str] = ()) -> None:
        """Set mutable columns for the rows ``keys`` (row keys), and drop rows ``delete``.

        A deletion is a row key (every copy) or ``"<segment id>:<row key>"``
        (the copy in that segment only, as a merge needs).

        The existing overlay and the new values are written as one new overlay
        file; the manifest then points at it.
        """
        for name in values:
            if name not in MUTABLE:
                raise ValidationError(f"column {name!r} is not mutable (mutable: {', '.join(MUTABLE)})")
        over, deleted = self._load_overlay()
        over = {k: dict(v) for k, v in over.items()}
        deleted = set(deleted) | set(delete)
        for name, vals in values.items():
            vals = coerce(name, vals)
            if len(vals) != len(keys):
                raise ValidationError(f"{len(vals)} values for {len(keys)} rows in column {name!r}")
            for k, v in zip(keys, vals):
                over.setdefault(k, {})[name] = v
        self._write_overlay(over, deleted)

    def _write_overlay(self, over: dict, deleted: set) -> None:
        all_keys = sorted(set(over) | deleted)
        cols: dict[str, np.ndarray] = {"row_key": coerce("frame_id", all_keys),
                                       "deleted": np.array([k in deleted for k in all_keys], dtype=bool)}
        used = sorted({n for row in over.values() for n in row})
        for name in used:
            col = BY_NAME[name]
            arr = col.empty(len(all_keys))
            isset = np.zeros(len(all_keys), dtype=bool)
            for i, k in enumerate(all_keys):
                row = over.get(k)
                if row is not None and name in row:
                    arr[i] = row[name]
                    isset[i] = True
            cols[name] = arr
            cols[f"set_{name}"] = isset
        manifest = dict(self.manifest)
        if all_keys:
            oid = write_segment(self.path / "overlays", OverlayBatch(cols, len(all_keys)), kind="overlay")
            manifest["overlay"] = oid
        else:
            manifest["overlay"] = None
        self._commit_manifest(manifest)

    def _commit_manifest(self, manifest: dict) -> None:
        from nodestore.schemas_util import validate

        validate(manifest, "table", where="manifest")
        _write_manifest(self.path, manifest)
        self.manifest = manifest
        self._index = None
        self._overlay = None

    def gc(self) -> list[Path]:
        """Delete segment files this manifest does not list.

        Overlays are kept: they are small, and the manifests pinned by loop
        iterations still name them.
        """
        keep = {p.name for p in self.files()}
        removed = []
        for sub in ("segments",):
            d = self.path / sub
            if d.is_dir():
                for f in d.iterdir():
                    if f.name not in keep:
                        f.unlink() if f.is_file() else None
                        removed.append(f)
        return removed

    def close(self) -> None:
        for seg in self._segments.values():
            seg.close()
        self._segments.clear()

    def __enter__(self) -> "FrameTable":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FrameTable({str(self.path)!r}, frames={len(self)}, segments={len(self.segment_ids)})"


def _keys(frame_ids: np.ndarray, methods: np.ndarray) -> np.ndarray:
    out = np.empty(len(frame_ids), dtype=object)
    out[:] = [row_key(f, m) for f, m in zip(frame_ids, methods)]
    return out


def _write_manifest(path: Path, manifest: dict) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".json", dir=path)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(manifest, fh, indent=1, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path / MANIFEST)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
