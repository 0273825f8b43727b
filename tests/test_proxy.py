"""Workers behind the storage-proxy: real `storage-proxy` and `tune` processes, a real `mlflow
server` and PostgreSQL (the ``cluster`` of test_scaleout), one worker killed with SIGKILL mid-trial.

The workers hold no database connection (pg_stat_activity shows only the proxy's), heartbeat
through the proxy, and a dead worker's trial is failed, retried and its runs ended FAILED by the
proxy's reaper. Skips where PostgreSQL cannot be had; under CI=true that is a failure.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time

import optuna
import pytest
import sqlalchemy
from mlflow.tracking import MlflowClient

from conftest import MODEL, STUDY, all_runs, cli, free_port, subprocess_env, trial_runs, wait_for_epoch, worker

pytestmark = pytest.mark.slow
PROXY_APP = "fmnist-exp storage-proxy"  # the application_name of the proxy's database connections


@contextlib.contextmanager
def storage_proxy(cluster, grace_s: int):
    """`python -m fmnist_exp storage-proxy` over the cluster's Optuna database on a free port:
    yields its grpc:// URL once it answers; stops it with SIGTERM and checks it stopped cleanly."""
    from fmnist_exp.config import ConfigError
    from fmnist_exp.storage import StorageURL

    port = free_port()
    log_path = cluster["tmp"] / "proxy.log"
    env = {**subprocess_env(), "MLFLOW_TRACKING_URI": cluster["tracking"], "FMNIST_HEARTBEAT_S": "2",
           "FMNIST_GRACE_S": str(grace_s)}
    cmd = [sys.executable, "-m", "fmnist_exp", "storage-proxy", "--storage", cluster["optuna"], "--port", str(port)]
    url = f"grpc://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cluster["tmp"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail("storage-proxy exited:\n" + log_path.read_text()[-3000:])
            try:
                StorageURL.parse(url).check()
                break
            except ConfigError:
                if time.time() > deadline:
                    pytest.fail("storage-proxy never answered:\n" + log_path.read_text()[-3000:])
                time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    text = log_path.read_text()
    assert rc == 0 and "[storage-proxy] stopped" in text, text[-3000:]


def database_clients(pg_admin, db_url: str) -> set[str]:
    """application_name of every session now connected to the database of ``db_url``."""
    _, engine = pg_admin
    with engine.connect() as c:
        rows = c.execute(sqlalchemy.text("SELECT application_name FROM pg_stat_activity WHERE datname = :d"),
                         {"d": db_url.rsplit("/", 1)[1]})
        return {r[0] for r in rows}


def test_two_workers_behind_the_proxy_share_one_study(cluster, pg_admin):
    study_file = cluster["tmp"] / "s.yaml"
    study_file.write_text(STUDY.format(epochs=1, samples=800))
    with storage_proxy(cluster, grace_s=120) as url:
        procs = [worker(cluster, study_file, "proxied", 1, f"w{i}.log", grace_s=120, storage=url) for i in range(2)]
        clients, deadline = set(), time.time() + 900
        while any(p.poll() is None for p in procs) and time.time() < deadline:
            clients |= database_clients(pg_admin, cluster["optuna"])
            time.sleep(1)
        for i, p in enumerate(procs):
            assert p.wait(timeout=60) == 0, (cluster["tmp"] / f"w{i}.log").read_text()[-3000:]
    # every session on the Optuna database while the workers ran was the proxy's
    assert clients == {PROXY_APP}

    study = optuna.load_study(study_name="proxied", storage=cluster["optuna"])
    assert sorted(t.number for t in study.trials) == [0, 1]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials), \
        [(t.number, t.state.name) for t in study.trials]
    assert optuna.get_all_study_names(storage=cluster["optuna"]) == ["proxied"]  # the lock study is gone

    runs = all_runs()
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    parents = {r.info.run_id: r for r in runs if r.info.run_name == "tune proxied"}
    assert len(parents) == 2
    assert all(p.data.params["storage"] == url for p in parents.values())
    by_trial = {int(r.data.tags["optuna_trial"]): r for r in trial_runs(runs)}
    assert sorted(by_trial) == [0, 1]
    for t in study.trials:
        run = by_trial[t.number]
        assert run.info.run_id == t.user_attrs["mlflow_run_id"]
        assert run.data.tags["mlflow.parentRunId"] in parents
        assert float(run.data.params["dropout"]) == pytest.approx(t.params["dropout"])
    # both workers registered under the lock: each candidate once, one champion
    client = MlflowClient()
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert len({v.tags["source_run_id"] for v in versions}) == len(versions)
    assert client.get_model_version_by_alias(MODEL, "champion")


def test_killed_worker_behind_the_proxy_is_reaped_and_retried(cluster):
    study_file = cluster["tmp"] / "k.yaml"
    study_file.write_text(STUDY.format(epochs=12, samples=3000))
    with storage_proxy(cluster, grace_s=8) as url:
        victim = worker(cluster, study_file, "kill", 1, "victim.log", storage=url)
        victim_run = wait_for_epoch(victim, cluster["tmp"] / "victim.log")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)

        # no worker is left to notice: the proxy's reaper fails the trial and enqueues its retry
        storage = optuna.storages.RDBStorage(cluster["optuna"])
        study_id = storage.get_study_id_from_name("kill")
        deadline = time.time() + 120
        while len(storage.get_all_trials(study_id)) < 2:
            assert time.time() < deadline, (cluster["tmp"] / "proxy.log").read_text()[-3000:]
            time.sleep(1)
        storage.engine.dispose()

        survivor = worker(cluster, study_file, "kill", 2, "survivor.log", storage=url)
        assert survivor.wait(timeout=900) == 0, (cluster["tmp"] / "survivor.log").read_text()[-3000:]
    assert "trial 0: worker lost: no heartbeat" in (cluster["tmp"] / "proxy.log").read_text()

    study = optuna.load_study(study_name="kill", storage=cluster["optuna"])
    states = {t.number: t.state.name for t in study.trials}
    assert states == {0: "FAIL", 1: "COMPLETE", 2: "COMPLETE"}
    retry = study.trials[1]
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 0
    assert retry.params == study.trials[0].params

    runs = {r.info.run_id: r for r in all_runs()}
    assert runs[victim_run.info.run_id].info.status == "FAILED"
    assert "no heartbeat" in runs[victim_run.info.run_id].data.tags["failure"]
    assert runs[victim_run.data.tags["mlflow.parentRunId"]].info.status == "FAILED"
    assert [r.info.run_name for r in runs.values() if r.info.status == "RUNNING"] == []


def test_proxy_urls_are_checked_before_any_run(tracking, tmp_path):
    import mlflow

    from fmnist_exp.storage import StorageURL

    url = StorageURL.parse("grpc://proxy-host")
    assert str(url) == "grpc://proxy-host:13000" and url.is_grpc and url.where == "storage proxy proxy-host:13000"

    port = free_port()  # nothing listens there
    out = cli(["tune", "--family", "mlp", "--storage", f"grpc://127.0.0.1:{port}"], cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"storage proxy 127.0.0.1:{port}: nothing listens there" in out.stderr
    assert "storage-proxy --storage postgresql://" in out.stderr  # and what to do
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []

    out = cli(["storage-proxy", "--storage", f"sqlite:///{tmp_path / 'optuna.db'}"], cwd=tmp_path)
    assert out.returncode == 2 and "SQLite is for one" in out.stderr, out.stderr[-2000:]
