"""The structure table: columnar frames in immutable Zarr v3 segments.

Knows nothing of git, DVC or models.
"""

from .batch import FrameBatch, frame_id, reduced_formula
from .columns import COLUMNS, FORMAT_VERSION, MUTABLE, PER_ATOM, PER_FRAME, row_key
from .convert import as_frames
from .table import FrameTable

__all__ = [
    "COLUMNS", "FORMAT_VERSION", "MUTABLE", "PER_ATOM", "PER_FRAME",
    "FrameBatch", "FrameTable", "as_frames", "frame_id", "reduced_formula", "row_key",
]
