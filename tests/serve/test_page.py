"""The page beside the API (/nodestore/), in headless Chromium (Debian's ``chromium`` package),
driven over the DevTools protocol: load it, type a filter and press Filter, click a row to open
its structure in the 3D viewer, save a screenshot.  A second test loads a linked view (the state
in the URL's fragment) and checks the dumped DOM."""

import os
import shutil
import subprocess
import urllib.parse
import urllib.request

import pytest

from .helpers import Chromium, _get

CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def _chromium(*args, timeout=120):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
           "--window-size=1400,1000", "--virtual-time-budget=20000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_page_assets_and_summary(served):
    node, base = served
    root = base.removesuffix("/v1")
    with urllib.request.urlopen(root + "/nodestore/") as r:
        html = r.read().decode()
    assert "static/vendor/3dmol/3Dmol-min.js" in html and "cdn" not in html.lower()
    with urllib.request.urlopen(root + "/nodestore/static/vendor/3dmol/3Dmol-min.js") as r:
        assert len(r.read()) > 100_000  # vendored, served offline
    status, doc = _get(root + "/nodestore/summary.json")
    assert status == 200 and doc["rows"] == len(node.table_at("HEAD")) and doc["system"] == "Li-P-S"
    assert doc["iterations"] == []  # this node has no loop iteration
    assert doc["hull"] is False and doc["hull_note"].startswith("no hull")  # no labels of its reference method


NO_BROWSER = ("no headless browser: install Debian's chromium package (apt-get install -y chromium) "
              "to run the page's browser tests")


@pytest.mark.skipif(CHROMIUM is None, reason=NO_BROWSER)
def test_filter_and_open_a_structure_by_hand(served, tmp_path):
    pytest.importorskip("websockets")
    node, base = served
    flt = 'elements HAS ALL "Li","P","S" AND nsites >= 83'
    b = Chromium(CHROMIUM, tmp_path / "profile")
    try:
        b.send("Page.enable")
        b.send("Page.navigate", url=f"{base.removesuffix('/v1')}/nodestore/")
        b.wait_for("document.body && document.body.dataset.ready === '1'")
        total = len(node.table_at("HEAD"))
        assert b.eval("document.getElementById('count').textContent").startswith(f"{total} structures match")
        # type the filter and press the button
        b.eval(f"document.getElementById('filter').value = {flt!r}; document.getElementById('apply').click(); 1")
        count = b.wait_for("(t => t.includes('20 structures match') && t)(document.getElementById('count').textContent)")
        assert flt in count
        assert b.eval("document.querySelectorAll('#table tbody tr').length") == 20
        assert b.eval("location.hash").startswith("#filter=")  # the view can be linked
        # click the first row: its structure opens in the viewer
        first = b.eval("document.querySelector('#table tbody tr').dataset.id")
        b.eval("document.querySelector('#table tbody tr').click(); 1")
        assert b.wait_for("document.getElementById('viewer').dataset.drawn") == "83"
        assert b.eval("document.getElementById('structure-id').textContent") == first
        assert "83 sites" in b.eval("document.getElementById('structure-info').textContent")
        # a filter the grammar refuses is shown as such, and the table empties
        b.eval("document.getElementById('filter').value = 'nsites >'; document.getElementById('apply').click(); 1")
        assert "filter refused" in b.wait_for(
            "(t => t.includes('refused') && t)(document.getElementById('count').textContent)")
        shot = tmp_path / "page.png"
        b.eval(f"document.getElementById('filter').value = {flt!r}; document.getElementById('apply').click(); 1")
        b.wait_for("document.querySelectorAll('#table tbody tr').length === 20")
        b.screenshot(shot)
        assert shot.stat().st_size > 20_000
        keep = os.environ.get("NODESTORE_SCREENSHOT")
        if keep:
            shutil.copy(shot, keep)
    finally:
        b.close()


@pytest.mark.skipif(CHROMIUM is None, reason=NO_BROWSER)
def test_a_linked_view_in_headless_chromium(served, tmp_path):
    node, base = served
    flt = 'elements HAS ALL "Li","P","S" AND nsites >= 83'
    status, doc = _get(f"{base}/structures?" + urllib.parse.urlencode({"filter": flt, "page_limit": 1,
                                                                       "sort": "_nodestore_e_hull"}))
    want, first = doc["meta"]["data_returned"], doc["data"][0]["id"]
    assert want == 20  # the 20 AIMD frames
    url = f"{base.removesuffix('/v1')}/nodestore/#" + urllib.parse.urlencode({"filter": flt, "open": first})
    r = _chromium("--dump-dom", url)
    dom = r.stdout
    assert 'data-ready="1"' in dom, r.stderr[-2000:]
    count = dom[dom.find('id="count"'):][:300]
    assert f"{want} structures match {flt.replace('>', '&gt;')}" in count, count
    assert dom.count("<tr data-id=") == min(want, 25)
    assert f'id="structure-id">{first}<' in dom
    assert 'id="viewer" data-drawn="83"' in dom, "the 3D viewer did not draw the structure"
    shot = tmp_path / "page.png"
    r = _chromium(f"--screenshot={shot}", url)
    assert shot.exists() and shot.stat().st_size > 20_000, r.stderr[-2000:]
    keep = os.environ.get("NODESTORE_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
