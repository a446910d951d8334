"""Selecting and exporting rows of a node's table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nodestore.errors import ValidationError


#: query columns of the polyanion census: the count of each canonical motif per cell
MOTIF_COLUMNS = {
    "motif_ps4": "PS4", "motif_ps3": "PS3", "motif_p2s7": "P2S7 (corner-sharing)",
    "motif_p2s6_pp": "P2S6 (P-P bonded)", "motif_p2s6_edge": "P2S6 (edge-sharing)",
    "motif_ps3_trimer": "(PS3)3 trimer", "motif_p2s8_ring": "P2S8 ring", "motif_p3s8_ring": "P3S8 ring",
    "motif_ps3_chain": "(PS3)n chain", "motif_ps4_polymer": "(PS4)n polymer", "motif_s": "S",
    "motif_s2": "S2 (disulfide)", "motif_p": "P (phosphide)",
}


def motif_columns(table, names) -> dict:
    """``motifs`` (each row's motif multiset as a string, e.g. ``"PS4 x4"``) and the ``motif_*``
    counts among ``names``, computed for the curated entries and the reference phases (the rows
    ``nodestore motifs`` counts; "" and NaN elsewhere)."""
    from nodestore.chem.motifs import census, motif_string

    wanted = [n for n in names if n == "motifs" or n in MOTIF_COLUMNS]
    if not wanted:
        return {}
    rows = np.nonzero(table.column("is_entry") | (table.column("origin") == "reference"))[0]
    counts = [census(a) for a in table.to_atoms(rows)] if len(rows) else []
    out = {}
    for name in wanted:
        if name == "motifs":
            col = np.full(len(table), "", dtype=object)
            for r, c in zip(rows, counts):
                col[r] = motif_string(c)
            out[name] = col.astype(str)
        else:
            col = np.full(len(table), np.nan)
            for r, c in zip(rows, counts):
                col[r] = c.get(MOTIF_COLUMNS[name], 0)
            out[name] = col
    return out


def analysis_columns(node, table, names, rev: str | None = None) -> dict:
    """The stored-analysis columns among ``names`` (all of them when ``names`` is None), and the
    motif census columns the names ask for (computed, not stored: they depend on the structure
    alone)."""
    from . import analyses

    cols = analyses.columns(node, table, rev)
    if names is None:
        return cols
    out = {k: v for k, v in cols.items() if k in names}
    out.update(motif_columns(table, names))
    return out


def select_rows(table, where: str | None, node=None, rev: str | None = None) -> np.ndarray:
    """Rows where ``where`` holds (all rows for None).  With the ``node``, the expression may also
    name the columns of its stored analyses (``g_hull_300K_0GPa``, ``li_conductivity_300K``, ...),
    read at ``rev``; they are computed only when it names a column the table does not have."""
    if where is None:
        return np.arange(len(table))
    from nodestore.chem.api import DERIVED, QUERY_COLUMNS, query, query_names

    extra = None
    unknown = query_names(where) - set(QUERY_COLUMNS) - set(DERIVED) - {"true", "false", "nan"}
    if node is not None and unknown:
        extra = {**analysis_columns(node, table, None, rev), **motif_columns(table, unknown)}
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
