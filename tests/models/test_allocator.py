"""glibc allocator tuning for the force fields (nodestore/models/_allocator.py)."""

import os
import platform
import subprocess
import sys

import pytest

from nodestore.models import _allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(_allocator, "_done", None)
    for var in _allocator._ENV + ("NODESTORE_MALLOC_TUNING",):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_glibc_takes_the_tuning_once(fresh):
    assert _allocator.tune_allocator() is True
    assert _allocator._done is True
    assert _allocator.tune_allocator() is True  # once: the second call only reports


@pytest.mark.parametrize("var,value", [("NODESTORE_MALLOC_TUNING", "0"), ("MALLOC_TOP_PAD_", "4096"),
                                       ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1")])
def test_the_users_own_setting_wins(fresh, var, value):
    fresh.setenv(var, value)
    assert _allocator.tune_allocator() is False


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_building_a_force_field_tunes_its_process():
    code = ("from nodestore.models import _allocator\n"
            "assert _allocator._done is None\n"
            "from nodestore.models._pair import PairForceField\n"
            "PairForceField()\n"
            "print(_allocator._done)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env.pop("NODESTORE_MALLOC_TUNING", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
