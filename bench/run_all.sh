#!/usr/bin/env bash
# Run every benchmark; JSON lands in bench/out/. About an hour on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/out
PY=.venv/bin/python
$PY bench/bench_defaults.py > bench/out/defaults.json
$PY bench/bench_throughput.py > bench/out/throughput.json
$PY bench/bench_overhead.py > bench/out/overhead.json
$PY bench/bench_serving.py > bench/out/serving.json
$PY bench/bench_tune.py > bench/out/tune.json
$PY bench/bench_scaleout.py > bench/out/scaleout.json
cat bench/out/*.json
