"""Many tune workers on one study: PostgreSQL for Optuna and MLflow's backend, one real
`mlflow server`, real worker processes, one of them killed with SIGKILL mid-trial.

Skips where PostgreSQL cannot be had (scripts/start_postgres.sh sets FMNIST_TEST_PG); under
CI=true a missing PostgreSQL is a failure, not a skip.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient

from conftest import MLFLOW, free_port, running_server, subprocess_env

pytestmark = pytest.mark.slow
MODEL = "fmnist-classifier"
STUDY = """description: scale-out test study
family: mlp
budget: {{n_trials: 2, epochs: {epochs}, train_samples: {samples}, timeout: 0}}
fixed: {{lr_schedule: cosine, early_stopping_patience: 0}}
space:
  dropout: {{type: float, low: 0.0, high: 0.3}}
  learning_rate: {{type: float, low: 1.0e-3, high: 3.0e-3, log: true}}
  hidden_units: {{type: widths, layers: [1, 2], units: [32, 64]}}
pruner: {{type: none}}
"""


@pytest.fixture(scope="module")
def pg_admin():
    import sqlalchemy

    url = os.environ.get("FMNIST_TEST_PG", "postgresql://fmnist:fmnist@127.0.0.1:5432/postgres")
    try:
        engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as c:
            c.execute(sqlalchemy.text("SELECT 1"))
    except Exception as e:
        msg = f"PostgreSQL not reachable at {url} ({type(e).__name__}); run scripts/start_postgres.sh"
        if os.environ.get("CI"):
            pytest.fail(msg + " -- CI must run these tests")
        pytest.skip(msg)
    yield url, engine
    engine.dispose()


def fresh_db(pg_admin, prefix: str) -> str:
    import sqlalchemy

    url, engine = pg_admin
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with engine.connect() as c:
        c.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    return url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def cluster(pg_admin, tmp_path, monkeypatch):
    """A real mlflow server (PostgreSQL backend, proxied artifacts) and an Optuna database."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    cmd = [MLFLOW, "server", "--backend-store-uri", fresh_db(pg_admin, "mlflow"), "--artifacts-destination",
           str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with running_server(cmd, uri + "/health", cwd=tmp_path, env=subprocess_env(), timeout=120):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        yield {"tracking": uri, "optuna": fresh_db(pg_admin, "optuna"), "tmp": tmp_path}


def worker(cluster, study_file, study_name, n_trials, log_name):
    env = {**subprocess_env(), "MLFLOW_TRACKING_URI": cluster["tracking"],
           "FMNIST_HEARTBEAT_S": "2", "FMNIST_GRACE_S": "8"}
    cmd = [sys.executable, "-m", "fmnist_exp", "tune", "--family", "mlp", "--study", str(study_file),
           "--study_name", study_name, "--storage", cluster["optuna"], "--n_trials", str(n_trials)]
    log = open(cluster["tmp"] / log_name, "w")
    return subprocess.Popen(cmd, cwd=cluster["tmp"], env=env, stdout=log, stderr=subprocess.STDOUT)


def all_runs():
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def trial_runs(runs):
    return [r for r in runs if "optuna_trial" in r.data.tags and "final_of_trial" not in r.data.tags]


def test_three_workers_share_one_study(cluster):
    study_file = cluster["tmp"] / "s.yaml"
    study_file.write_text(STUDY.format(epochs=2, samples=800))
    k = 2
    procs = [worker(cluster, study_file, "shared", k, f"w{i}.log") for i in range(3)]
    for i, p in enumerate(procs):
        assert p.wait(timeout=900) == 0, (cluster["tmp"] / f"w{i}.log").read_text()[-3000:]

    study = optuna.load_study(study_name="shared", storage=cluster["optuna"])
    numbers = [t.number for t in study.trials]
    assert len(numbers) == 3 * k and sorted(numbers) == list(range(3 * k))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)

    runs = all_runs()
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    parents = [r for r in runs if r.info.run_name == "tune shared"]
    assert len(parents) == 3
    by_trial = {int(r.data.tags["optuna_trial"]): r for r in trial_runs(runs)}
    assert sorted(by_trial) == numbers
    for t in study.trials:
        run = by_trial[t.number]
        assert run.data.tags["mlflow.parentRunId"] in {p.info.run_id for p in parents}
        assert float(run.data.params["dropout"]) == pytest.approx(t.params["dropout"])
        assert float(run.data.params["learning_rate"]) == pytest.approx(t.params["learning_rate"])
        assert run.info.run_id == t.user_attrs["mlflow_run_id"]

    client = MlflowClient()
    champion = client.get_model_version_by_alias(MODEL, "champion")
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert len({v.tags["source_run_id"] for v in versions}) == len(versions), "no candidate registered twice"
    assert float(champion.tags["test_accuracy"]) == max(float(v.tags["test_accuracy"]) for v in versions)
    aliases = [client.get_model_version(MODEL, v.version).aliases for v in versions]  # search omits aliases
    assert sum("champion" in a for a in aliases) == 1
    assert champion.tags["source_run_id"] == study.best_trial.user_attrs["mlflow_run_id"]
    assert mlflow.pyfunc.load_model(f"models:/{MODEL}@champion") is not None


def test_killed_worker_trial_fails_and_is_retried(cluster):
    study_file = cluster["tmp"] / "k.yaml"
    study_file.write_text(STUDY.format(epochs=12, samples=3000))
    victim = worker(cluster, study_file, "kill", 1, "victim.log")
    # wait until the victim's trial has trained at least one epoch, then kill it without warning
    client = MlflowClient()
    deadline = time.time() + 300
    while time.time() < deadline:
        running = [r for r in trial_runs(all_runs()) if r.info.status == "RUNNING"]
        if running and client.get_metric_history(running[0].info.run_id, "val_accuracy"):
            break
        time.sleep(0.5)
    else:
        victim.kill()
        pytest.fail("the victim's trial never started:\n" + (cluster["tmp"] / "victim.log").read_text()[-3000:])
    victim_run = running[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    time.sleep(9)  # past the grace period: the victim's heartbeat is stale now

    survivor = worker(cluster, study_file, "kill", 2, "survivor.log")
    assert survivor.wait(timeout=900) == 0, (cluster["tmp"] / "survivor.log").read_text()[-3000:]

    study = optuna.load_study(study_name="kill", storage=cluster["optuna"])
    states = {t.number: t.state.name for t in study.trials}
    assert states[0] == "FAIL"
    retries = [t for t in study.trials if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == 0]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
    assert retries[0].params == study.trials[0].params
    assert len(study.trials) == 3 and list(states.values()).count("COMPLETE") == 2

    runs = {r.info.run_id: r for r in all_runs()}
    assert runs[victim_run.info.run_id].info.status == "FAILED"
    assert "no heartbeat" in runs[victim_run.info.run_id].data.tags["failure"]
    victim_parent = runs[victim_run.data.tags["mlflow.parentRunId"]]
    assert victim_parent.info.status == "FAILED"
    assert [r.info.run_name for r in runs.values() if r.info.status == "RUNNING"] == []
    assert client.get_model_version_by_alias(MODEL, "champion")


def test_second_worker_on_sqlite_is_refused(tmp_path, tracking):
    from fmnist_exp import config as C
    from fmnist_exp.storage import StorageURL

    url = StorageURL.parse(f"sqlite:///{tmp_path / 'optuna.db'}")
    with url.single_worker_guard():
        with pytest.raises(C.ConfigError, match="SQLite is not for parallel workers"):
            with url.single_worker_guard():
                pass
    with url.single_worker_guard():  # released: a later worker may start
        pass
