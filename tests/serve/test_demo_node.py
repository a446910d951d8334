"""optimade-validator against ``nodestore serve`` of the demo node (built by ``nodestore demo`` with
one iteration and the Lennard-Jones labeller, so that CI can build it in minutes; the GPAW demo
node differs only in its labels' method)."""

import subprocess
import sys

import pytest

from .conftest import serving
from .helpers import _get


@pytest.mark.slow
def test_optimade_validator_on_the_demo_node(tmp_path):
    from optimade.validator import ImplementationValidator

    path = tmp_path / "demo" / "Li-P-S"
    r = subprocess.run([sys.executable, "-m", "nodestore", "demo", "--path", str(path), "--iterations", "1",
                        "--labeller", "lj"], capture_output=True, text=True, timeout=3000)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    with serving(path) as base:
        v = ImplementationValidator(base_url=base, verbosity=-1)
        v.validate_implementation()
        assert v.valid and v.results.failure_count == 0, v.results.failure_messages
        status, doc = _get(base.removesuffix("/v1") + "/nodestore/summary.json")
        assert status == 200 and doc["hull"] and [it["iteration"] for it in doc["iterations"]] == [1]
        status, doc = _get(base + "/structures?filter=_nodestore_is_entry%3D1&page_limit=1")
        assert status == 200 and doc["meta"]["data_returned"] > 0  # the curated entries are served
