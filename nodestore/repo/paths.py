"""Where things live in a node: path constants shared by every module of repo/ (no imports)."""

from __future__ import annotations

import fnmatch

NODE_YAML = "node.yaml"
PARAMS_YAML = "params.yaml"
DVC_YAML = "dvc.yaml"
TABLE_DIR = "data/table"
TABLE_MANIFEST = "data/table/manifest.json"
SEGMENTS_DIR = "data/table/segments"
OVERLAYS_DIR = "data/table/overlays"
MODELS_DIR = "models"
CURRENT_MODELS = "current.json"
CURRENT_JSON = f"{MODELS_DIR}/{CURRENT_MODELS}"
MERGES_JSON = "data/merges.json"
LOOP_DIR = "loop"
STATE_DIR = ".nodestore"
JOURNAL = "journal.json"

#: small text files a transaction snapshots before it writes (restored byte for byte on rollback)
SNAPSHOT = (NODE_YAML, PARAMS_YAML, TABLE_MANIFEST, CURRENT_JSON, MERGES_JSON,
            f"{TABLE_DIR}.dvc", f"{MODELS_DIR}.dvc", "dvc.lock", ".gitignore", "data/.gitignore")
#: directories whose new entries a rollback removes (content-addressed files and checkpoints)
WATCHED = (SEGMENTS_DIR, OVERLAYS_DIR, MODELS_DIR)
#: names of the temporary files an interrupted writer leaves; never committed, dropped on recovery
TEMP_PATTERNS = (".node.yaml-*", ".params.yaml-*", ".manifest-*", ".tmp-*", ".*.tmp*", ".merges.json-*",
                 ".current.json-*")


def is_temp(relpath: str) -> bool:
    """Whether ``relpath`` (posix, relative to the node) is a writer's temporary file."""
    name = relpath.rstrip("/").rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(name, p) for p in TEMP_PATTERNS)
