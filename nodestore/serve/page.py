"""The page served beside the OPTIMADE API, at ``/nodestore/``: the structures table with
OPTIMADE filters, one structure in 3D (3Dmol.js, vendored from the npm registry), the hull plot and
the loop's iteration metrics, all of the node at the served commit.  Works offline."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

STATIC = Path(__file__).parent / "static"


def iteration_metrics(node, commit) -> list[dict]:
    """One row per loop iteration whose metrics.json the commit records."""
    rows = []
    try:
        loop = commit.tree / "loop"
    except KeyError:
        return rows
    for entry in loop:
        if not entry.name.startswith("iter-") or entry.name == "iter-0":
            continue
        try:
            blob = node.git[(loop / entry.name / "metrics.json").id]
        except KeyError:
            continue
        m = json.loads(blob.data)
        sun = ((m.get("sun") or {}).get("by_threshold") or {}).get("0.1") or {}
        rows.append({"iteration": m.get("iteration"), "candidates": m.get("candidates"), "screened": m.get("screened"),
                     "labelled": m.get("labelled"), "sun": sun.get("sun"),
                     "ff_rmse": (m.get("forcefield") or {}).get("energy_rmse_per_atom")})
    return sorted(rows, key=lambda r: r["iteration"] or 0)


def summary(node, commit, table, hull_svg: Path) -> dict:
    """What the page shows beside the table; writes the hull plot to ``hull_svg`` when there is a hull."""
    from nodestore.errors import NodestoreError
    from nodestore.loop.actions import hull_report

    doc = {"system": "-".join(node.system), "commit": str(commit.id), "rows": len(table),
           "reference_method": node.config.get("reference_method"), "hull": False, "hull_note": None,
           "iterations": iteration_metrics(node, commit)}
    try:
        r = hull_report(node, rev=str(commit.id), plot=str(hull_svg))
        doc["hull"] = hull_svg.exists()
        doc["hull_note"] = f"hull of {r['method']}: stable {', '.join(r['stable'])}"
    except NodestoreError as exc:
        doc["hull_note"] = f"no hull: {exc}"
    return doc


def add_page(app, node, commit, table) -> None:
    """Mount the page on optimade's app (whose middleware decodes every response body as text:
    the hull is an SVG, not a PNG)."""
    from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
    from fastapi.staticfiles import StaticFiles

    out = Path(tempfile.mkdtemp(prefix="nodestore-page-"))
    atexit.register(shutil.rmtree, out, True)
    doc = summary(node, commit, table, out / "hull.svg")
    app.mount("/nodestore/static", StaticFiles(directory=STATIC), name="nodestore-static")

    @app.get("/nodestore", include_in_schema=False)
    def _redirect():
        return RedirectResponse("/nodestore/")

    @app.get("/nodestore/", include_in_schema=False)
    def _index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/nodestore/summary.json", include_in_schema=False)
    def _summary():
        return JSONResponse(doc)

    @app.get("/nodestore/hull.svg", include_in_schema=False)
    def _hull():
        if not doc["hull"]:
            return JSONResponse({"detail": doc["hull_note"]}, status_code=404)
        return FileResponse(out / "hull.svg", media_type="image/svg+xml")
