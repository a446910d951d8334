"""analyze electronic: band gaps and densities of states by the node's labeller, stored and queryable."""

import json
import subprocess
import sys

import numpy as np
import pytest

from nodestore.errors import ValidationError
from nodestore.models.labeller import GpawLabeller, LennardJonesLabeller
from test_loop import tiny_params

needs_gpaw = pytest.mark.skipif(not GpawLabeller.available(), reason="/usr/bin/python3 cannot import gpaw")


def test_a_labeller_without_electrons_refuses_and_settings_are_checked():
    from nodestore.loop.electronic import ElectronicSettings

    with pytest.raises(ValidationError, match="no electronic"):
        LennardJonesLabeller().with_electronic()
    for kw in ({"width": 0}, {"npts": 3}, {"emin": 2.0, "emax": 1.0}, {"width": float("nan")}, {"kpt_density": 0}):
        with pytest.raises(ValidationError):
            ElectronicSettings(**kw)
    with pytest.raises(ValidationError):
        GpawLabeller().with_electronic(width=-1)


@pytest.fixture
def gpaw_node(tmp_path):
    from ase.build import bulk
    from ase.io import write

    from nodestore.loop import create_node

    params = tiny_params()
    params["labeller"] = {"backend": "gpaw", "ecut": 200, "kpt_density": 1.5, "smearing": 0.1}
    params["forcefield"] = {"backend": "pair"}
    node = create_node("Li-P-S", tmp_path / "n", reference_method="gpaw-pbe-pw200", params=params)
    files = []
    for name, atoms in (("Li2S", bulk("SLi2", "fluorite", a=5.70)), ("Li", bulk("Li", "bcc", a=3.44))):
        files.append(tmp_path / f"{name}.cif")
        write(str(files[-1]), [atoms])
    node.import_files(files, origin="reference", message="two phases")
    ids = {f: str(i) for f, i in zip(node.table.column("formula"), node.table.column("frame_id"))}
    return node, ids


@pytest.mark.gpaw
@needs_gpaw
def test_gap_of_an_insulator_and_a_metal_stored_cached_and_queryable(gpaw_node, tmp_path):
    from nodestore.loop.electronic import ElectronicSettings, analyze_electronic
    from nodestore.loop.query import select_rows

    node, ids = gpaw_node
    li2s, li = ids["Li2S"], ids["Li"]
    s = ElectronicSettings(npts=401)
    r = analyze_electronic(node, s, frames=(li2s[:8], li), plot=str(tmp_path / "dos.png"), progress=False)
    assert r.computed == 2 and r.cached == 0 and not r.failed and r.method == "gpaw-pbe-pw200"
    by = {e["formula"]: e for e in r.entries}
    # PBE puts antifluorite Li2S's gap near 3.4 eV (indirect); bcc Li is a metal
    assert 2.5 < by["Li2S"]["band_gap"] < 4.5 and by["Li2S"]["band_gap_direct"] >= by["Li2S"]["band_gap"] - 1e-6
    assert by["Li"]["band_gap"] == 0 and by["Li"]["metal"]
    assert [e["formula"] for e in r.entries] == ["Li2S", "Li"]  # ranked by gap
    assert (tmp_path / "dos.png").stat().st_size > 10_000
    store = json.loads((node.path / "analyses/electronic.json").read_text())["results"]
    dos = store[li2s]["result"]
    e, d = np.asarray(dos["dos_energies"]), np.asarray(dos["dos"])
    assert len(e) == 401 and np.isfinite(d).all() and (d >= 0).all()
    # the empty stretch of the DOS around E_F is the gap, less the broadening (0.1 eV) at each edge
    full = d > 1e-3 * d.max()
    lo, hi = e[(e <= 0) & full].max(), e[(e >= 0) & full].min()
    assert by["Li2S"]["band_gap"] - 1.0 < hi - lo < by["Li2S"]["band_gap"] + 0.05
    # the occupied states in the window (from 10 eV below E_F: above the S 3s band) hold the six
    # electrons of the filled S 3p shell of S2-
    n_occ = np.trapezoid(d[e < 0], e[e < 0])
    assert 5.7 < n_occ < 6.3
    # cached: a rerun computes nothing; the commit is in the history
    r2 = analyze_electronic(node, s, frames=(li2s, li), progress=False)
    assert r2.computed == 0 and r2.cached == 2 and not r2.commits
    rows = select_rows(node.table, "band_gap > 1", node=node)
    assert [str(x) for x in node.table.column("frame_id")[rows]] == [li2s]
    rows = select_rows(node.table, "band_gap == 0", node=node, rev="HEAD")
    assert [str(x) for x in node.table.column("frame_id")[rows]] == [li]
    # the CLI: json, a table, and a bad frame is one clear error
    ns = [sys.executable, "-m", "nodestore", "-C", str(node.path)]
    out = subprocess.run([*ns, "analyze", "electronic", "--frame", li2s[:8], "--npts", "401", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["cached"] == 1, doc
    assert doc["entries"][0]["formula"] == "Li2S"
    out = subprocess.run([*ns, "query", "band_gap > 1", "--format", "json"], capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout)[0]["band_gap"] == pytest.approx(by["Li2S"]["band_gap"])
    out = subprocess.run([*ns, "analyze", "electronic", "--frame", "zzzz"], capture_output=True, text=True)
    assert out.returncode == 2 and "no frame 'zzzz'" in out.stderr and "Traceback" not in out.stderr
    # the report shows the stored analyses: their table and the DOS plot
    from nodestore.loop.report import write_report

    rep = write_report(node, tmp_path / "report")
    page = (tmp_path / "report" / "index.html").read_text()
    assert any(p.endswith("electronic.png") for p in rep["plots"]) and "band_gap" in page and "Li2S" in page
