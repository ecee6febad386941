#!/usr/bin/env bash
# Installs everything, then runs the offline BERT demo (configs/shakespeare_bert.py) in WORKDIR
# (default /tmp/gwtn_bert). Run it again after an interruption: it resumes.
set -euo pipefail
workdir="${1:-/tmp/gwtn_bert}"
shift || true
GWTN_DEMO_CONFIG=configs/shakespeare_bert.py exec bash "$(dirname "$0")/demo.sh" "$workdir" "$@"
