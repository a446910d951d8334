"""Defect 7 of issue 11: DVC's foreach stage names are the iteration numbers (``curate@3`` is iteration 3)."""

import yaml

from nodestore.loop.iterate import iterate
from nodestore.loop.pipeline import dvc_yaml


def stage_names(path):
    from dvc.repo import Repo

    repo = Repo(str(path))
    try:
        return {s.name: s.cmd for s in repo.index.stages if getattr(s, "name", None)}
    finally:
        repo.close()


def test_stage_at_k_is_iteration_k(node):
    r = iterate(node)
    assert r.added == 1
    params = yaml.safe_load((node.path / "params.yaml").read_text())
    assert params["loop"]["iterations"] == {"1": {"prev": 0}}
    # a second iteration as `nodestore iterate` writes it once the first is committed
    params["loop"]["iterations"]["2"] = {"prev": 1}
    (node.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    names = stage_names(node.path)
    assert names["curate@2"] == "nodestore stage curate 2" and names["generate@1"] == "nodestore stage generate 1"
    assert not any(n.endswith("@0") for n in names)


def test_a_node_with_the_list_form_is_migrated(node):
    # a node made by an older nodestore: iterations as a list, stages named by list index
    old_yaml = dvc_yaml().replace("${key}", "${item.k}")
    (node.path / "dvc.yaml").write_text(old_yaml)
    p = node.path / "params.yaml"
    params = yaml.safe_load(p.read_text())
    params["loop"]["iterations"] = [{"k": 1, "prev": 0}]
    p.write_text(yaml.safe_dump(params, sort_keys=False))
    (node.path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        "generate@0": {"cmd": "nodestore stage generate 1"}}}, sort_keys=False))
    node.commit("as an older nodestore left it")
    assert "generate@0" in stage_names(node.path)
    r = iterate(node)  # iteration 1 is pending: nothing added, the loop is migrated
    assert r.added is None and r.pending == [1]
    assert yaml.safe_load(p.read_text())["loop"]["iterations"] == {"1": {"prev": 0}}
    assert yaml.safe_load((node.path / "dvc.lock").read_text())["stages"] == {
        "generate@1": {"cmd": "nodestore stage generate 1"}}
    assert set(stage_names(node.path)) >= {"generate@1", "curate@1"}
    assert node.status()["clean"] and node.log()[0]["message"].startswith("iterate: key loop.iterations by k")
