"""Selecting and exporting rows of a node's table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nodestore.errors import ValidationError


def select_rows(table, where: str | None) -> np.ndarray:
    if where is None:
        return np.arange(len(table))
    from nodestore.chem.api import query

    return np.asarray(query(table, where), dtype=np.int64)


def export_frames(node, output, fmt: str | None = None, rev: str | None = None, where: str | None = None) -> int:
    from nodestore.frames.io import EXPORTS, write_frames

    output = Path(output)
    if fmt is None:
        ext = output.suffix.lower().lstrip(".")
        fmt = {"xyz": "extxyz", "extxyz": "extxyz", "cif": "cif", "csv": "csv", "json": "json"}.get(ext)
        if fmt is None:
            raise ValidationError(f"cannot tell the format of {output}; give --format ({', '.join(EXPORTS)})")
    table = node.table_at(rev)
    rows = select_rows(table, where)
    write_frames(table.read(rows), output, fmt)
    return len(rows)
