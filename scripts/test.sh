#!/usr/bin/env bash
# Set up everything the tests need and run them: the project (.venv), the dataset, and a
# PostgreSQL server on loopback for the scale-out tests. The project's own habits first: ruff
# (style, imports, likely bugs) over the tree and mypy over the package, zero findings.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# KServe's SDK in an environment of its own (.venv/kserve): it pins protobuf, pandas and psutil apart from MLflow's and
# TensorFlow's; tests/test_oip.py runs tests/kserve_check.py there (its REST client, its model classes)
KSERVE_PIN=0.21.0
if ! .venv/kserve/bin/python -c "import kserve, yaml, numpy" 2>/dev/null \
    || [ "$(.venv/kserve/bin/python -c 'from importlib.metadata import version; print(version("kserve"))')" != "$KSERVE_PIN" ]; then
  echo "[test] installing KServe's SDK $KSERVE_PIN into .venv/kserve"
  rm -rf .venv/kserve
  "${PYTHON:-python3.11}" -m venv .venv/kserve 2>/dev/null || python3 -m venv .venv/kserve || true
  .venv/kserve/bin/python -m pip install -q "kserve==$KSERVE_PIN" pyyaml numpy 2>&1 | grep -v "^WARNING: Location" || true
  .venv/kserve/bin/python -c "import kserve, yaml, numpy" 2>/dev/null || {
    rm -rf .venv/kserve  # a half install would fail its tests with an import error; missing, they say what to do
    echo "[test] warning: KServe's SDK did not install into .venv/kserve: its tests skip (and fail under CI=true)" >&2
  }
fi
echo "[test] ruff and mypy"
.venv/bin/ruff check --output-format concise .
.venv/bin/mypy
if url="$(bash scripts/start_postgres.sh | tail -n 1)" && [[ "$url" == postgresql://* ]]; then
  export FMNIST_TEST_PG="$url"
else
  echo "[test] PostgreSQL could not be started: the scale-out tests will skip (and fail under CI=true)" >&2
fi
# three test processes, not addopts' two: the fault tests' timed outages and restarts leave a core idle
# (docs/contributing.md; BENCHMARKS.md 'Tests')
.venv/bin/python -m pytest -q -rs --durations=30 -n 3 "$@"
