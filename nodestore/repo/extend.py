"""``nodestore extend``: a new node for a larger chemical system, grown from this one.

Every structure and label is valid in the larger system, so all frames (hull
references included), the overlay of curated columns and the model
checkpoints are carried over; the checkpoints become the starting point of the
new node's models.  node.yaml lineage records the parent node and commit.
"""

from __future__ import annotations

from pathlib import Path

from nodestore.config import parse_system, read_yaml, system_name
from nodestore.errors import NodestoreError, ValidationError


def extend(node, elements, to, message: str | None = None):
    """Make the node for ``system ∪ elements`` at ``to``; return it."""
    from . import git
    from .init import building, check_target, now

    added = parse_system(elements)
    already = sorted(set(added) & set(node.system))
    if already:
        raise ValidationError(f"{', '.join(already)} already in the {node.name} system")
    st = node.status()
    if not st["clean"]:
        raise NodestoreError(f"commit your changes before extending ({', '.join(st['changed_files'])})")
    to = Path(to)
    check_target(to)
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
    params["loop"] = {"iterations": {}}  # the new node starts its own loop
    msg = message or (f"extend {node.name} with {', '.join(added)}: carry {len(node.table)} frames and "
                      f"the checkpoints of {cfg['node_id'][:8]}@{str(head.id)[:10]}")
    # the new node is built aside and appears at ``to`` whole: a killed extend leaves no node there
    with building(to, "extend") as tmp:
        new = type(node).init(union, tmp, reference_method=cfg["reference_method"], params=params,
                              lineage=lineage, files=files,
                              message=f"init {system_name(union)} node, extended from {node.name}")
        _carry(node, new, cfg, msg)
    return type(node)(to)


def _carry(node, new, cfg: dict, msg: str) -> None:
    """Carry the data and the checkpoints into ``new``, as one transaction of the new node."""
    from nodestore.frames import FrameTable

    from .paths import MODELS_DIR, TABLE_DIR

    with new.transaction(msg) as tx:
        tx.adopt(FrameTable.open(node.path / TABLE_DIR), overlay=True)
        if cfg.get("methods"):  # the carried labels keep what their method names stand for
            new_cfg = tx.config
            new_cfg["methods"] = cfg["methods"]
            tx.write_config(new_cfg)
        src_models = node.path / MODELS_DIR
        for d in sorted(src_models.iterdir()):
            if d.is_dir() and (d / "meta.json").exists():
                tx.copy_checkpoint(d)
        tx.set_current_models(node.current_models())
