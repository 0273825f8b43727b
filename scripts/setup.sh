#!/usr/bin/env bash
# Set up everything on a fresh machine: the real dataset and chromium (Debian packages, where apt exists),
# a Python 3.11 virtual environment in .venv, and the project with its test extras.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

# apt_install PACKAGE WHY IF_NOT: install a Debian package quietly; on failure say what follows
apt_install() {
  command -v apt-get >/dev/null || { echo "[setup] warning: no apt-get to install $1; $3"; return 0; }
  echo "[setup] installing Debian's $1 ($2)"
  { as_root apt-get update -q && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1"; } \
    >/dev/null 2>&1 || echo "[setup] warning: could not install $1; $3"
}

[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
  || apt_install dataset-fashion-mnist "the real dataset" "put the IDX files in ./data instead"
# the dashboard and study-report tests open pages in it, driven by playwright (never `playwright install`)
[ -x /usr/bin/chromium ] \
  || apt_install chromium "a headless browser for the tests" "the browser tests skip (and fail under CI=true)"
# tests/test_pgbouncer.py starts its own in front of the test PostgreSQL (Debian's package also
# enables a pgbouncer service on 6432; the tests never use it)
[ -x /usr/sbin/pgbouncer ] \
  || apt_install pgbouncer "a connection pooler for the PgBouncer tests" "the PgBouncer tests skip (and fail under CI=true)"

PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
echo "[setup] installing the project and its dependencies into .venv"
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
# JAX apart, in .venv/jax, for tests/test_backends.py alone (it puts the folder on its subprocess' path): beside
# TensorFlow, every TensorFlow import imports JAX too (tf.lite looks for it), ~0.6 s of CPU in each of the suite's
# ~100 TensorFlow processes (a .venv that has JAX in site-packages, from an older setup or the bench extra, keeps
# paying it). --no-deps: its dependencies (numpy, scipy, ml_dtypes, opt_einsum) are already in .venv, from
# TensorFlow and scikit-learn; the pins are what pip resolved beside TensorFlow 2.21 there (2026-11-28).
JAX_PIN=0.10.2
if [ ! -d ".venv/jax/jax-$JAX_PIN.dist-info" ] || [ ! -d ".venv/jax/jaxlib-$JAX_PIN.dist-info" ]; then
  rm -rf .venv/jax  # another pin, or an install cut short
  .venv/bin/python -m pip install -q --no-deps --target .venv/jax "jax==$JAX_PIN" "jaxlib==$JAX_PIN" \
    2>&1 | grep -v "^WARNING: Location" || true
fi
PYTHONPATH=.venv/jax .venv/bin/python -c "import jax" 2>/dev/null \
  || echo "[setup] warning: JAX did not install into .venv/jax: tests/test_backends.py will fail under CI=true" >&2
TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python -c "import fmnist_exp, tensorflow, mlflow, optuna" \
  || { echo "[setup] error: the install failed; see the pip output above" >&2; exit 1; }
echo "[setup] done: activate with '. .venv/bin/activate'"
