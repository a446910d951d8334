"""Li-ion transport (``nodestore analyze transport``): the batched NVT integrator and thermostat,
kinisi's diffusivity on a random walk of known D, the Arrhenius fit on a known activation energy,
and the node analysis (cached, stale after the force field changes, query columns, the CLI)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from nodestore.errors import ValidationError
from nodestore.loop.transport import (K_B, TransportSettings, analyze_transport, arrhenius, diffusivity,
                                      run_nvt)


def _pair():
    from nodestore.models.registry import from_config

    return from_config("forcefield", {"backend": "pair"})


def _li2s():
    from ase.build import bulk

    return bulk("SLi2", "fluorite", a=5.70, cubic=True)


def test_bussi_thermostat_holds_each_system_at_its_temperature_and_nve_conserves_energy():
    ff = _pair()
    s = TransportSettings(temperatures=(400, 900), equilibration_ps=0.2, production_ps=0.6, sample_every=10)
    big = _li2s().repeat(2)  # 96 atoms: the kinetic temperature fluctuates by sqrt(2 / 3N) = 8 %
    runs = run_nvt(ff, [big, big], [400.0, 900.0], s)
    assert runs[0]["temperature"] == pytest.approx(400, rel=0.1)
    assert runs[1]["temperature"] == pytest.approx(900, rel=0.1)
    assert runs[0]["positions"].shape == (s.n_samples + 1, 96, 3)
    # the blocking standard error: positive, and the mean within 4 of it of the target
    for run, t in zip(runs, (400.0, 900.0)):
        assert 0 < run["temperature_sem"] < 0.1 * t
        assert abs(run["temperature"] - t) < 4 * run["temperature_sem"] + 0.02 * t
    # without the thermostat, velocity Verlet conserves the total energy
    total = []
    nve = TransportSettings(temperatures=(300,), equilibration_ps=0, production_ps=0.4, timestep_fs=1.0)
    run_nvt(ff, [_li2s()], [300.0], nve, thermostat=False,
            record=lambda step, e, kin: total.append(e[0] + kin[0]))
    drift = (max(total) - min(total)) / 12
    assert drift < 2e-3  # eV/atom over 400 steps


def test_blocking_sem_sees_the_correlation_that_the_naive_error_misses():
    from nodestore.loop.transport import blocking_sem

    rng = np.random.default_rng(0)
    white = rng.standard_normal(4096)
    assert blocking_sem(white) == pytest.approx(1 / 64, rel=0.3)
    # an AR(1) series with correlation time ~50 steps: the naive error is ~10x too small
    ar = np.zeros(4096)
    for i in range(1, 4096):
        ar[i] = 0.98 * ar[i - 1] + rng.standard_normal()
    naive = ar.std(ddof=1) / 64
    assert blocking_sem(ar) > 4 * naive
    assert np.isnan(blocking_sem([1.0] * 10))


def test_kinisi_recovers_the_diffusivity_of_a_random_walk():
    from ase import Atoms

    rng = np.random.default_rng(1)
    n_li, n_samples, box = 64, 400, 20.0
    s = TransportSettings(temperatures=(600,), timestep_fs=2.0, sample_every=10, production_ps=8.0)
    sigma = 0.3  # Å per axis per sample interval (20 fs)
    steps = rng.normal(0, sigma, (n_samples, n_li, 3))
    walk = np.concatenate([rng.uniform(0, box, (1, n_li, 3)), steps]).cumsum(axis=0)
    frame = Atoms(f"Li{n_li}", cell=[box] * 3, pbc=True)
    d = diffusivity(frame, walk % box, s)  # wrapped, as MD gives them
    expected = sigma ** 2 / (2 * 20e-15) * 1e-16  # Å^2/s -> cm^2/s
    assert d["resolved"] and d["d_mean"] == pytest.approx(expected, rel=0.2)
    assert 0 < d["d_std"] < 0.3 * d["d_mean"]


def test_arrhenius_recovers_a_known_activation_energy_with_its_spread():
    rng = np.random.default_rng(0)
    ea, d0, temps = 0.25, 1e-3, (600.0, 800.0, 1000.0, 1200.0)
    samples = [d0 * np.exp(-ea / (K_B * t)) * np.exp(rng.normal(0, 0.1, 500)) for t in temps]
    fit = arrhenius(temps, samples)
    assert fit.ea == pytest.approx(ea, abs=0.03) and 0.005 < fit.ea_err < 0.05
    assert fit.d_room == pytest.approx(d0 * np.exp(-ea / (K_B * 300)), rel=0.5)
    assert fit.d_room_lo < fit.d_room < fit.d_room_hi
    assert arrhenius((600.0,), samples[:1]) is None


def test_arrhenius_chi2_tells_one_line_from_two_regimes():
    rng = np.random.default_rng(3)
    temps = (500.0, 600.0, 700.0, 850.0, 1000.0)

    def draws(d):
        return [x * np.exp(rng.normal(0, 0.1, 400)) for x in d]

    line = arrhenius(temps, draws([1e-3 * np.exp(-0.3 / (K_B * t)) for t in temps]))
    assert line.chi2_red < 4 and line.ea == pytest.approx(0.3, abs=0.03)
    # activated up to 700 K, flat above (the demo's beta-Li3PS4): one line does not hold them
    kinked = arrhenius(temps, draws([1e-3 * np.exp(-0.3 / (K_B * min(t, 700.0))) for t in temps]))
    assert kinked.chi2_red > 4
    low = arrhenius(temps[:3], draws([1e-3 * np.exp(-0.3 / (K_B * t)) for t in temps[:3]]))
    assert low.ea == pytest.approx(0.3, abs=0.04)
    assert arrhenius(temps[:2], draws([1e-5, 2e-5])).chi2_red is None


def test_settings_are_checked():
    for bad in ({"temperatures": (-5,)}, {"timestep_fs": 8}, {"production_ps": 0.01},
                {"temperatures": (float("nan"),)}):
        with pytest.raises(ValidationError):
            TransportSettings(**bad)


SMALL = dict(temperatures=(900.0, 1500.0), equilibration_ps=0.1, production_ps=0.4, sample_every=10,
             supercell_min_length=6.0)


def test_node_transport_is_stored_cached_stale_after_a_new_force_field_and_queryable(stability_node):
    from nodestore.loop import analyses
    from nodestore.loop.query import select_rows
    from nodestore.models.registry import from_config
    from nodestore.repo import Node

    node = stability_node
    s = TransportSettings(**SMALL)
    r = analyze_transport(node, s, progress=False)
    assert r.computed >= 2 and not r.failed and r.cached == 0 and r.commits
    assert all("Li" in e["formula"] and e["formula"] != "Li" for e in r.entries)
    for e in r.entries:
        assert e["li_diffusivity_1500K"] > 0 and np.isfinite(e["li_diffusivity_1500K_err"])
    again = analyze_transport(Node.open(node.path), s, progress=False)
    assert again.computed == 0 and again.cached == r.computed and not again.commits
    # the table can be queried on the stored results, at the commit too
    table = node.table
    rows = select_rows(table, "li_diffusivity_1500K > 0 and transport_stale == 0", node)
    ids = set(table.column("frame_id")[rows].astype(str))
    assert ids == {e["frame_id"] for e in r.entries}
    head = str(node.git.head.target)
    assert set(analyses.read(node, "transport", rev=head)) == ids
    with pytest.raises(ValidationError, match="unknown column"):
        select_rows(table, "li_diffusivity_42K > 0", node)
    # a new current force field: the results are stale, and recomputed unless kept
    other = from_config("forcefield", {"backend": "pair", "depth": 0.25})
    ckpt = node.path.parent / "ff2"
    other.save(ckpt)
    with node.transaction("a fine-tuned force field") as tx:
        tx.add_checkpoint(ckpt, "forcefield")
    node = Node.open(node.path)
    assert len(select_rows(node.table, "transport_stale == 1", node)) >= len(ids)
    kept = analyze_transport(node, s, keep_stale=True, progress=False)
    assert kept.computed == 0 and len(kept.stale) == len(ids) and all(e["stale"] for e in kept.entries)
    one = sorted(ids)[0]
    fresh = analyze_transport(node, s, frames=(one[:12],), progress=False)
    assert fresh.computed == 1 and not fresh.entries[0]["stale"]


def test_cli_analyze_transport_and_query(stability_node, tmp_path):
    node = stability_node
    table = node.table
    li2s = [str(f) for f, formula in zip(table.column("frame_id"), table.column("formula")) if formula == "Li2S"][0]
    png = tmp_path / "arrhenius.png"
    base = [sys.executable, "-m", "nodestore", "-C", str(node.path)]
    p = subprocess.run([*base, "analyze", "transport", "--frame", li2s[:10], "-T", "900", "-T", "1500",
                        "--production-ps", "0.4", "--equilibration-ps", "0.1", "--supercell", "6",
                        "--plot", str(png), "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout)
    assert r["temperatures"] == [900.0, 1500.0] and [e["frame_id"] for e in r["entries"]] == [li2s]
    assert png.stat().st_size > 10_000
    q = subprocess.run([*base, "query", "li_diffusivity_1500K > 0", "--format", "json"], capture_output=True,
                       text=True)
    assert q.returncode == 0, q.stderr[-2000:]
    rows = json.loads(q.stdout)
    assert {row["frame_id"] for row in rows} == {li2s} and rows[0]["li_diffusivity_1500K"] > 0
    for bad in (["-T", "-5"], ["--frame", "zzzz"], ["--timestep-fs", "9"]):
        b = subprocess.run([*base, "analyze", "transport", *bad], capture_output=True, text=True)
        assert b.returncode == 2 and "Traceback" not in b.stderr, b.stderr[-1000:]


def test_temperatures_add_up_across_runs_and_the_fit_spans_the_ones_asked_for(stability_node):
    """A run at new temperatures computes only those; the stored ones are reused, and the fit is
    made over every resolved temperature asked for, wherever it was computed."""
    from nodestore.loop import analyses
    from nodestore.repo import Node

    node = stability_node
    table = node.table
    li2s = [str(f) for f, formula in zip(table.column("frame_id"), table.column("formula")) if formula == "Li2S"][0]
    small = {**SMALL, "temperatures": (1500.0,)}
    first = analyze_transport(node, TransportSettings(**small), frames=(li2s,), progress=False)
    assert (first.computed, first.runs_computed, first.runs_cached) == (1, 1, 0)
    # the same settings at two more temperatures: only those two run
    three = (900.0, 1200.0, 1500.0)
    more = analyze_transport(Node.open(node.path), TransportSettings(**{**SMALL, "temperatures": three}),
                             frames=(li2s,), progress=False)
    assert (more.computed, more.cached, more.runs_computed, more.runs_cached) == (1, 0, 2, 1)
    rec = analyses.read(node, "transport")[li2s]
    stored = rec["result"]["temperatures"]
    assert [d["temperature"] for d in stored] == list(three)
    assert stored[-1] == analyses.read(node, "transport", rev=first.commits[-1])[li2s]["result"]["temperatures"][0]
    resolved = [d["temperature"] for d in stored if d["resolved"]]
    fit = rec["result"]["arrhenius"]
    assert (fit is None and len(resolved) < 2) or fit["temperatures"] == resolved
    row = more.entries[0]
    assert row["stored_temperatures"] == list(three) and "li_diffusivity_1200K" in row
    # a window of the stored temperatures: no MD, the fit is redone over it and committed
    window = (900.0, 1500.0)
    w = analyze_transport(Node.open(node.path), TransportSettings(**{**SMALL, "temperatures": window}),
                          frames=(li2s,), progress=False)
    assert (w.computed, w.cached, w.runs_computed, w.runs_cached) == (0, 1, 0, 2)
    fit = analyses.read(node, "transport")[li2s]["result"]["arrhenius"]
    in_window = [t for t in resolved if t in window]
    assert (fit is None and len(in_window) < 2) or fit["temperatures"] == in_window
    def fitted(ts):
        return ts if len(ts) >= 2 else None

    assert bool(w.commits) == (fitted(resolved) != fitted(in_window))
    # other settings (a longer run) are another record: everything runs again
    other = analyze_transport(Node.open(node.path), TransportSettings(**{**SMALL, "production_ps": 0.5,
                                                                          "temperatures": window}),
                              frames=(li2s,), progress=False)
    assert (other.runs_computed, other.runs_cached) == (2, 0)


def test_results_stored_before_the_per_temperature_key_are_reused(stability_node):
    """Records of the first format (their settings hash included the temperatures) are read
    under the new key, so an upgrade does not recompute them."""
    import hashlib

    from nodestore.loop import analyses
    from nodestore.loop.transport import VERSION
    from nodestore.repo import Node

    node = stability_node
    s = TransportSettings(**SMALL)
    r = analyze_transport(node, s, progress=False)
    store = analyses.read(node, "transport")
    for rec in store.values():  # as the first format wrote them
        doc = {**rec["settings_doc"], "temperatures": list(SMALL["temperatures"])}
        rec["settings_doc"] = doc
        rec["settings"] = hashlib.sha256(json.dumps({**doc, "version": VERSION}, sort_keys=True).encode()).hexdigest()[:12]
    analyses.write(node, "transport", store, "first-format records")
    again = analyze_transport(Node.open(node.path), s, progress=False)
    assert again.runs_computed == 0 and again.cached == r.computed and not again.commits
