#!/usr/bin/env bash
# Run every benchmark; JSON lands in bench/out/. About 125 minutes on a 2-core machine
# (190 with the bench extra installed: bench_peers, bench_keras_tuner).
# The long study (experiments/cnn_long.yaml, about an hour more) runs only with --long.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/out
PY=.venv/bin/python
$PY bench/bench_defaults.py --families baseline,mlp > bench/out/defaults.json  # cnn: bench_overhead
$PY bench/bench_throughput.py > bench/out/throughput.json
$PY bench/bench_overhead.py > bench/out/overhead.json
$PY bench/bench_serving.py > bench/out/serving.json
$PY bench/bench_swap.py > bench/out/swap.json  # ~8 min: serve following @champion under load, beside mlflow models serve restarted
$PY bench/bench_study_pays.py > bench/out/study_pays.json  # the default cnn run and the default study side by side
if $PY -c "import keras_tuner" 2> /dev/null; then  # ~50 min: ours, keras-tuner's Hyperband, plain TPE at equal time
  $PY bench/bench_peers.py > bench/out/peers.json  # pip install -e ".[bench]"
  $PY bench/bench_keras_tuner.py > bench/out/keras_tuner.json  # ~25 min: the guide's builder, ours against RandomSearch and Hyperband
fi
$PY bench/bench_own_data.py --data digits > bench/out/own_data_digits.json  # ~5 min each: a study on other data
$PY bench/bench_own_data.py --data scenes --study images > bench/out/own_data_scenes.json
$PY bench/bench_small_data.py > bench/out/small_data.json  # ~4 min: the default cnn on a few hundred images, bn_settle off and on
$PY bench/bench_lineage.py > bench/out/lineage.json
$PY bench/bench_determinism.py > bench/out/determinism.json
FMNIST_TEST_PG="$(bash scripts/start_postgres.sh | tail -n 1)" $PY bench/bench_scaleout.py > bench/out/scaleout.json
# 1-64 workers, synthetic sleeping trials, private PostgreSQL (~15 min); PgBouncer from `apt-get install pgbouncer`
if [ -x /usr/sbin/pgbouncer ] || command -v pgbouncer > /dev/null; then SCALE_PATHS=direct,pgbouncer,grpc; else SCALE_PATHS=direct,grpc; fi
$PY bench/bench_scale.py --paths "$SCALE_PATHS" > bench/out/scale.json
if nvidia-smi -L > /dev/null 2>&1; then  # GPU figures only where there is a GPU
  $PY bench/bench_gpu.py > bench/out/gpu.json
fi
if [[ "${1:-}" == "--long" ]]; then
  $PY bench/bench_tune.py --study cnn_long > bench/out/tune_long.json
fi
cat bench/out/*.json
