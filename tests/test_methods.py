"""node.yaml's methods: what each method name stands for, recorded with the labels it names."""

import pytest
import yaml
from ase.build import bulk
from ase.io import write

from nodestore.errors import MergeConflict, ValidationError
from nodestore.loop.actions import label_files
from nodestore.repo import Node
from test_loop import LJ, tiny_params


@pytest.fixture
def lj_node(tmp_path):
    from nodestore.loop import create_node

    node = create_node("Li-P-S", tmp_path / "n", reference_method=LJ, params=tiny_params())
    write(str(tmp_path / "Li2S.cif"), bulk("SLi2", "fluorite", a=5.70))
    write(str(tmp_path / "Li.cif"), bulk("Li", "bcc", a=3.44))
    return node, tmp_path / "Li2S.cif", tmp_path / "Li.cif"


def _set_labeller(node, section):
    params = yaml.safe_load((node.path / "params.yaml").read_text())
    params["labeller"] = section
    (node.path / "params.yaml").write_text(yaml.safe_dump(params))
    node.commit("labeller settings")


def test_labels_record_their_method(lj_node):
    node, li2s, _ = lj_node
    r = label_files(node, [li2s], labeller="lj", message="Li2S")
    assert r["labelled"] == 1 and r["commit"]
    rec = node.config["methods"][LJ]
    assert rec["code"] == "lj" and rec["functional"] == "lennard-jones"
    assert rec["params"] == {"sigma": 2.0, "epsilon": 0.05, "rc": 5.0}
    assert rec["versions"]  # the code version reported by the worker
    # recorded in the same commit as the labels
    assert "methods" in yaml.safe_load(node.git.revparse_single("HEAD").tree["node.yaml"].data)
    assert Node.open(node.path).show()["methods"] == {LJ: 1}


def test_other_settings_under_a_recorded_name_are_refused(lj_node):
    node, li2s, li = lj_node
    label_files(node, [li2s], labeller="lj", message="Li2S")
    _set_labeller(node, {"backend": "lj", "rc": 4.0})  # same name lj-s2-e0.05, another cutoff
    head, frames = str(node.git.head.target), len(node.table)
    with pytest.raises(ValidationError, match=r"method 'lj-s2-e0.05' is recorded in node.yaml with other "
                                              r"settings \(params .*'rc': 5.0.* vs .*'rc': 4.0"):
        label_files(node, [li], message="Li")
    assert str(node.git.head.target) == head and len(node.table) == frames


def test_a_method_name_computed_two_ways_does_not_merge(lj_node):
    node, li2s, li = lj_node
    node.branch("short-cutoff")
    label_files(node, [li2s], labeller="lj", message="Li2S, rc 5")
    node.checkout("short-cutoff")
    _set_labeller(node, {"backend": "lj", "rc": 4.0})
    label_files(node, [li], message="Li, rc 4")
    node.checkout("main")
    head = str(node.git.head.target)
    node_yaml = (node.path / "node.yaml").read_text()
    for prefer in (None, "theirs"):
        with pytest.raises(MergeConflict, match="method 'lj-s2-e0.05' stands for other settings on each side"):
            node.merge("short-cutoff", prefer=prefer)
        assert str(node.git.head.target) == head and (node.path / "node.yaml").read_text() == node_yaml


def test_merge_and_extend_carry_methods(lj_node, tmp_path):
    node, li2s, li = lj_node
    node.branch("b")
    label_files(node, [li2s], labeller="lj", message="Li2S")
    node.checkout("b")
    label_files(node, [li], labeller="lj", message="Li")
    node.checkout("main")
    assert node.merge("b")["result"] == "merged"
    assert set(Node.open(node.path).config["methods"]) == {LJ}
    big = node.extend(["Cl"], tmp_path / "Cl-Li-P-S")
    assert big.config["methods"] == node.config["methods"]


def test_a_force_field_prediction_is_told_from_a_label_by_its_method():
    from nodestore.repo.methods import FF_PREFIX, is_prediction

    assert is_prediction(FF_PREFIX + "sevenn/7net-0@gpaw-pbe-pw300")
    assert not is_prediction("gpaw-pbe-pw300") and not is_prediction("") and not is_prediction("vasp-ff:x")
