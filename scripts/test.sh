#!/usr/bin/env bash
# Set up everything the tests need and run them: the project (.venv), the dataset, and a
# PostgreSQL server on loopback for the scale-out tests. The project's own habits first: ruff
# (style, imports, likely bugs) over the tree and mypy over the package, zero findings.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
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
