"""Science commands through the CLI on a node whose references carry (cheap) labels."""

import json
import subprocess
import sys

import pytest

from conftest import AIMD, STRUCTURES
from test_loop import LJ, tiny_params

EXE = [sys.executable, "-m", "nodestore"]


def ns(node, *args, check=True):
    p = subprocess.run([*EXE, "-C", str(node), *map(str, args)], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"nodestore {' '.join(map(str, args))}: {p.stderr}")
    return p


@pytest.fixture(scope="module")
def labelled_node(tmp_path_factory):
    from nodestore.loop import create_node

    path = tmp_path_factory.mktemp("sci") / "n"
    create_node("Li-P-S", path, reference_method=LJ, params=tiny_params())
    # label the shipped reference files through the CLI (primitive cells, LJ labeller)
    out = ns(path, "label", *sorted(STRUCTURES.glob("*.cif")), "--labeller", "lj", "--origin", "reference",
             "-m", "label references", "--json").stdout
    r = json.loads(out)
    assert r["labelled"] == 4 and r["method"] == LJ and not r["failures"]
    ns(path, "import", AIMD, "--method", "vasp-pbe", "-m", "aimd")
    return path


def test_hull_classify_query_entropy(labelled_node, tmp_path):
    n = labelled_node
    # Li is missing from the LJ references (no bcc Li file shipped): a clear NoHullError, exit 9
    p = ns(n, "hull", check=False)
    assert p.returncode == 9 and "missing elemental reference for Li" in p.stderr
    r = json.loads(ns(n, "classify", "--json").stdout)
    assert r["classified"] >= 4 and r["novelty"]["duplicate"] >= 4  # the references are the known phases
    rows = json.loads(ns(n, "query", "origin == 'reference' and is_entry", "--format", "json").stdout)
    assert len(rows) >= 3 and all(x["novelty"] == "duplicate" for x in rows)
    aimd = json.loads(ns(n, "query", "method == 'vasp-pbe' and energy_per_atom < -4", "--format", "json").stdout)
    assert len(aimd) == 200 and not any(x["is_entry"] for x in aimd)  # MD frames are training data, not entries
    bad = ns(n, "query", "__import__('os').system('true')", check=False)
    assert bad.returncode == 2 and "not allowed" in bad.stderr
    ns(n, "query", "formula == 'Li3PS4'", "--format", "extxyz", "-o", tmp_path / "q.xyz")
    assert (tmp_path / "q.xyz").stat().st_size > 0
    ent = json.loads(ns(n, "entropy", "--json").stdout)
    assert ent["H"] > 0 and set(ent["per_element"]) == {"Li", "P", "S"}


def test_hull_with_vasp_references(tmp_path):
    """AIMD energies (VASP PBE) on the hull of the MP elemental references of the same method."""
    from nodestore.chem.api import hull_for_table
    from nodestore.chem.hull import mp_elemental_references
    from nodestore.loop import create_node

    node = create_node("Li-P-S", tmp_path / "v", reference_method="vasp-pbe")
    node.import_files([AIMD], method="vasp-pbe", message="aimd")
    _, e_hull, e_form = hull_for_table(node.table, "vasp-pbe", extra_entries=mp_elemental_references(["Li", "P", "S"]))
    assert (e_form < -0.3).all() and (e_hull >= 0).all()


def test_predict_and_model_list(labelled_node, tmp_path):
    from ase.build import bulk
    from ase.io import write

    li2s = tmp_path / "Li2S.cif"
    write(str(li2s), bulk("SLi2", "fluorite", a=5.70))
    rows = json.loads(ns(labelled_node, "predict", li2s, "--relax", "--steps", "3", "--json").stdout)
    assert rows[0]["formula"] == "Li2S" and rows[0]["method"].startswith("ff:orb")
    assert "e_hull" in rows[0]
    assert json.loads(ns(labelled_node, "model", "list", "--json").stdout) == []
    # a checkpoint of the wrong kind is one line and the backend exit code, not a traceback
    from nodestore.models.generator import PyxtalGenerator

    PyxtalGenerator(compositions=["Li2S"]).save(tmp_path / "gen")
    bad = ns(labelled_node, "predict", li2s, "--model", tmp_path / "gen", check=False)
    assert bad.returncode == 8 and "a generator checkpoint, not a forcefield checkpoint" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_label_through_a_dask_scheduler(tmp_path):
    from ase.build import bulk
    from ase.io import write
    from distributed import LocalCluster

    from nodestore.loop import create_node

    path = tmp_path / "d"
    create_node("Li-P-S", path, reference_method=LJ, params=tiny_params())
    li2s = tmp_path / "Li2S.cif"
    write(str(li2s), [bulk("SLi2", "fluorite", a=5.70)])
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                      dashboard_address=None) as cluster:
        r = json.loads(ns(path, "label", li2s, "--labeller", "lj", "--scheduler", cluster.scheduler_address,
                          "-m", "Li2S on the cluster", "--json").stdout)
        # the label ran as a task of the cluster's scheduler
        prefixes = list(cluster.scheduler.task_prefixes)
    assert r["labelled"] == 1 and r["method"] == LJ and r["commit"]
    assert "label_one" in prefixes
    bad = ns(path, "label", li2s, "--labeller", "lj", "--scheduler", "localhost:1", check=False)
    assert bad.returncode == 2 and "not a Dask scheduler address" in bad.stderr


def _kill_first_label_plugin(marker):
    """A worker plugin: the first worker to start a ``label_one`` task dies (``os._exit``), as under
    the OOM killer; the marker file makes it happen once across worker restarts."""

    from distributed import WorkerPlugin

    class KillFirstLabel(WorkerPlugin):
        def transition(self, key, start, finish, **kwargs):
            import os

            name = key if isinstance(key, str) else str(key[0])
            if finish == "executing" and "label_one" in name and not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)

    return KillFirstLabel()


def test_label_stage_survives_a_worker_killed_mid_label(tmp_path):
    """A Dask worker dies while it labels: the scheduler reruns its item elsewhere, the verb
    commits every label, and none is lost or recorded as failed."""
    import cloudpickle
    from ase.build import bulk
    from ase.io import write
    from distributed import Client, LocalCluster

    from nodestore.loop import create_node

    path = tmp_path / "d"
    create_node("Li-P-S", path, reference_method=LJ, params=tiny_params())
    cifs = []
    for i, a in enumerate((5.60, 5.70, 5.80)):
        cifs.append(tmp_path / f"Li2S-{i}.cif")
        write(str(cifs[-1]), [bulk("SLi2", "fluorite", a=a)])
    marker = tmp_path / "killed"
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            client.register_plugin(_kill_first_label_plugin(str(marker)), name="kill-first-label")
            r = json.loads(ns(path, "label", *cifs, "--labeller", "lj", "--scheduler", cluster.scheduler_address,
                              "-m", "Li2S, one worker killed", "--json").stdout)
    assert marker.exists()  # a worker did die mid-label
    assert r["labelled"] == 3 and not r["failures"] and r["commit"]
    from nodestore.repo.node import Node

    t = Node.open(path).table
    labelled = t.column("method") == LJ
    assert labelled.sum() == 3  # each structure once: none lost, none twice
    assert len(set(t.column("energy")[labelled].round(8))) == 3  # the three cells, not one of them twice
