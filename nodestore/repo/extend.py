"""``nodestore extend``: a new node for a larger chemical system, grown from this one.

Every structure and label is valid in the larger system, so all frames (hull
references included), the overlay of curated columns and the model
checkpoints are carried over; the checkpoints become the starting point of the
new node's models.  node.yaml lineage records the parent node and commit.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from nodestore.config import parse_system, read_yaml, system_name, write_yaml
from nodestore.errors import NodestoreError, ValidationError


def extend(node, elements, to, message: str | None = None):
    """Make the node for ``system ∪ elements`` at ``to``; return it."""
    from . import git
    from .init import now
    from .node import MODELS_DIR, NODE_YAML, TABLE_DIR

    added = parse_system(elements)
    already = sorted(set(added) & set(node.system))
    if already:
        raise ValidationError(f"{', '.join(already)} already in the {node.name} system")
    st = node.status()
    if not st["clean"]:
        raise NodestoreError(f"commit your changes before extending ({', '.join(st['changed_files'])})")
    to = Path(to)
    head = git.resolve(node.git, "HEAD")
    cfg = node.config
    union = sorted(set(node.system) | set(added))
    lineage = [*cfg.get("lineage", []), {
        "event": "extend", "date": now(), "parent_node": cfg["node_id"], "parent_commit": str(head.id),
        "parent_system": node.system, "added_elements": added,
    }]
    files = {}
    for name in ("dvc.yaml",):
        if (node.path / name).exists():
            files[name] = (node.path / name).read_text()
    params = read_yaml(node.path / "params.yaml", "params")
    params["loop"] = {"iterations": []}  # the new node starts its own loop
    new = type(node).init(union, to, reference_method=cfg["reference_method"], params=params, lineage=lineage,
                          files=files, message=f"init {system_name(union)} node, extended from {node.name}")
    # carry the data and the checkpoints: segments are content-addressed, so a copy is the same table
    src_table, dst_table = node.path / TABLE_DIR, new.path / TABLE_DIR
    shutil.rmtree(dst_table)
    shutil.copytree(src_table, dst_table, ignore=shutil.ignore_patterns(".tmp*", ".manifest-*"))
    for p in dst_table.rglob("*"):
        if p.is_file():
            p.chmod(0o644)
    if cfg.get("methods"):  # the carried labels keep what their method names stand for
        new_cfg = new.config
        new_cfg["methods"] = cfg["methods"]
        write_yaml(new.path / NODE_YAML, new_cfg, "node")
    src_models, dst_models = node.path / MODELS_DIR, new.path / MODELS_DIR
    shutil.rmtree(dst_models)
    shutil.copytree(src_models, dst_models)
    for p in dst_models.rglob("*"):
        if p.is_file():
            p.chmod(0o644)
    new.commit(message or f"extend {node.name} with {', '.join(added)}: carry {len(new.table)} frames and "
                          f"the checkpoints of {cfg['node_id'][:8]}@{str(head.id)[:10]}")
    return new
