#!/usr/bin/env bash
# Installs everything, then runs the test suite on the CPU backend (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export JAX_PLATFORMS=cpu
# loadgroup: the tests of one xdist_group (those sharing the Cloud Storage server) run in one
# worker; the others are spread as usual.
exec .venv/bin/python -m pytest -q -n 2 --dist loadgroup "$@"
