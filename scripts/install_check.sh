#!/usr/bin/env bash
# The package as a user installs it: `pip install .` (the tested versions, from constraints.txt)
# into a fresh venv outside the repository, then the console script runs the smoke demo.
# Usage: bash scripts/install_check.sh [DIR]   (DIR: where the venv and the run go; a temp dir)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$(mktemp -d)}"
python="${PYTHON:-python3}"
echo "+ $python -m venv $dir/venv"
"$python" -m venv "$dir/venv"
echo "+ pip install -c constraints.txt '${repo}[demo]'"
"$dir/venv/bin/python" -m pip install -q --upgrade pip
"$dir/venv/bin/python" -m pip install -q -c "$repo/constraints.txt" "${repo}[demo]"
cd "$dir"
"$dir/venv/bin/gwtn-train" --help > /dev/null
echo "+ gwtn-train --config=configs/fashion_mnist.py:smoke --workdir=$dir/run"
JAX_PLATFORMS=cpu "$dir/venv/bin/gwtn-train" --config="$repo/configs/fashion_mnist.py:smoke" \
    --workdir="$dir/run"
test -f "$dir/run/report.json"
echo "install check: ok ($dir)"
