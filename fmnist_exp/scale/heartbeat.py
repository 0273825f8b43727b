"""Heartbeats and lost workers: how long a trial may stay silent, and what happens to it then.

A live worker touches its running trial every HEARTBEAT_S seconds; a trial silent for GRACE_S
belongs to a dead worker (even one killed with SIGKILL). Whoever notices (a surviving worker on a
direct database connection, or the storage proxy's reaper) marks it FAIL, ends its MLflow runs
FAILED and enqueues a retry with the same parameters (:func:`on_stale_trial`).

Behind a storage proxy the beats travel through it. While no proxy answers, a live worker's beats
fail and its trial's last beat ages, so no proxy may judge by it at once: a proxy that (re)starts
looks first after GRACE_S, by which time every live worker has beaten again (it tries every
HEARTBEAT_S), and a worker that fails over to the next proxy of its list beats there within
HEARTBEAT_S plus one beat's timeout (proxy_client.BEAT_TIMEOUT_S, a third of GRACE_S). So an outage as long as the
workers wait for a proxy (FMNIST_PROXY_RETRY_S) costs no trial of a live worker; only direct
workers sharing the study, who know nothing of the outage, would fail those trials after GRACE_S.
"""

from __future__ import annotations

import os

import optuna
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

# The environment may shorten both (the fault-tolerance tests do).
HEARTBEAT_S = int(os.environ.get("FMNIST_HEARTBEAT_S", "10"))
GRACE_S = int(os.environ.get("FMNIST_GRACE_S", "40"))
MAX_RETRY = 2


def _end_run(client: MlflowClient, run_id: str | None, reason: str, tags: dict[str, str] | None = None) -> None:
    if not run_id:
        return
    try:
        for key, value in (tags or {}).items():
            client.set_tag(run_id, key, value)
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "failure", reason)
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
    except Exception as e:  # the tracking store may be gone too, or not this one; the retry matters more
        print(f"[tune] could not end MLflow run {run_id}: {e}", flush=True)


def on_stale_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Called in a surviving worker (or the storage proxy) for a trial whose worker stopped
    heartbeating. Never raises: Optuna calls it for each stale trial in turn, and an error here
    would leave the later ones failed without their retries."""
    reason = f"worker lost: no heartbeat for {GRACE_S}s (trial {trial.number} marked FAIL and retried)"
    print(f"[tune] trial {trial.number}: {reason}", flush=True)
    try:
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)
    except Exception as e:  # the storage failed under us: the next sweep finds the trial FAIL, not retried
        print(f"[tune] could not queue the retry of trial {trial.number}: {type(e).__name__}: {e}", flush=True)
    client = MlflowClient()
    _end_run(client, trial.user_attrs.get("mlflow_run_id"), reason, tags={"trial_state": "FAIL"})
    _end_run(client, trial.user_attrs.get("mlflow_parent_run_id"), "worker lost: no heartbeat")
