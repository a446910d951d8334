"""The node as a repository: pygit2 for history and refs, DVC for artifacts."""

from .node import Node

__all__ = ["Node"]
