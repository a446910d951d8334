"""The CLI: fast --help, one-line errors with exit codes, JSON output."""

import json
import subprocess
import sys
import time

import pytest

from conftest import AIMD, REFERENCE_FILES

EXE = [sys.executable, "-m", "nodestore"]


def ns(*args, cwd=None, check=True):
    p = subprocess.run([*EXE, *map(str, args)], cwd=cwd, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"nodestore {' '.join(map(str, args))} failed: {p.stderr}")
    return p


def test_help_is_instant():
    t = time.perf_counter()
    p = ns("--help")
    assert time.perf_counter() - t < 1.5
    assert "import" in p.stdout and "init" in p.stdout
    code = "import sys, nodestore.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch','pymatgen','dvc','zarr','ase','pygit2')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_cli_round_trip(tmp_path):
    ns("init", "Li-P-S", tmp_path / "n")
    node = tmp_path / "n"
    out = ns("import", AIMD, "--method", "vasp-pbe", "-m", "aimd", cwd=node).stdout
    assert "200 new" in out
    ns("-C", node, "import", *REFERENCE_FILES, "--origin", "reference", "-m", "refs")
    doc = json.loads(ns("-C", node, "show", "--json").stdout)
    assert doc["frames"] == 205 and doc["system"] == "Li-P-S" and doc["branch"] == "main"
    assert "refs" in ns("-C", node, "log").stdout
    assert json.loads(ns("-C", node, "status", "--json").stdout)["clean"]
    d = json.loads(ns("-C", node, "diff", "HEAD~1", "HEAD", "--json").stdout)
    assert d["frames_added"] == 5
    ns("-C", node, "tag", "v1")
    ns("-C", node, "export", tmp_path / "all.extxyz")
    ns("-C", node, "export", tmp_path / "all.csv", "--rev", "v1")
    assert len((tmp_path / "all.csv").read_text().splitlines()) == 206


@pytest.mark.parametrize("args,code,msg", [
    (["import", "missing.cif", "-m", "x"], 2, "no such file"),
    (["import", AIMD, "-m", "x"], 2, "--method"),
    (["checkout", "nope"], 5, "unknown revision"),
])
def test_errors_are_one_line(tmp_path, args, code, msg):
    ns("init", "Li-P-S", tmp_path / "n")
    p = ns("-C", tmp_path / "n", *args, check=False)
    assert p.returncode == code
    assert msg in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_not_a_node(tmp_path):
    p = ns("-C", tmp_path, "show", check=False)
    assert p.returncode == 4 and "not inside a nodestore node" in p.stderr
