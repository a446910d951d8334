"""One exception hierarchy for the whole package.

Every error a user can cause (bad input, a locked node, a merge conflict, a
missing object) is a :class:`NodestoreError`; the CLI turns it into one line on
stderr and the exit code of its class, never a traceback.
"""

from __future__ import annotations


class NodestoreError(Exception):
    """Base class: a problem the user can act on."""

    exit_code = 1


class ValidationError(NodestoreError):
    """Input data (a structure file, a frame, a config) is not acceptable."""

    exit_code = 2


class SchemaError(ValidationError):
    """A stored document does not match its JSON Schema or format version."""


class LockedError(NodestoreError):
    """Another process holds the node's write lock."""

    exit_code = 3


class NotANodeError(NodestoreError):
    """The path is not a nodestore node."""

    exit_code = 4


class RevisionError(NodestoreError):
    """A revision, branch, tag or remote name does not resolve."""

    exit_code = 5


class MergeConflict(NodestoreError):
    """A merge found conflicts that no policy resolves; the node is unchanged."""

    exit_code = 6

    def __init__(self, message: str, conflicts: list | None = None):
        super().__init__(message)
        self.conflicts = conflicts or []


class IntegrityError(NodestoreError):
    """A stored or transferred object does not match its hash, or is missing."""

    exit_code = 7


class BackendError(NodestoreError):
    """A model backend, checkpoint or external code cannot do what was asked."""

    exit_code = 8


class NoHullError(NodestoreError):
    """No convex hull can be built for a method (e.g. a missing elemental reference)."""

    exit_code = 9
