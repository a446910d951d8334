"""SIGKILL at random moments: after each kill the node equals a committed state, fsck is clean, and
running the verb again completes with the right frame count (``--large``: 100 kills per verb)."""

import os
import random
import signal
import time

from ase.io import write

from conftest import AIMD
from nodestore.frames.io import read_file
from nodestore.repo import Node

from .helpers import ns, run


def check_committed_state(path, head, message):
    """The node is at ``head`` or at one new commit on it with ``message``: never in between."""
    node = Node.open(path)  # recovers first
    if str(node.git.head.target) != head:
        log = node.log(limit=2)
        assert log[0]["message"] == message and head in log[0]["parents"], log
    st = node.status()
    assert st["clean"], st
    assert node.fsck().problems == []
    assert len(node.table) == len(node.table_at("HEAD"))
    return node


def kill_randomly(path, args, rng, span=(0.3, 4.0)):
    p = ns(path, *args)
    time.sleep(rng.uniform(*span))
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def test_random_kills_of_import(node, tmp_path, kills):
    rng = random.Random(11)
    images = read_file(AIMD)
    for i in range(kills):
        f = tmp_path / f"part{i}.xyz"
        chunk = images[(2 * i) % 200:(2 * i) % 200 + 2]
        write(str(f), chunk, format="extxyz")
        head = str(node.git.head.target)
        kill_randomly(node.path, ["import", f, "--method", "vasp-pbe", "-m", f"part {i}"], rng)
        node = check_committed_state(node.path, head, f"part {i}")
        rc, out = run(node.path, "import", f, "--method", "vasp-pbe", "-m", f"part {i}")
        assert rc == 0, out
        expected = min(200, 2 * (i + 1))
        node = Node.open(node.path)
        assert len(node.table_at("HEAD")) == expected and node.status()["clean"]


def test_random_kills_of_merge(node, tmp_path, kills):
    rng = random.Random(12)
    images = read_file(AIMD)
    write(str(tmp_path / "base.xyz"), images[:1], format="extxyz")
    node.import_files([tmp_path / "base.xyz"], method="vasp-pbe", message="base")
    for i in range(kills):
        a = f"a{i}"
        start = 1 + (4 * i) % 196
        node.branch(a)
        write(str(tmp_path / f"m{i}.xyz"), images[start:start + 2], format="extxyz")
        node.import_files([tmp_path / f"m{i}.xyz"], method="vasp-pbe", message=f"main {i}")
        node.checkout(a)
        write(str(tmp_path / f"s{i}.xyz"), images[start + 2:start + 4], format="extxyz")
        node.import_files([tmp_path / f"s{i}.xyz"], method="vasp-pbe", message=f"side {i}")
        node.checkout("main")
        head = str(node.git.head.target)
        n_before = len(node.table)
        kill_randomly(node.path, ["merge", a], rng, span=(0.5, 5.0))
        node = check_committed_state(node.path, head, f"merge {a}: +2 rows, 0 on both sides")
        if str(node.git.head.target) == head:
            rc, out = run(node.path, "merge", a)
            assert rc == 0, out
            node = Node.open(node.path)
        assert len(node.git.head.peel().parents) == 2
        assert len(node.table) == n_before + 2 and node.status()["clean"]
