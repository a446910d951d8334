"""Finite-T, P stability (``nodestore analyze stability``): phonons of a known phase, and the node
analysis's cache (survives a commit, stale after the force field changes, reruns only what is missing)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from nodestore.loop.stability import CACHE, StabilitySettings, analyze_stability, read_cache, stability_of


def test_phonon_free_energy_of_antifluorite_li2s_is_finite_without_imaginary_modes():
    from ase.build import bulk

    from nodestore.models.registry import from_config

    ff = from_config("forcefield", {"backend": "sevenn", "pretrained": "7net-0"})
    s = StabilitySettings(temperatures=(0, 300, 600), pressures=(0, 5), imaginary_tol_thz=0.1)
    r = stability_of(ff, bulk("SLi2", "fluorite", a=5.70), s)
    at0, at5 = r["pressures"]
    for p in (at0, at5):
        f = np.array(p["f_vib_per_atom"])
        assert np.all(np.isfinite(f)) and p["imaginary_modes"] == 0 and p["min_frequency_thz"] > -0.1
        assert f[0] > 0.02 and np.all(np.diff(f) < 0)  # zero-point energy, then F falls with T
    assert at5["volume_per_atom"] < at0["volume_per_atom"]  # compressed
    assert at5["enthalpy_per_atom"] > at0["enthalpy_per_atom"]  # H = E + PV rises with P
    assert at5["f_vib_per_atom"][0] > at0["f_vib_per_atom"][0]  # stiffer under pressure
    # per atom, whichever cell: the conventional 12-atom cell gives the primitive cell's F_vib
    conv = stability_of(ff, bulk("SLi2", "fluorite", a=5.70, cubic=True),
                        StabilitySettings(temperatures=(0, 300, 600), pressures=(0,)))["pressures"][0]
    assert np.allclose(conv["f_vib_per_atom"], at0["f_vib_per_atom"], atol=2e-3)


def test_node_analysis_is_stored_cached_stale_after_the_force_field_changes_and_resumes(stability_node):
    from nodestore.models.registry import from_config
    from nodestore.repo import Node

    node = stability_node
    s = StabilitySettings(temperatures=(0, 600), pressures=(0,), supercell_min_length=6.0, steps=150, fmax=0.05)
    r = analyze_stability(node, s, chunk=2, progress=False)
    n = r.computed + len(r.failed)
    assert n >= 4 and r.cached == 0 and not r.stale and len(r.commits) == (n + 1) // 2  # one commit per chunk
    assert r.entries and all(np.isfinite(e["g_hull_600K_0GPa"]) for e in r.entries)
    assert min(e["g_hull_0K_0GPa"] for e in r.entries) == pytest.approx(0.0, abs=1e-9)  # the hull's own phases
    head = str(node.git.head.target)
    stored = read_cache(node, rev=head)  # queryable at a commit
    assert set(stored) == {e["frame_id"] for e in r.entries} | {f for f, _ in r.failed} - set()
    # a rerun computes nothing
    r2 = analyze_stability(Node.open(node.path), s, progress=False)
    assert r2.computed == 0 and r2.cached == len(stored) and not r2.commits
    # drop one result (as a run killed before its last chunk would leave it): only that one runs
    doc = json.loads((node.path / CACHE).read_text())
    gone = sorted(doc["results"])[0]
    del doc["results"][gone]
    with node.transaction("drop one stability result") as tx:
        tx.write_json(CACHE, doc)
    r3 = analyze_stability(Node.open(node.path), s, progress=False)
    assert r3.computed + len(r3.failed) == 1 and r3.cached == len(stored) - 1
    # a new current force field: every stored result is stale; kept on request, else recomputed
    other = from_config("forcefield", {"backend": "pair", "depth": 0.25})
    ckpt = node.path.parent / "ff2"
    other.save(ckpt)
    with node.transaction("a fine-tuned force field") as tx:
        tx.add_checkpoint(ckpt, "forcefield")
    node = Node.open(node.path)
    kept = analyze_stability(node, s, keep_stale=True, progress=False)
    assert kept.computed == 0 and len(kept.stale) == len(stored) and all(e["stale"] for e in kept.entries)
    fresh = analyze_stability(node, s, progress=False)
    assert fresh.computed + len(fresh.failed) == len(stored) and not any(e["stale"] for e in fresh.entries)


def test_cli_analyze_stability(stability_node, tmp_path):
    node = stability_node
    png = tmp_path / "map.png"
    p = subprocess.run([sys.executable, "-m", "nodestore", "-C", str(node.path), "analyze", "stability",
                        "-T", "0", "-T", "300", "-P", "1", "--supercell", "6", "--plot", str(png), "--json"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout)
    assert r["pressures"] == [1.0] and r["temperatures"] == [0.0, 300.0] and r["entries"]
    assert "g_hull_300K_1GPa" in r["entries"][0] and png.stat().st_size > 10_000
    bad = subprocess.run([sys.executable, "-m", "nodestore", "-C", str(node.path), "analyze", "stability",
                          "-T", "-5"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
