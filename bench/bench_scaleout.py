"""Scale-out figures: trials per hour with 1 and 2 workers on one PostgreSQL study and one
`mlflow server`, and the per-trial cost of logging to that server against local SQLite.

    bash scripts/start_postgres.sh && python bench/bench_scaleout.py [--trials 6]

Trials are small MLPs (3,000 images, 3 epochs) so that coordination and tracking, not
training, are what the figures show. Needs FMNIST_TEST_PG (scripts/start_postgres.sh prints it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MLFLOW, emit, free_port, machine, running_server  # noqa: E402

STUDY = """description: scale-out benchmark
family: mlp
budget: {n_trials: 2, epochs: 3, train_samples: 3000, timeout: 0}
fixed: {early_stopping_patience: 0}
space:
  dropout: {type: float, low: 0.0, high: 0.3}
  learning_rate: {type: float, low: 1.0e-3, high: 3.0e-3, log: true}
  hidden_units: {type: widths, layers: [1, 2], units: [64, 128]}
pruner: {type: none}
"""


def create_db(admin_url: str, prefix: str) -> str:
    import sqlalchemy

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    engine = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return admin_url.rsplit("/", 1)[0] + "/" + name


def run_workers(n_workers: int, trials_each: int, tracking: str, storage: str, tmp: Path, name: str) -> float:
    study = tmp / "study.yaml"
    study.write_text(STUDY)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "fmnist_exp", "tune", "--family", "mlp", "--study", str(study), "--study_name",
           name, "--storage", storage, "--n_trials", str(trials_each), "--register", "false"]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(n_workers)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"a worker failed: exit codes {codes}")
    return time.perf_counter() - t0


def trial_seconds(tracking: str, study_name: str) -> list[float]:
    import mlflow

    mlflow.set_tracking_uri(tracking)
    runs = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.optuna_study = '{study_name}'",
                              output_format="list")
    return [(r.info.end_time - r.info.start_time) / 1000 for r in runs if "optuna_trial" in r.data.tags]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=6)
    args = ap.parse_args()
    admin = os.environ.get("FMNIST_TEST_PG", "postgresql://fmnist:fmnist@127.0.0.1:5432/postgres")
    import statistics

    out = {"machine": machine(), "trials": args.trials, "trial": "MLP, 3,000 images, 3 epochs"}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        port = free_port()
        uri = f"http://127.0.0.1:{port}"
        cmd = [MLFLOW, "server", "--backend-store-uri", create_db(admin, "bench_mlflow"), "--artifacts-destination",
               str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        with running_server(cmd, uri + "/health", cwd=tmp, timeout=120):
            for workers in (1, 2):
                name = f"w{workers}"
                wall = run_workers(workers, args.trials // workers, uri, create_db(admin, "bench_optuna"), tmp, name)
                out[f"{workers}_worker"] = {"wall_s": round(wall, 1),
                                            "trials_per_hour": round(3600 * args.trials / wall),
                                            "median_trial_s": round(statistics.median(trial_seconds(uri, name)), 2)}
        local = f"sqlite:///{tmp / 'mlflow.db'}"
        run_workers(1, args.trials, local, f"sqlite:///{tmp / 'optuna.db'}", tmp, "local")
        out["local_sqlite_1_worker_median_trial_s"] = round(statistics.median(trial_seconds(local, "local")), 2)
    out["server_vs_sqlite_per_trial_s"] = round(out["1_worker"]["median_trial_s"]
                                                - out["local_sqlite_1_worker_median_trial_s"], 2)
    out["speedup_2_workers"] = round(out["2_worker"]["trials_per_hour"] / out["1_worker"]["trials_per_hour"], 2)
    emit(out)


if __name__ == "__main__":
    main()
