"""Selecting and exporting rows of a node's table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nodestore.errors import ValidationError


def analysis_columns(node, table, names, rev: str | None = None) -> dict:
    """The stored-analysis columns among ``names`` (all of them when ``names`` is None)."""
    from . import analyses

    cols = analyses.columns(node, table, rev)
    return cols if names is None else {k: v for k, v in cols.items() if k in names}


def select_rows(table, where: str | None, node=None, rev: str | None = None) -> np.ndarray:
    """Rows where ``where`` holds (all rows for None).  With the ``node``, the expression may also
    name the columns of its stored analyses (``g_hull_300K_0GPa``, ``li_conductivity_300K``, ...),
    read at ``rev``; they are computed only when it names a column the table does not have."""
    if where is None:
        return np.arange(len(table))
    from nodestore.chem.api import DERIVED, QUERY_COLUMNS, query, query_names

    extra = None
    if node is not None and query_names(where) - set(QUERY_COLUMNS) - set(DERIVED) - {"true", "false", "nan"}:
        extra = analysis_columns(node, table, None, rev)
    return np.asarray(query(table, where, extra), dtype=np.int64)


def export_frames(node, output, fmt: str | None = None, rev: str | None = None, where: str | None = None) -> int:
    from nodestore.frames.io import EXPORTS, write_frames

    output = Path(output)
    if fmt is None:
        ext = output.suffix.lower().lstrip(".")
        fmt = {"xyz": "extxyz", "extxyz": "extxyz", "cif": "cif", "csv": "csv", "json": "json"}.get(ext)
        if fmt is None:
            raise ValidationError(f"cannot tell the format of {output}; give --format ({', '.join(EXPORTS)})")
    table = node.table_at(rev)
    rows = select_rows(table, where, node, rev)
    write_frames(table.read(rows), output, fmt)
    return len(rows)
