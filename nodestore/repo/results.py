"""What the verbs return: small frozen dataclasses.

They also read like the dicts they replace (``r["new"]``, ``{**r}``), so that scripts written
against the dicts keep working; ``to_dict()`` gives the JSON the CLI prints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Result:
    def __getitem__(self, key: str):
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default=None):
        return getattr(self, key) if key in self.keys() else default

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self)]

    def __contains__(self, key) -> bool:
        return key in self.keys()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ImportResult(Result):
    read: int
    new: int
    segment: str | None
    commit: str | None


@dataclass(frozen=True)
class CheckoutResult(Result):
    commit: str
    branch: str | None


@dataclass(frozen=True)
class MergeResult(Result):
    result: str  # "merged", "fast-forward", "up-to-date"
    commit: str
    merged: str | None = None
    theirs: str | None = None
    segments_from_theirs: list = field(default_factory=list)
    rows_from_theirs: int = 0
    rows_on_both_sides: int = 0
    conflicts_resolved: int = 0
    entries_linked: int = 0


@dataclass(frozen=True)
class LabelResult(Result):
    labelled: int
    failures: list
    method: str
    commit: str | None


@dataclass(frozen=True)
class ClassifyResult(Result):
    classified: int
    hull: str
    commit: str | None
    novelty: dict = field(default_factory=dict)
    entries: int = 0
    #: labels of the reference method, and how many of them the labeller relaxed (relax_step > 0)
    relaxed_labels: dict = field(default_factory=dict)


@dataclass(frozen=True)
class IterationCommit(Result):
    iteration: int
    commit: str
    sun: dict


@dataclass(frozen=True)
class IterateResult(Result):
    added: int | None
    pending: list
    committed: list = field(default_factory=list)


@dataclass(frozen=True)
class FsckProblem(Result):
    kind: str  # "object", "ref", "manifest", "checkpoint", "temp", "journal", "schema", "remote", "link",
    #            "method", "lineage", "git-lock"
    what: str  # the object, file or ref
    message: str
    fix: str
    repaired: bool = False


@dataclass(frozen=True)
class FsckResult(Result):
    checked: int
    problems: list  # [FsckProblem]
    repaired: int = 0
    #: what is odd but not damage (e.g. a method recorded in node.yaml that no row carries): fsck stays clean
    warnings: list = field(default_factory=list)  # [FsckProblem]

    @property
    def clean(self) -> bool:
        return not [p for p in self.problems if not p.repaired]
