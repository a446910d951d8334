"""nodestore: a materials database as a living repository.

Heavy modules are imported lazily: ``import nodestore`` is cheap, and
``nodestore.Node`` / ``nodestore.FrameTable`` load their layers on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "Node": ("nodestore.repo", "Node"),
    "FrameTable": ("nodestore.frames", "FrameTable"),
    "FrameBatch": ("nodestore.frames", "FrameBatch"),
    "as_frames": ("nodestore.frames", "as_frames"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'nodestore' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
