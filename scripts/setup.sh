#!/usr/bin/env bash
# Set up everything on a fresh machine: the real dataset (Debian package, where apt exists),
# a Python 3.11 virtual environment in .venv, and the project with its test extras.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  echo "[setup] installing Debian's dataset-fashion-mnist"
  { as_root apt-get update -q && as_root apt-get install -y -q dataset-fashion-mnist; } >/dev/null \
    || echo "[setup] warning: could not install dataset-fashion-mnist; put the IDX files in ./data instead"
fi

PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
echo "[setup] installing the project and its dependencies into .venv"
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python -c "import fmnist_exp, tensorflow, mlflow, optuna" \
  || { echo "[setup] error: the install failed; see the pip output above" >&2; exit 1; }
echo "[setup] done: activate with '. .venv/bin/activate'"
