"""A node served by ``nodestore serve`` in a subprocess, shared by the serve tests."""

import contextlib
import subprocess
import sys
import time

import pytest

from .helpers import _free_port, _get

pytest.importorskip("optimade")
pytest.importorskip("uvicorn")


@contextlib.contextmanager
def serving(path):
    """``nodestore serve`` of the node at ``path`` on a free port; yields the /v1 base URL."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nodestore", "-C", str(path), "serve", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(600):
            try:
                if _get(base + "/info")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
            if proc.poll() is not None:
                pytest.fail(f"serve exited: {proc.stdout.read()}")
        else:
            pytest.fail("serve did not answer in 120 s")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A Li-P-S node (references, 20 AIMD frames with vasp-pbe energies) served on a free port."""
    from conftest import AIMD, REFERENCE_FILES
    from ase.io import read, write

    from nodestore.repo import Node

    root = tmp_path_factory.mktemp("serve")
    node = Node.init("Li-P-S", root / "n")
    node.import_files(REFERENCE_FILES, origin="reference", message="refs")
    frames = read(AIMD, index=":20")
    write(root / "aimd20.extxyz", frames)
    node.import_files([root / "aimd20.extxyz"], method="vasp-pbe", message="aimd")
    with serving(node.path) as base:
        yield node, base


