"""``Node``: the facade.  Verbs live one per module and are attached here, as DVC does."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from nodestore.config import parse_system, read_yaml, system_name
from nodestore.errors import NotANodeError, SchemaError, ValidationError

from .paths import CURRENT_MODELS, MODELS_DIR, NODE_YAML, PARAMS_YAML, STATE_DIR, TABLE_DIR  # noqa: F401


class Node:
    """A chemical-system node: git history + DVC artifacts + node.yaml.

    >>> node = Node.init("Li-P-S", "nodes/Li-P-S")
    >>> node.import_files(["known/Li3PS4.cif"], message="references")
    >>> Node.open("nodes/Li-P-S").show()["frames"]
    """

    from .init import init  # classmethod
    from .importing import import_files
    from .history import commit, diff, log, show, status
    from .checkout import branch, branches, checkout, tag, tags
    from .merge import merge
    from .extend import extend
    from .remote import clone, fetch, pull, push, remote_add, remotes
    from .bundle import export_bundle
    from .fsck import fsck
    from .models_store import add_checkpoint, current_models, list_checkpoints, set_current_model

    def __init__(self, path):
        self.path = Path(path).resolve()

    def transaction(self, message: str | None = None, tags=(), **kwargs):
        """``with node.transaction(message, tags=()) as tx:``: the one way to change the node
        (see :mod:`nodestore.repo.transaction`)."""
        from .transaction import Transaction

        return Transaction(self, message, tags=tags, **kwargs)

    def recover(self) -> str | None:
        """Finish or undo a transaction a killed process left (done by ``open`` already)."""
        from .transaction import recover

        return recover(self)

    @classmethod
    def open(cls, path=".") -> "Node":
        """Open the node at ``path`` or at the nearest parent that holds a node.yaml."""
        p = Path(path).resolve()
        for cand in (p, *p.parents):
            if (cand / NODE_YAML).exists() and (cand / ".git").exists():
                node = cls(cand)
                node.recover()
                return node
        raise NotANodeError(f"{path} is not inside a nodestore node (no node.yaml); run `nodestore init SYSTEM`")

    # -- configuration ----------------------------------------------------
    @property
    def config(self) -> dict:
        return read_yaml(self.path / NODE_YAML, "node")

    def config_at(self, commit) -> dict:
        """node.yaml as ``commit`` recorded it (not validated: it may be another version's)."""
        import yaml

        from . import git

        blob = git.read_blob(self.git, commit, NODE_YAML)
        return yaml.safe_load(blob) if blob is not None else {}

    @property
    def params(self) -> dict:
        return read_yaml(self.path / PARAMS_YAML, "params")

    @property
    def system(self) -> list[str]:
        try:
            return parse_system(self.config["system"])
        except ValidationError as exc:
            raise SchemaError(f"{self.path / NODE_YAML}: system: {exc}") from None

    @property
    def name(self) -> str:
        return system_name(self.system)

    @property
    def state_dir(self) -> Path:
        p = self.path / STATE_DIR
        if p.is_symlink() or (p.exists() and not p.is_dir()):
            raise ValidationError(f"{p} is a link or a file, not the node's state directory: refusing to write "
                                  "through it (remove it; `nodestore fsck --repair` does)")
        return p

    @functools.cached_property
    def git(self):
        from . import git

        return git.open_repo(self.path)

    # -- the structure table ---------------------------------------------
    @property
    def table(self):
        """The work-tree table (what the next commit will record)."""
        from nodestore.frames import FrameTable

        return FrameTable.open(self.path / TABLE_DIR)

    def table_at(self, rev: str | None = None):
        """The table as recorded by commit ``rev`` (read-only view from the DVC cache)."""
        if rev is None:
            return self.table
        from nodestore.frames import FrameTable

        from . import dvc, git

        commit = git.resolve(self.git, rev)
        md5 = self.artifact_md5(commit, TABLE_DIR)
        if md5 is None:
            raise NotANodeError(f"commit {str(commit.id)[:10]} records no structure table")
        view = dvc.materialize(self.path, md5, self.state_dir / "views" / md5.removesuffix(".dir"))
        return FrameTable.open(view)

    def artifact_md5(self, commit, tracked: str) -> str | None:
        from . import dvc, git

        blob = git.read_blob(self.git, commit, f"{tracked}.dvc")
        if blob is None:
            return None
        out = dvc.dvcfile_md5(blob.decode())
        return out[0] if out else None

    def models_at(self, rev: str | None = None) -> Path:
        """The models directory as recorded by ``rev`` (the work tree for None)."""
        if rev is None:
            return self.path / MODELS_DIR
        from . import dvc, git

        commit = git.resolve(self.git, rev)
        md5 = self.artifact_md5(commit, MODELS_DIR)
        if md5 is None:
            raise NotANodeError(f"commit {str(commit.id)[:10]} records no models directory")
        return dvc.materialize(self.path, md5, self.state_dir / "views" / md5.removesuffix(".dir"))

    def write_json_state(self, name: str, doc: dict) -> None:
        self.state_dir.mkdir(exist_ok=True)
        (self.state_dir / name).write_text(json.dumps(doc, indent=1))

    def __repr__(self) -> str:
        return f"Node({str(self.path)!r})"
