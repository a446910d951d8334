#!/usr/bin/env bash
# Set up (idempotent) and build the Li-P-S demo node offline into demo/Li-P-S.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
.venv/bin/nodestore demo "$@"
