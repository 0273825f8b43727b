"""Faults a study survives under a real `mlflow server` (PostgreSQL backend) and a real Optuna
database on PostgreSQL, each injected while a trial is provably in flight (RUNNING in Optuna,
its MLflow run logging epochs): the tracking server killed and kept down for 60 s, and a worker
stopped with SIGTERM. SIGKILL of a worker is in test_scaleout.py; a PostgreSQL restart in the
storage tests.

Every study must end with each trial accounted for (none lost, none duplicated) and no MLflow
run left RUNNING.
"""

from __future__ import annotations

import collections
import signal
import time

import optuna
import pytest
from conftest import (
    MODEL,
    REFERENCE_OFF,
    STUDY,
    all_runs,
    frozen,
    running_server,
    still_training,
    stop_group,
    subprocess_env,
    trial_runs,
    wait_for_epoch,
    worker,
)
from mlflow.tracking import MlflowClient

OUTAGE_S = 60  # a minute down: an outage a study must ride out, inside the client's retry window
RESTART_S = 60  # a generous allowance for the killed server to start again
EPOCHS = 10  # digits; the worker is frozen mid-trial while the server is killed, so few epochs will do


def test_http_retries_outlast_the_outage():
    """The retry policy MLflow builds from the project's settings (fmnist_exp/__init__.py) keeps
    trying for longer than the outage plus a server restart, with no jitter to help it."""
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, MLFLOW_HTTP_REQUEST_MAX_RETRIES
    from mlflow.utils.request_utils import _get_request_session
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    import fmnist_exp  # noqa: F401  (sets the HTTP retry defaults)

    session = _get_request_session(MLFLOW_HTTP_REQUEST_MAX_RETRIES.get(), MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get(),
                                   0.0, (500, 502, 503, 504), True, True)
    retry = session.get_adapter("http://127.0.0.1/").max_retries
    last_attempt_s = 0.0
    refused = NewConnectionError(None, "connection refused")
    while True:  # a POST refused again and again: when does the last attempt go out?
        try:
            retry = retry.increment(method="POST", url="/api/2.0/mlflow/runs/log-batch", error=refused)
        except MaxRetryError:
            break
        last_attempt_s += retry.get_backoff_time()
    assert last_attempt_s >= OUTAGE_S + RESTART_S, f"MLflow gives up {last_attempt_s:.0f} s after the first refusal"


@pytest.mark.slow
def test_tracking_server_down_60s_mid_trial(cluster):
    tmp, uri = cluster["tmp"], cluster["tracking"]
    study_file = tmp / "outage.yaml"
    study_file.write_text(STUDY.format(epochs=EPOCHS, samples=2000, reference=REFERENCE_OFF))
    # a healthy worker: a long grace, so that no heartbeat starved on busy cores counts against it
    proc = worker(cluster, study_file, "outage", 2, "worker.log", grace_s=120)
    log = tmp / "worker.log"
    in_flight = wait_for_epoch(proc, log)
    # frozen from the check to the kill: the server dies while this trial still has epochs to log,
    # however fast epochs go and however slowly this process gets here under load
    with frozen(proc):
        still_training(in_flight.info.run_id, EPOCHS)
        study = optuna.load_study(study_name="outage", storage=cluster["optuna"])
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        assert [t.user_attrs.get("mlflow_run_id") for t in running] == [in_flight.info.run_id]
        stop_group(cluster["server"])  # SIGKILL to mlflow server and its uvicorn workers
        t_down = time.time()
    time.sleep(OUTAGE_S)  # the outage this test times: a fixed sleep by design
    assert proc.poll() is None, "the worker gave up while the server was down:\n" + log.read_text()[-3000:]
    with running_server(cluster["server_cmd"], uri + "/health", cwd=tmp, env=subprocess_env(), timeout=120,
                        log="server-restarted.log"):
        t_up = time.time()
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
        t_done = time.time()

        study = optuna.load_study(study_name="outage", storage=cluster["optuna"])
        assert [t.number for t in study.trials] == [0, 1]
        assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
        runs = all_runs()
        assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
        per_trial = collections.Counter(r.data.tags["optuna_trial"] for r in trial_runs(runs))
        assert per_trial == {"0": 1, "1": 1}, "one MLflow run per Optuna trial"
        for t in study.trials:
            assert t.user_attrs["mlflow_run_id"] in {r.info.run_id for r in runs}
        client = MlflowClient()
        ends = {m.step: m.timestamp / 1000 for m in client.get_metric_history(in_flight.info.run_id, "val_accuracy")}
        assert sorted(ends) == list(range(EPOCHS)), "every epoch of the interrupted trial logged"
        # Between two epochs the worker only logs the first one's metrics (timestamped when it ended),
        # so a gap longer than the next epoch's training is time spent waiting on the tracking server.
        took = {m.step: m.value for m in client.get_metric_history(in_flight.info.run_id, "epoch_time_s")}
        starts = {k: ends[k] - took[k] for k in ends}
        waited, resumed = max((starts[k + 1] - ends[k], starts[k + 1]) for k in range(EPOCHS - 1))
        assert waited >= OUTAGE_S, f"the trial waited at most {waited:.0f} s at an epoch: the outage missed it"
        champion = client.get_model_version_by_alias(MODEL, "champion")
        assert champion.tags["source_run_id"] == study.best_trial.user_attrs["mlflow_run_id"]
    print(f"\n[faults] tracking server down {t_up - t_down:.0f} s (killed, {OUTAGE_S} s, restarted); the trial "
          f"waited {waited:.0f} s at an epoch's log_metrics and went on {resumed - t_up:.0f} s after the server "
          f"answered again; the worker finished {t_done - t_up:.0f} s after it")


@pytest.mark.slow
def test_sigterm_ends_runs_failed_and_study_resumes(cluster, monkeypatch):
    """SIGTERM to a worker process mid-trial; then the study resumed by a `tune` in this process (what resumes
    is the study in its two stores, not a process: the process that gets the signal is the real one)."""
    from fmnist_exp import params as P
    from fmnist_exp.commands import tune

    tmp = cluster["tmp"]
    study_file = tmp / "term.yaml"
    # the worker is frozen from the check that its trial is still training to the signal, which it
    # handles once continued: SIGTERM lands mid-trial however fast the epochs go
    epochs = 10
    study_file.write_text(STUDY.format(epochs=epochs, samples=3000, reference=REFERENCE_OFF))
    proc = worker(cluster, study_file, "term", 2, "term.log")
    in_flight = wait_for_epoch(proc, tmp / "term.log")
    with frozen(proc):
        still_training(in_flight.info.run_id, epochs)
        t_term = time.time()
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 130, (tmp / "term.log").read_text()[-3000:]
    t_exit = time.time()

    runs = {r.info.run_id: r for r in all_runs()}
    assert runs[in_flight.info.run_id].info.status == "FAILED"
    assert runs[in_flight.data.tags["mlflow.parentRunId"]].info.status == "FAILED"
    assert [r.info.run_name for r in runs.values() if r.info.status == "RUNNING"] == []
    study = optuna.load_study(study_name="term", storage=cluster["optuna"])
    assert [(t.number, t.state.name) for t in study.trials] == [(0, "FAIL")]
    epochs_done = len(MlflowClient().get_metric_history(in_flight.info.run_id, "val_accuracy"))

    monkeypatch.chdir(tmp)
    resumed = tune.run(P.tune_args({"family": "mlp", "study": str(study_file), "study_name": "term",
                                    "storage": cluster["optuna"], "n_trials": 1, "data": "digits"})).flat()
    assert resumed["n_trials_total"] == 2, resumed
    t_resumed = time.time()
    study = optuna.load_study(study_name="term", storage=cluster["optuna"])
    assert [(t.number, t.state.name) for t in study.trials] == [(0, "FAIL"), (1, "COMPLETE")]
    assert [r.info.run_name for r in all_runs() if r.info.status == "RUNNING"] == []
    assert MlflowClient().get_model_version_by_alias(MODEL, "champion")
    print(f"\n[faults] SIGTERM after {epochs_done} of {epochs} epochs: the worker exited {t_exit - t_term:.1f} s "
          "later with "
          f"its runs FAILED; a new worker resumed the study (trial 1, registration) in {t_resumed - t_exit:.0f} s")
