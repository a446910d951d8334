"""The Li-P-S demo: a node built offline from the data shipped with nodestore."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data" / "li-p-s"


def reference_files() -> list[Path]:
    s = DATA / "structures"
    return sorted(s.glob("*.cif")) + sorted(s.glob("*.json"))


def labelled_files() -> dict[str, list[Path]]:
    lab = DATA / "labelled"
    return {
        "vasp-pbe": [lab / "lips_aimd_Li27P12S44.extxyz"],
        "pbesol": sorted(lab.glob("Li3PS4_sample_*.xyz")),
    }


def run_demo(path="demo/Li-P-S", fresh: bool = True, echo=print) -> dict:
    """Build the demo node step by step, timing each step; return ``show()`` plus timings."""
    from . import create_node

    path = Path(path)
    if fresh and path.exists():
        shutil.rmtree(path)
    timings = {}
    t = time.perf_counter()
    node = create_node("Li-P-S", path)
    timings["init"] = time.perf_counter() - t
    echo(f"[demo] initialised {path}")
    t = time.perf_counter()
    r = node.import_files(reference_files(), origin="reference", message="reference phases (AFLOW/pymatgen, OBELiX, MP)")
    timings["import references"] = time.perf_counter() - t
    echo(f"[demo] imported {r['new']} reference structures")
    for method, files in labelled_files().items():
        t = time.perf_counter()
        r = node.import_files(files, method=method, message=f"labelled frames ({method})")
        timings[f"import {method}"] = time.perf_counter() - t
        echo(f"[demo] imported {r['new']} frames labelled by {method}")
    doc = node.show()
    doc["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    return doc
