"""``nodestore init``: a new node (git through pygit2, DVC, node.yaml, params.yaml)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

from nodestore.config import default_params, parse_system, system_name, write_yaml
from nodestore.errors import ValidationError

GITIGNORE = """\
# nodestore private state (lock, read-only views of older revisions, caches)
/.nodestore/
# `nodestore report` output
/report/
"""

DEFAULT_REFERENCE_METHOD = "gpaw-pbe-pw300"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@classmethod
def init(cls, system, path=None, reference_method: str = DEFAULT_REFERENCE_METHOD, params: dict | None = None,
         lineage: list | None = None, node_id: str | None = None, message: str | None = None,
         files: dict[str, str] | None = None):
    """Create a node for ``system`` at ``path`` (default: ./SYSTEM) and make its first commit.

    ``files`` are extra text files (relative path -> content) of the first
    commit, e.g. the loop's ``dvc.yaml`` written by the layer above.
    """
    elements = parse_system(system)
    path = Path(path if path is not None else system_name(elements))
    check_target(path)
    with building(path, "init") as tmp:
        _build(cls, tmp, elements, reference_method, params, lineage, node_id, message, files)
    return cls(path)


def check_target(path: Path) -> None:
    """Refuse a path that holds a repository or anything else (an empty directory is fine)."""
    from .paths import NODE_YAML

    if (path / NODE_YAML).exists() or (path / ".git").exists():
        raise ValidationError(f"{path} already holds a repository; choose another path")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValidationError(f"{path} exists and is not empty")


@contextmanager
def building(path: Path, verb: str):
    """A temporary sibling directory of ``path`` to build a new node in, renamed to ``path`` at the end.

    A process killed while building leaves no node at ``path`` (only the hidden temporary
    directory, ``.NAME.VERB-XXXX``), so running the verb again starts afresh; an error removes it,
    and the next build for the same ``path`` removes what a dead builder left (``stale_builds``).
    """
    from nodestore.faults import pause

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in stale_builds(path):
        shutil.rmtree(old, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{verb}-{os.getpid()}-", dir=path.parent))
    try:
        yield tmp
        pause(f"{verb}:built")
        try:
            os.rename(tmp, path)  # onto nothing or an empty directory: atomic
        except OSError as exc:
            raise ValidationError(f"{path} exists and is not empty (made while this {verb} ran)") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_GRACE_S = 60.0  # a build directory whose name holds no pid is taken for a live one's this long


def stale_builds(path: Path) -> list[Path]:
    """The hidden build directories of ``path`` (``.NAME.VERB-PID-XXXX``, and the init directory
    an extend makes beside its own, ``..NAME.extend-PID-XXXX.init-PID-YYYY``) whose builder is dead."""
    import re
    import time

    from .lock import _alive

    name = Path(path).name
    pattern = re.compile(r"\.\.?" + re.escape(f"{name}.") + r"(?:init|extend)-(?:(\d+)-)?\w+"
                         r"(?:\.init-\d+-\w+)?")
    out = []
    for d in Path(path).parent.glob(f"*.{name}.*-*"):
        m = pattern.fullmatch(d.name)
        if m is None or not d.is_dir() or d.is_symlink():
            continue
        pid = int(m.group(1)) if m.group(1) else None
        if pid is not None and _alive(pid):
            continue
        if pid is None and time.time() - d.stat().st_mtime < _GRACE_S:
            continue
        out.append(d)
    return sorted(out)


def _build(cls, path, elements, reference_method, params, lineage, node_id, message, files):
    from nodestore.frames import FrameTable

    from . import dvc, git
    from .lock import node_lock
    from .paths import CURRENT_MODELS, MODELS_DIR, NODE_YAML, PARAMS_YAML, TABLE_DIR

    node = cls(path)
    with node_lock(node.state_dir):
        git.init(node.path)
        (node.path / ".gitignore").write_text(GITIGNORE)
        dvc.init(node.path)
        _dvc_link_types(node.path)
        config = {
            "schema_version": 1,
            "node_id": node_id or uuid.uuid4().hex,
            "name": system_name(elements),
            "system": elements,
            "reference_method": reference_method,
            "created": now(),
            "lineage": lineage if lineage is not None else [{"event": "init", "date": now()}],
        }
        write_yaml(node.path / NODE_YAML, config, "node")
        write_yaml(node.path / PARAMS_YAML, params or default_params(), "params")
        FrameTable.create(node.path / TABLE_DIR)
        models = node.path / MODELS_DIR
        models.mkdir(parents=True, exist_ok=True)
        (models / CURRENT_MODELS).write_text(json.dumps({}, indent=1) + "\n")
        for rel, text in (files or {}).items():
            target = node.path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        dvc.add(node.path)
        git.commit(node.git, message or f"init {system_name(elements)} node")


def _dvc_link_types(path: Path) -> None:
    """Link workspace files to the cache instead of copying them (segments are immutable)."""
    from . import dvc

    with dvc.open_dvc(path) as repo:
        with repo.config.edit("repo") as conf:
            conf["cache"]["type"] = "reflink,hardlink,copy"
