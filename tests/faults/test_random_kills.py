"""SIGKILL at random moments: after each kill the node equals a committed state, fsck is clean, and
running the verb again completes with the right frame count (``--large``: 100 kills per verb).

Every writing verb is killed: import, commit, label, classify, train, merge, iterate, extend,
checkout, push, and each loop stage under ``dvc repro``.  A kill lands at a uniformly random moment of the
verb's run: the span is the wall time of the previous uninterrupted run of that verb (a first
guess before one).  With ``FAULT_REPORT=path`` every kill appends one JSON line there (verb, whether
the process was still running when it was killed, the loop stage it was in).  ``FAULT_SEED=n``
draws other kill moments (every seed offset by 1000 n), and ``FAULT_CYCLES=n`` sets the loop
stages' iterations (default 1, 100 with ``--large``), so that independent runs can share the work.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pygit2
import pytest
from ase.io import write

from conftest import AIMD, REFERENCE_FILES, STRUCTURES
from nodestore.frames.io import read_file
from nodestore.repo import Node, git

from .helpers import ns, run


def seeded(n: int) -> random.Random:
    """The random kill moments of one test: seed ``n``, offset by ``FAULT_SEED``."""
    return random.Random(n + 1000 * int(os.environ.get("FAULT_SEED", "0")))


def record(verb, killed, **extra):
    path = os.environ.get("FAULT_REPORT")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"verb": verb, "killed": killed, **extra}) + "\n")


class Killer:
    """Start a command and SIGKILL its process group at a random moment of its expected run time."""

    def __init__(self, rng, guess=4.0, floor=0.2):
        self.rng, self.span, self.floor = rng, guess, floor
        self.killed = 0


    def kill(self, path, args, verb, cmd=None):
        p = ns(path, *args) if cmd is None else subprocess.Popen(
            cmd, cwd=path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        t0 = time.time()
        deadline = t0 + self.rng.uniform(self.floor, self.span)
        while time.time() < deadline and p.poll() is None:
            time.sleep(0.01)
        killed = p.poll() is None
        if killed:
            os.killpg(p.pid, signal.SIGKILL)
            self.killed += 1
        else:  # it finished first: the next kill aims inside its run time
            self.span = max(1.0, 1.1 * (time.time() - t0))
        p.wait()
        record(verb, killed)
        return killed

    def rerun(self, path, args):
        """Run to the end (the rerun after a kill); its wall time is the next kill's span."""
        t0 = time.time()
        rc, out = run(path, *args)
        self.span = max(1.0, 1.1 * (time.time() - t0))
        return rc, out


def rounds(kills: int, *killers, most: int = 4):
    """Round numbers until each of ``killers`` has killed ``kills`` runs (a run may finish before
    its kill comes), at most ``most`` x ``kills`` rounds."""
    i = 0
    while any(k.killed < kills for k in killers) and i < most * kills:
        yield i
        i += 1


def check_committed_state(path, head, message=None):
    """The node is at ``head`` or at one new commit on it (with ``message``): never in between."""
    node = Node.open(path)  # recovers first
    if str(node.git.head.target) != head:
        log = node.log(limit=2)
        assert head in log[0]["parents"], log
        assert message is None or log[0]["message"] == message, log
    st = node.status()
    assert st["clean"], st
    assert node.fsck().problems == []
    assert len(node.table) == len(node.table_at("HEAD"))
    return node


def moved(frames, dx):
    """Copies of labelled frames with the first atom moved by ``dx`` Å (new content, same labels)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    if not dx:
        return frames
    out = []
    for f in frames:
        g = f.copy()
        g.positions[0, 0] += dx
        g.calc = SinglePointCalculator(g, energy=f.get_potential_energy(), forces=f.get_forces())
        out.append(g)
    return out


def chunk_file(tmp_path, images, i, size=2, name="part"):
    """Frames ``size * i`` ... of ``images``; past the end they come round again, moved (new content)."""
    f = tmp_path / f"{name}{i}.xyz"
    start = (size * i) % len(images)
    write(str(f), moved(images[start:start + size], 0.01 * ((size * i) // len(images))), format="extxyz")
    return f


def test_random_kills_of_import(node, tmp_path, kills):
    rng = seeded(11)
    k = Killer(rng)
    images = read_file(AIMD)
    for i in rounds(kills, k):
        f = chunk_file(tmp_path, images, i)
        head = str(node.git.head.target)
        args = ["import", f, "--method", "vasp-pbe", "-m", f"part {i}"]
        k.kill(node.path, args, "import")
        node = check_committed_state(node.path, head, f"part {i}")
        rc, out = k.rerun(node.path, args)
        assert rc == 0, out
        expected = 2 * (i + 1)
        node = Node.open(node.path)
        assert len(node.table_at("HEAD")) == expected and node.status()["clean"]


def test_random_kills_of_init(tmp_path, kills):
    """The node appears whole at its path or not at all; the rerun makes it."""
    k = Killer(seeded(10), guess=4.0)
    for i in rounds(kills, k):
        target = tmp_path / f"n{i}"
        k.kill(tmp_path, ["init", "Li-P-S", target], "init")
        if not target.exists():
            rc, out = k.rerun(tmp_path, ["init", "Li-P-S", target])
            assert rc == 0, out
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(f".n{i}.")] == []
        node = Node.open(target)
        assert len(node.log()) == 1 and node.status()["clean"] and node.fsck().problems == []


def test_random_kills_of_commit(node, tmp_path, kills):
    """``nodestore commit`` of a work-tree change: killed, the change is still there, uncommitted."""
    rng = seeded(13)
    k = Killer(rng, guess=3.0)
    images = read_file(AIMD)
    for i in rounds(kills, k):
        r = node.import_files([chunk_file(tmp_path, images, i)], method="vasp-pbe", commit=False)
        assert r.new == 2
        head = str(node.git.head.target)
        manifest = (node.path / "data/table/manifest.json").read_text()
        k.kill(node.path, ["commit", "-m", f"commit {i}"], "commit")
        node = Node.open(node.path)
        assert node.fsck().problems == []
        if str(node.git.head.target) == head:  # rolled back: the work tree as it was before the commit
            assert (node.path / "data/table/manifest.json").read_text() == manifest
            assert len(node.table) == len(node.table_at("HEAD")) + 2 and not node.status()["clean"]
            rc, out = k.rerun(node.path, ["commit", "-m", f"commit {i}"])
            assert rc == 0, out
            node = Node.open(node.path)
        log = node.log(limit=1)
        assert log[0]["message"] == f"commit {i}" and log[0]["parents"] == [head]
        assert len(node.table_at("HEAD")) == 2 * (i + 1) and node.status()["clean"]
        assert node.fsck().problems == []


LJ = "lj-s2-e0.05"


@pytest.fixture
def lj_node(tmp_path):
    """A node whose reference method is the LJ labeller, reference phases labelled (a hull)."""
    from nodestore.config import default_params
    from nodestore.loop import create_node
    from nodestore.loop.actions import label_references

    params = default_params()
    params["labeller"] = {"backend": "lj"}
    node = create_node("Li-P-S", tmp_path / "lj", reference_method=LJ, params=params)
    assert label_references(node)["labelled"] >= 5
    return Node.open(node.path)


def test_random_kills_of_label_and_classify(lj_node, tmp_path, kills):
    rng = seeded(14)
    lab, cls = Killer(rng, guess=5.0), Killer(rng, guess=8.0)
    node = lj_node
    base = read_file(STRUCTURES / "Li3P_P63mmc.cif")[0]
    labelled = int((node.table.column("origin") == "labelled").sum())
    for i in rounds(kills, lab, cls):
        a = base.copy()
        a.rattle(0.03, seed=100 + i)
        f = tmp_path / f"cand{i}.xyz"
        write(str(f), a, format="extxyz")
        args = ["label", f, "--no-primitive", "-m", f"label {i}"]
        head = str(node.git.head.target)
        lab.kill(node.path, args, "label")
        node = check_committed_state(node.path, head, f"label {i}")
        if str(node.git.head.target) == head:
            rc, out = lab.rerun(node.path, args)
            assert rc == 0 and "labelled 1" in out, out
            node = Node.open(node.path)
        labelled += 1
        assert int((node.table_at("HEAD").column("origin") == "labelled").sum()) == labelled
        assert LJ in node.config["methods"] and node.fsck().problems == []
        # classify: the E_hull column of every row, one commit
        head, n = str(node.git.head.target), len(node.table)
        cls.kill(node.path, ["classify"], "classify")
        node = check_committed_state(node.path, head)
        rc, out = cls.rerun(node.path, ["classify"])
        assert rc == 0, out
        node = Node.open(node.path)
        assert len(node.table_at("HEAD")) == n and node.status()["clean"]
        import numpy as np

        rows = node.table.column("method") == LJ
        assert np.isfinite(node.table.column("e_hull")[rows]).all()


TINY_ORB = {"backend": "orb", "architecture": "orb-v3-direct",
            "config": {"latent_dim": 8, "base_mlp_hidden_dim": 8, "base_mlp_depth": 1, "head_mlp_hidden_dim": 8,
                       "head_mlp_depth": 1, "num_message_passing_steps": 1, "radius": 4.0, "max_num_neighbors": 8},
            "finetune": {"epochs": 2, "max_seconds": 20}}


def test_random_kills_of_train(tmp_path, kills):
    """``nodestore train``: killed, the node is its last commit (no new checkpoint is current);
    the rerun commits one new current force field whose parent is the one before."""
    import json

    from nodestore.config import default_params
    from nodestore.loop import create_node
    from nodestore.loop.actions import label_references

    params = default_params()
    params.update({"forcefield": TINY_ORB, "labeller": {"backend": "lj"}})
    node = create_node("Li-P-S", tmp_path / "tr", reference_method=LJ, params=params)
    assert label_references(node)["labelled"] >= 5
    node = Node.open(node.path)
    k = Killer(seeded(17), guess=10.0, floor=0.5)
    for i in rounds(kills, k):
        head = str(node.git.head.target)
        before = node.current_models().get("forcefield")
        args = ["train", "--val-fraction", "0.25", "-m", f"train {i}"]
        k.kill(node.path, args, "train")
        node = check_committed_state(node.path, head, f"train {i}")
        if str(node.git.head.target) == head:
            assert node.current_models().get("forcefield") == before
            rc, out = k.rerun(node.path, args)
            assert rc == 0, out
            node = Node.open(node.path)
        cid = node.current_models()["forcefield"]
        assert cid != before and node.log(limit=1)[0]["message"] == f"train {i}"
        meta = json.loads((node.path / "models" / cid / "meta.json").read_text())
        if before:
            parent = json.loads((node.path / "models" / before / "meta.json").read_text())["hash"]
            assert meta["parent"] == parent
        assert node.status()["clean"] and node.fsck().problems == []


def test_random_kills_of_merge(node, tmp_path, kills):
    rng = seeded(12)
    k = Killer(rng, guess=5.0, floor=0.5)
    images = read_file(AIMD)
    write(str(tmp_path / "base.xyz"), images[:1], format="extxyz")
    node.import_files([tmp_path / "base.xyz"], method="vasp-pbe", message="base")
    for i in rounds(kills, k):
        a = f"a{i}"
        start = 1 + (4 * i) % 196
        fresh = moved(images[start:start + 4], 1e-3 * ((4 * i) // 196))  # past 49 rounds: new frames
        node.branch(a)
        write(str(tmp_path / f"m{i}.xyz"), fresh[:2], format="extxyz")
        node.import_files([tmp_path / f"m{i}.xyz"], method="vasp-pbe", message=f"main {i}")
        node.checkout(a)
        write(str(tmp_path / f"s{i}.xyz"), fresh[2:], format="extxyz")
        node.import_files([tmp_path / f"s{i}.xyz"], method="vasp-pbe", message=f"side {i}")
        node.checkout("main")
        head = str(node.git.head.target)
        n_before = len(node.table)
        k.kill(node.path, ["merge", a], "merge")
        node = check_committed_state(node.path, head, f"merge {a}: +2 rows, 0 on both sides")
        if str(node.git.head.target) == head:
            rc, out = k.rerun(node.path, ["merge", a])
            assert rc == 0, out
            node = Node.open(node.path)
        assert len(node.git.head.peel().parents) == 2
        assert len(node.table) == n_before + 2 and node.status()["clean"]


def test_random_kills_of_iterate(tmp_path, kills):
    """``nodestore iterate`` (params.yaml, dvc.yaml, the pinned iteration 0), each time from the same commit."""
    import yaml

    from nodestore.loop import create_node

    node = create_node("Li-P-S", tmp_path / "it")
    node.import_files(REFERENCE_FILES, message="refs")
    base = str(node.git.head.target)
    k = Killer(seeded(15), guess=4.0)
    for i in rounds(kills, k):
        node.branch(f"b{i}", base)
        node.checkout(f"b{i}")
        k.kill(node.path, ["iterate"], "iterate")
        node = check_committed_state(node.path, base, "iterate: add iteration 1")
        if str(node.git.head.target) == base:
            rc, out = k.rerun(node.path, ["iterate"])
            assert rc == 0, out
            node = Node.open(node.path)
        assert node.log(limit=1)[0]["message"] == "iterate: add iteration 1"
        params = yaml.safe_load((node.path / "params.yaml").read_text())
        assert list(params["loop"]["iterations"]) == ["1"] and (node.path / "loop/iter-0/table.json").is_file()
        assert len(node.table_at("HEAD")) == 5 and node.fsck().problems == [] and node.status()["clean"]
        node.checkout("main")


def test_random_kills_of_extend(node, tmp_path, kills):
    """The new node appears whole or not at all; the source node is never touched."""
    node.import_files(REFERENCE_FILES, message="refs")
    node.import_files([AIMD], method="vasp-pbe", message="aimd")
    head, n = str(node.git.head.target), len(node.table)
    k = Killer(seeded(16), guess=8.0)
    for i in rounds(kills, k):
        to = tmp_path / f"ext{i}"
        k.kill(node.path, ["extend", "Cl", "--to", to], "extend")
        node = check_committed_state(node.path, head)
        assert str(node.git.head.target) == head
        assert not to.exists() or (to / "node.yaml").is_file(), sorted(p.name for p in to.iterdir())
        if not to.exists():
            rc, out = k.rerun(node.path, ["extend", "Cl", "--to", to])
            assert rc == 0, out
        new = Node.open(to)
        assert new.system == ["Cl", "Li", "P", "S"] and len(new.table_at("HEAD")) == n
        assert new.log(limit=1)[0]["message"].startswith("extend ") and new.status()["clean"]
        assert new.fsck().problems == []
        # the killed attempt's build directories (its own and its init's) are removed by the rerun
        assert [p.name for p in tmp_path.iterdir() if p.name.lstrip(".").startswith(f"ext{i}.")] == []


def test_random_kills_of_checkout(node, tmp_path, kills):
    node.import_files(REFERENCE_FILES, message="refs")
    node.branch("big")
    node.checkout("big")
    node.import_files([AIMD], method="vasp-pbe", message="aimd")
    node.checkout("main")
    frames = {"main": 5, "big": 205}
    k = Killer(seeded(17), guess=4.0)
    for i in rounds(kills, k):
        target = "big" if git.current_branch(node.git) == "main" else "main"
        k.kill(node.path, ["checkout", target], "checkout")
        node = Node.open(node.path)
        branch = git.current_branch(node.git)
        assert branch in frames and str(node.git.head.target) == str(node.git.branches.local[branch].target)
        assert node.status()["clean"] and len(node.table) == frames[branch] == len(node.table_at("HEAD"))
        assert node.fsck().problems == []
        rc, out = k.rerun(node.path, ["checkout", target])
        assert rc == 0, out
        node = Node.open(node.path)
        assert git.current_branch(node.git) == target and len(node.table) == frames[target] and node.status()["clean"]


def remote_tip(remote):
    if not (remote / "node.git" / "HEAD").exists():
        return None  # the first push had not made it yet
    bare = pygit2.Repository(str(remote / "node.git"))
    return str(bare.references["refs/heads/main"].target) if "refs/heads/main" in bare.references else None


def test_random_kills_of_push(node, tmp_path, kills):
    """The remote's ref never runs ahead of its objects; the rerun pushes; the remote clones."""
    remote = tmp_path / "remote"
    node.import_files(REFERENCE_FILES, message="refs")
    node.remote_add("origin", str(remote))
    images = read_file(AIMD)
    k = Killer(seeded(18), guess=5.0)
    for i in rounds(kills, k):
        node.import_files([chunk_file(tmp_path, images, i, size=4)], method="vasp-pbe", message=f"part {i}")
        head, before = str(node.git.head.target), remote_tip(remote)
        k.kill(node.path, ["push"], "push")
        node = check_committed_state(node.path, head)
        assert remote_tip(remote) in (before, head)
        damage = [p for p in node.fsck(remote="origin").problems if p.kind == "remote" and p.what != "origin/main"]
        assert damage == []  # every object of the remote's tips is there and intact, whatever the ref says
        rc, out = k.rerun(node.path, ["push"])
        assert rc == 0, out
        assert remote_tip(remote) == head and Node.open(node.path).fsck(remote="origin").clean
    clone = Node.clone(str(remote), tmp_path / "clone")
    assert len(clone.table) == 5 + 4 * (i + 1) and clone.fsck().problems == []


# -- each loop stage under `dvc repro` -------------------------------------------------------------

STAGES = ("generate", "screen", "select", "label", "train", "curate")
#: a first guess of each stage's seconds on a 2-core machine, before the tiny loop's own timings
GUESS = {"generate": 2, "screen": 12, "select": 4, "label": 3, "train": 5, "curate": 12}
STARTUP = 3.0  # dvc's own start and the stage's imports


@pytest.fixture
def loop_cycles(request):
    """Iterations whose every stage is killed once: 1 by default (6 kills), 100 with --large
    (``FAULT_CYCLES`` overrides both)."""
    if os.environ.get("FAULT_CYCLES"):
        return int(os.environ["FAULT_CYCLES"])
    return 100 if request.config.getoption("--large") else 1


def running_stage(it_dir):
    done = {s for s in STAGES if (it_dir / "timings" / f"{s}.json").is_file()}
    return next((s for s in STAGES if s not in done), None)


def test_random_kills_of_each_loop_stage_under_dvc_repro(tmp_path, loop_cycles):
    from test_loop import tiny_params

    from nodestore.frames import FrameTable
    from nodestore.loop import create_node
    from nodestore.loop.actions import label_references

    node = create_node("Li-P-S", tmp_path / "loop", reference_method=LJ, params=tiny_params())
    assert label_references(node)["labelled"] >= 5
    rng = seeded(19)
    seconds = dict(GUESS)
    repro = [sys.executable, "-m", "dvc", "repro"]
    # the stage commands are `nodestore stage ...`, found on PATH as a user's activated venv would have it
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    for cycle in range(loop_cycles):
        rc, out = run(node.path, "iterate")
        assert rc == 0, out
        node = Node.open(node.path)
        k = cycle + 1
        it_dir = node.path / f"loop/iter-{k}"
        head, manifest = str(node.git.head.target), (node.path / "data/table/manifest.json").read_text()
        n_before, keys_before = len(node.table), set(node.table.row_keys())
        for i, stage in enumerate(STAGES):
            if running_stage(it_dir) is None or STAGES.index(running_stage(it_dir)) > i:
                continue  # an earlier kill's rerun already finished it
            if i and running_stage(it_dir) != stage:  # the rerun of the stages before it, to the end
                p = subprocess.run([*repro, f"{STAGES[i - 1]}@{k}"], cwd=node.path, env=env, capture_output=True, text=True,
                                   timeout=900)
                assert p.returncode == 0 and running_stage(it_dir) == stage, p.stdout + p.stderr
            p = subprocess.Popen(repro, cwd=node.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True)
            # the stages before it are done (cache hits): the kill lands in dvc's start or in this stage's run
            time.sleep(rng.uniform(0.0, STARTUP + seconds[stage]))
            hit = running_stage(it_dir)
            killed = p.poll() is None
            if killed:
                os.killpg(p.pid, signal.SIGKILL)
            out = p.communicate()[0]
            assert killed or p.returncode == 0, out
            record("dvc repro", killed, stage=hit, aimed_at=stage)
            node = Node.open(node.path)
            # until `nodestore commit`, the node is its last commit, whatever the stage was doing
            assert str(node.git.head.target) == head and f"refs/tags/iter-{k}" not in node.git.references
            assert (node.path / "data/table/manifest.json").read_text() == manifest
            problems = node.fsck().problems
            if problems and {x.kind for x in problems} <= {"dvc-rwlock", "dvc-lock"}:
                # dvc was killed while rewriting its lock table or dvc.lock in place: fsck names it
                # and --repair removes the one and restores the other from the last commit (raw
                # `dvc repro` would refuse to run until then; the iteration's stages run again)
                for x in problems:
                    record("dvc rwlock truncated" if x.kind == "dvc-rwlock" else "dvc.lock truncated", True, stage=hit)
                rc, out = run(node.path, "fsck", "--repair")
                assert rc == 0, out
                problems = node.fsck().problems
            assert problems == []
        p = subprocess.run(repro, cwd=node.path, env=env, capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stdout + p.stderr
        for s in STAGES:
            seconds[s] = json.loads((it_dir / "timings" / f"{s}.json").read_text())["seconds"]
        rc, out = run(node.path, "commit")
        assert rc == 0 and f"iteration {k} committed" in out, out
        node = Node.open(node.path)
        assert f"refs/tags/iter-{k}" in node.git.references and node.show()["iterations"] == k
        curated = set(FrameTable.open(it_dir / "curated").row_keys())
        head_keys = set(node.table_at("HEAD").row_keys())
        assert curated <= head_keys and len(head_keys) == n_before + len(curated - keys_before)  # no frame lost
        assert node.status()["clean"] and node.fsck().problems == []
