import os
from pathlib import Path

import pytest

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("GIT_AUTHOR_NAME", "nodestore-tests")
os.environ.setdefault("GIT_AUTHOR_EMAIL", "tests@nodestore.invalid")

DATA = Path(__file__).resolve().parents[1] / "nodestore" / "data" / "li-p-s"
STRUCTURES = DATA / "structures"
LABELLED = DATA / "labelled"
AIMD = LABELLED / "lips_aimd_Li27P12S44.extxyz"
LI3PS4_SAMPLES = [LABELLED / f"Li3PS4_sample_{s}.xyz" for s in ("train", "val", "test")]
REFERENCE_FILES = sorted(STRUCTURES.glob("*.cif")) + sorted(STRUCTURES.glob("*.json"))


@pytest.fixture
def data_dir():
    return DATA


@pytest.fixture
def node(tmp_path):
    from nodestore.loop import create_node

    return create_node("Li-P-S", tmp_path / "Li-P-S")


@pytest.fixture
def aimd_atoms():
    from nodestore.frames.io import read_file

    return read_file(AIMD)


def pytest_addoption(parser):
    parser.addoption("--large", action="store_true",
                     help="run the fault and fuzz suites at full count (100 kills per verb, 2,000 inputs per parser)")


def pytest_configure(config):
    try:
        from hypothesis import settings
    except ImportError:
        return
    settings.register_profile("small", max_examples=25)
    settings.register_profile("large", max_examples=2000)
    settings.load_profile("large" if config.getoption("--large") else "small")


@pytest.fixture
def kills(request):
    """How many random kills a fault test makes: a few by default, 100 with --large."""
    return 100 if request.config.getoption("--large") else 3
