#!/usr/bin/env bash
# Set up a fresh machine: .venv with the CPU torch wheel first, then nodestore;
# GPAW (the default first-principles labeller) from Debian when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# the pinned CPU wheel first: a bare `torch` requirement would pull a multi-GB CUDA build
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[test]"
# compile the numba kernels once here (about 30 s), not inside the first select or curate stage
.venv/bin/python -W ignore -m nodestore.chem.precompile
if ! /usr/bin/python3 -c "import gpaw" >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gpaw >/dev/null) \
      || echo "warning: could not install gpaw; the GPAW labeller and its tests are unavailable" >&2
  else
    echo "warning: gpaw not installed (run: apt-get install -y gpaw)" >&2
  fi
fi
