#!/usr/bin/env bash
# Installs everything, then runs the test suite on the CPU backend (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export JAX_PLATFORMS=cpu
exec .venv/bin/python -m pytest -q -n 2 "$@"
