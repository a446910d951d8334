"""``nodestore serve``: the node at a commit as a read-only OPTIMADE API.

The server is optimade-python-tools' own FastAPI app (its routers, models, query-parameter
handling, pagination and error handlers), configured for this node, with the ``structures``
collection replaced by ``TableCollection``: filters are parsed by optimade's grammar and answered
with masks over the node's columnar table, so the table is never copied into a second database.
optimade reads its configuration once per process (``OPTIMADE_CONFIG_FILE``), so one process
serves one node.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path


PROVIDER_PREFIX = "nodestore"


def server_config(node, base_url: str) -> dict:
    """The optimade server configuration for ``node`` (written to OPTIMADE_CONFIG_FILE)."""
    from nodestore import __version__

    from .columns import PROVIDER_FIELDS

    return {
        "debug": False,
        "insert_test_data": False,
        "database_backend": "mongomock",
        "base_url": base_url.rstrip("/"),
        "page_limit": 20,
        "page_limit_max": 500,
        "validate_api_response": True,
        "log_level": "warning",
        "implementation": {"name": "nodestore", "version": __version__,
                           "source_url": None, "maintainer": None},
        "provider": {"prefix": PROVIDER_PREFIX, "name": "nodestore",
                     "description": f"nodestore node {node.config.get('system', '')}: structures, their labels and the "
                                    "loop's curation", "homepage": None},
        "provider_fields": {"structures": [
            {"name": name, "type": typ, "description": desc, **({"unit": unit} if unit else {})}
            for name, (_, typ, unit, desc) in PROVIDER_FIELDS.items()]},
    }


def build_app(node, rev: str | None = "HEAD", base_url: str = "http://127.0.0.1:5000"):
    """optimade's FastAPI app serving ``node`` at ``rev``; call once per process."""
    from nodestore.repo import git

    commit = git.resolve(node.git, rev or "HEAD")
    table = node.table_at(str(commit.id))
    when = _iso(commit.commit_time)
    tmp = tempfile.mkdtemp(prefix="nodestore-optimade-")
    atexit.register(shutil.rmtree, tmp, True)
    cfg = Path(tmp) / "config.json"
    cfg.write_text(json.dumps(server_config(node, base_url)))
    os.environ["OPTIMADE_CONFIG_FILE"] = str(cfg)
    import warnings

    # optimade reads OPTIMADE_CONFIG_FILE when optimade.server.config is first imported: nothing of
    # optimade.server (filters and the collection included) may be imported before this point
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from optimade.server import main
        from optimade.server.routers import structures

    from .columns import StructureColumns

    from ._collection import TableCollection

    coll = TableCollection(StructureColumns(table, when))
    structures.structures_coll = coll
    _register(coll)
    from .page import add_page

    add_page(main.app, node, commit, table)
    main.app.state.nodestore = {"commit": str(commit.id), "rows": len(table)}
    return main.app


def _register(coll) -> None:
    from optimade.server.routers import ENTRY_COLLECTIONS

    ENTRY_COLLECTIONS["structures"] = coll


def _iso(t: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(t, tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def serve(node, rev: str | None = "HEAD", host: str = "127.0.0.1", port: int = 5000) -> None:
    """Run the OPTIMADE API of ``node`` at ``rev``, and its page at /nodestore/, until interrupted."""
    import uvicorn

    app = build_app(node, rev, base_url=f"http://{host}:{port}")
    uvicorn.run(app, host=host, port=port, log_level="warning")
