#!/usr/bin/env bash
# Installs everything gwtn_jax needs on a fresh Debian/Ubuntu machine: the Debian packages
# (the embedded Fashion-MNIST, shellcheck for the TPU scripts' tests) and a virtual
# environment in .venv with the package and its test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(dataset-fashion-mnist shellcheck)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  echo "+ apt-get install ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  echo "+ $python -m venv .venv"
  "$python" -m venv .venv
fi
echo "+ pip install -c constraints.txt -e '.[test]'"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e '.[test]'
