#!/usr/bin/env bash
# Installs everything, then runs the offline demo (configs/fashion_mnist.py, or the config in
# $GWTN_DEMO_CONFIG) in WORKDIR (default /tmp/gwtn_fmnist). Run it again after an interruption:
# it resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
workdir="${1:-/tmp/gwtn_fmnist}"
shift || true
config="${GWTN_DEMO_CONFIG:-configs/fashion_mnist.py}"
.venv/bin/python -m gwtn_jax.main --config="$config" --workdir="$workdir" "$@"
echo "Report: $workdir/report.md (table), $workdir/report.json, $workdir/curves.png"
