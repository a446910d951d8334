"""A node served by ``nodestore serve`` in a subprocess, shared by the serve tests."""

import subprocess
import sys
import time

import pytest

from .helpers import _free_port, _get

pytest.importorskip("optimade")
pytest.importorskip("uvicorn")


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
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nodestore", "-C", str(node.path), "serve", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}/v1"
    for _ in range(300):
        try:
            if _get(base + "/info")[0] == 200:
                break
        except OSError:
            time.sleep(0.2)
        if proc.poll() is not None:
            pytest.fail(f"serve exited: {proc.stdout.read()}")
    else:
        proc.kill()
        pytest.fail("serve did not answer in 60 s")
    yield node, base
    proc.terminate()
    proc.wait(timeout=20)


