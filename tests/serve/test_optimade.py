"""``nodestore serve`` (OPTIMADE API of a node) and ``nodestore import optimade:URL``, against a live
server in a subprocess (optimade configures itself once per process)."""

import subprocess
import sys
import urllib.parse

import numpy as np
import pytest

from .helpers import _free_port, _get


def _ids(base: str, flt: str) -> set[str]:
    ids, url = set(), f"{base}/structures?" + urllib.parse.urlencode({"filter": flt, "page_limit": 7,
                                                                      "response_fields": "immutable_id"})
    while url:
        status, doc = _get(url)
        assert status == 200, doc
        ids |= {d["attributes"]["immutable_id"] for d in doc["data"]}
        url = (doc.get("links") or {}).get("next")
        url = url if isinstance(url, str) or url is None else url.get("href")
    return ids


def test_optimade_validator_passes(served):
    from optimade.validator import ImplementationValidator

    _, base = served
    v = ImplementationValidator(base_url=base, verbosity=-1)
    v.validate_implementation()
    assert v.valid, v.results.failure_messages
    assert v.results.failure_count == 0 and v.results.internal_failure_count == 0


def test_filters_are_masks_of_the_table(served):
    from pymatgen.core import Composition

    node, base = served
    t = node.table_at("HEAD")
    fid = t.column("frame_id")
    formula = t.column("formula")
    els = [set(Composition(f).as_dict()) for f in formula]
    n_atoms = t.column("n_atoms")
    method = t.column("method")
    cases = {
        'elements HAS ALL "Li","S" AND nelements=2': [e == {"Li", "S"} for e in els],
        'elements HAS ONLY "P","S"': [e <= {"P", "S"} for e in els],
        "nsites < 20 OR NOT nelements = 3": [(n < 20) or len(e) != 3 for n, e in zip(n_atoms, els)],
        '_nodestore_method = "vasp-pbe"': list(method == "vasp-pbe"),
        "_nodestore_energy IS KNOWN AND nsites >= 83": list(np.isfinite(t.column("energy")) & (n_atoms >= 83)),
        'chemical_formula_reduced STARTS WITH "Li3"': [Composition(f).reduced_formula.startswith("Li3") and
                                                      Composition(f).reduced_formula == _alpha(f) for f in formula],
    }
    for flt, want in cases.items():
        assert _ids(base, flt) == set(fid[np.asarray(want, dtype=bool)].tolist()), flt


def _alpha(formula):
    from pymatgen.core import Composition

    c = Composition(formula).reduced_composition
    return "".join(f"{el}{'' if n == 1 else int(n)}" for el, n in sorted((str(k), v) for k, v in c.items()))


def test_sort_pagination_and_errors(served):
    node, base = served
    n_atoms = sorted(node.table_at("HEAD").column("n_atoms").tolist(), reverse=True)
    status, doc = _get(f"{base}/structures?sort=-nsites&page_limit=3&page_offset=1&response_fields=nsites")
    assert status == 200 and [d["attributes"]["nsites"] for d in doc["data"]] == n_atoms[1:4]
    assert doc["meta"]["more_data_available"] is True and doc["meta"]["data_returned"] == len(n_atoms)
    status, doc = _get(f"{base}/structures?sort=nsites&page_limit=500&response_fields=nsites")
    assert [d["attributes"]["nsites"] for d in doc["data"]] == n_atoms[::-1]
    assert doc["meta"]["more_data_available"] is False
    status, doc = _get(f"{base}/structures?" + urllib.parse.urlencode({"filter": "nsites HAS 3"}))
    assert status == 400 and "HAS needs a list" in doc["errors"][0]["detail"]
    status, doc = _get(f"{base}/structures?" + urllib.parse.urlencode({"filter": "_nodestore_nothing > 1"}))
    assert status == 400


def test_round_trip_import_of_a_filter(served, tmp_path):
    from nodestore.repo import Node

    node, base = served
    flt = 'elements HAS "Li" AND nsites >= 83'
    want = _ids(base, flt)
    assert want
    fresh = Node.init("Li-P-S", tmp_path / "fresh")
    r = subprocess.run([sys.executable, "-m", "nodestore", "-C", str(fresh.path), "import", f"optimade:{base}",
                        "--filter", flt], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    t = fresh.table_at("HEAD")
    assert set(t.column("frame_id").tolist()) == want
    # the provider's energies keep a method of their own, and say where they came from
    assert set(t.column("method").tolist()) == {"optimade-nodestore-vasp-pbe"}
    src = node.table_at("HEAD")
    e_src = dict(zip(src.column("frame_id"), src.column("energy")))
    assert all(np.isclose(e, e_src[f]) for f, e in zip(t.column("frame_id"), t.column("energy")))
    assert all(s.startswith(f"optimade:{base.removesuffix('/v1')} structures/") for s in t.column("source"))


def test_unreachable_provider_is_one_message_and_writes_nothing(tmp_path):
    from nodestore.repo import Node

    fresh = Node.init("Li-P-S", tmp_path / "fresh")
    head = str(fresh.git.head.target)
    r = subprocess.run([sys.executable, "-m", "nodestore", "-C", str(fresh.path), "import",
                        f"optimade:http://127.0.0.1:{_free_port()}/v1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "cannot query" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert str(fresh.git.head.target) == head and len(fresh.table) == 0
    r = subprocess.run([sys.executable, "-m", "nodestore", "-C", str(fresh.path), "import", "optimade:ftp://x"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "http(s)" in r.stderr
    r = subprocess.run([sys.executable, "-m", "nodestore", "-C", str(fresh.path), "import",
                        "optimade:http://127.0.0.1:1", "--filter", 'elements HAS "Li" AND'],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not an OPTIMADE filter" in r.stderr and "Traceback" not in r.stderr
    assert str(fresh.git.head.target) == head
