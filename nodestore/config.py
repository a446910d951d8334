"""node.yaml and params.yaml: defaults, reading, validation against schemas/."""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

from nodestore.errors import SchemaError, ValidationError

SCHEMA_VERSION = 1

#: every section the loop's stages declare in dvc.yaml must exist (DVC checks params)
DEFAULT_PARAMS: dict = {
    "schema_version": SCHEMA_VERSION,
    "import": {"min_distance": 0.5},
    "loop": {"iterations": {}},
    "generate": {"n": 24, "max_atoms": 16},
    "screen": {"fmax": 0.1, "steps": 60, "relax_cell": True},
    "select": {"n_lowest": 2, "n_diverse": 1, "n_uncertain": 1, "uncertain_max_e_hull": 0.3, "max_atoms": 16},
    "label": {"primitive": True},
    "train": {"min_frames": 2},
    "curate": {"stable_threshold": 0.1},
    "match": {"ltol": 0.2, "stol": 0.3, "angle_tol": 5.0},
    "forcefield": {"backend": "sevenn", "pretrained": "7net-0", "finetune": {"max_seconds": 180}},
    "labeller": {"backend": "gpaw", "ecut": 300, "kpt_density": 2.0, "kpt_dense_kppra": 2000,
                 "smearing": 0.05, "timeout": 900},
    "generator": {"backend": "pyxtal", "max_atoms": 16},
    "executor": {"backend": "local", "processes": 1},
}


def parse_system(system) -> list[str]:
    """'Li-P-S' or ['Li', 'P', 'S'] -> sorted list of valid element symbols."""
    from ase.data import chemical_symbols

    if isinstance(system, str):
        parts = [p for p in system.replace(",", "-").replace(" ", "-").split("-") if p]
    else:
        parts = list(system)
    bad = [p for p in parts if p not in chemical_symbols[1:]]
    if bad or not parts:
        raise ValidationError(f"not a chemical system: {system!r} (unknown element(s): {', '.join(bad) or 'none given'})")
    if len(set(parts)) != len(parts):
        raise ValidationError(f"chemical system {system!r} repeats an element")
    return sorted(parts)


def system_name(elements) -> str:
    return "-".join(sorted(elements))


def read_yaml(path: Path, schema: str) -> dict:
    from nodestore.schemas_util import load_document

    path = Path(path)
    if not path.exists():
        raise SchemaError(f"{path} is missing")
    return load_document(path, schema)


def write_yaml(path: Path, doc: dict, schema: str) -> None:
    """Validate then write atomically."""
    import yaml

    from nodestore.schemas_util import validate

    validate(doc, schema, where=str(path))
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            yaml.safe_dump(doc, fh, sort_keys=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_params() -> dict:
    return copy.deepcopy(DEFAULT_PARAMS)


def with_defaults(params: dict) -> dict:
    """``params`` with every missing top-level section taken from the defaults."""
    out = copy.deepcopy(params)
    for key, value in DEFAULT_PARAMS.items():
        out.setdefault(key, copy.deepcopy(value))
    return out


def iterations(params: dict) -> dict[int, int]:
    """params.yaml's ``loop.iterations`` as ``{k: prev}``, in order.

    The mapping form ``{"1": {"prev": 0}, ...}`` is current (DVC's foreach then
    names ``stage@k`` iteration k); the list form ``[{k: 1, prev: 0}, ...]`` of
    older nodes is read too (``nodestore iterate`` migrates it).
    """
    its = ((params or {}).get("loop") or {}).get("iterations") or {}
    if isinstance(its, list):
        return {int(it["k"]): int(it["prev"]) for it in its}
    return {int(k): int(v["prev"]) for k, v in its.items()}
