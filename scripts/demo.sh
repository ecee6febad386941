#!/usr/bin/env bash
# Installs everything, then runs the offline demo (configs/fashion_mnist.py) in WORKDIR
# (default /tmp/gwtn_fmnist). Run it again after an interruption: it resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
workdir="${1:-/tmp/gwtn_fmnist}"
shift || true
.venv/bin/python -m gwtn_jax.main --config=configs/fashion_mnist.py --workdir="$workdir" "$@"
echo "Report: $workdir/report.md (table), $workdir/report.json, $workdir/curves.png"
