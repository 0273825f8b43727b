"""Optuna storage for one worker or many: heartbeats, retries of lost trials, the SQLite
single-worker guard and the lock that makes registration race-free.

Many workers share one study through an RDB storage (PostgreSQL for real parallelism):
each worker heartbeats its running trial; when a worker dies (even SIGKILL), a surviving
worker finds the stale trial, marks it FAIL, ends its MLflow runs as FAILED and enqueues a
retry with the same parameters.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import warnings
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import optuna
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from .config import ConfigError

# A live worker touches its running trial every HEARTBEAT_S; one silent for GRACE_S belongs to a
# dead worker. The environment may shorten both (the fault-tolerance tests do).
HEARTBEAT_S = int(os.environ.get("FMNIST_HEARTBEAT_S", "10"))
GRACE_S = int(os.environ.get("FMNIST_GRACE_S", "40"))
MAX_RETRY = 2


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:")


def sqlite_path(url: str) -> Path:
    return Path(url[len("sqlite:///"):])


def default_storage() -> str:
    """sqlite:///<dir of mlflow.db>/optuna.db for a sqlite tracking store, else ./optuna.db."""
    tracking_uri = mlflow.get_tracking_uri()
    folder = sqlite_path(tracking_uri).parent if is_sqlite(tracking_uri) else Path(".")
    return f"sqlite:///{(folder / 'optuna.db').resolve()}"


def _end_run(client: MlflowClient, run_id: str | None, reason: str) -> None:
    if not run_id:
        return
    try:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "failure", reason)
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
    except Exception as e:  # the tracking store may be gone too; the retry matters more
        print(f"[tune] could not end MLflow run {run_id}: {e}", flush=True)


def on_stale_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Called in a surviving worker for a trial whose worker stopped heartbeating."""
    reason = f"worker lost: no heartbeat for {GRACE_S}s (trial {trial.number} marked FAIL and retried)"
    print(f"[tune] trial {trial.number}: {reason}", flush=True)
    client = MlflowClient()
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        client.set_tag(run_id, "trial_state", "FAIL")
    _end_run(client, run_id, reason)
    _end_run(client, trial.user_attrs.get("mlflow_parent_run_id"), "worker lost: no heartbeat")
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)


def sqlalchemy_url(url: str) -> str:
    """postgresql:// means psycopg2 to SQLAlchemy < 2.1 and psycopg 3 after; name the driver
    we install (psycopg 3) so the URL works with either."""
    return "postgresql+psycopg://" + url[len("postgresql://"):] if url.startswith("postgresql://") else url


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB storage with heartbeats and retries (SQLite and PostgreSQL alike)."""
    url = sqlalchemy_url(url)
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.9; we rely on them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                heartbeat_stale_trial_callback=on_stale_trial,
                engine_kwargs={"pool_pre_ping": True} if not is_sqlite(url) else None,
            )
    except Exception as e:
        raise ConfigError(f"storage={redact(url)}: cannot open the Optuna storage ({type(e).__name__}: {e})") from None


@contextlib.contextmanager
def single_worker_guard(url: str):
    """Refuse a second worker on one SQLite storage: SQLite serialises writers and loses
    heartbeats under contention, so parallel workers need PostgreSQL."""
    if not is_sqlite(url):
        yield
        return
    lock = sqlite_path(url).with_suffix(".worker.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"another tune worker is already using {sqlite_path(url)}. SQLite is not for parallel "
                "workers (one writer at a time, heartbeats lost under lock contention): run several "
                "workers against PostgreSQL (storage=postgresql://...), see README 'Many workers'."
            ) from None
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def registration_lock(url: str, name: str):
    """Serialise the champion decision for ``name`` across workers sharing ``url``.

    PostgreSQL: a session advisory lock in the study's own database. SQLite: a file lock
    beside the database (one machine). Other storages: no lock, said once on the console.
    """
    key = int.from_bytes(hashlib.sha256(f"fmnist-exp:{name}".encode()).digest()[:8], "big", signed=True)
    if url.startswith("postgresql"):
        import sqlalchemy

        engine = sqlalchemy.create_engine(sqlalchemy_url(url), poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        engine.dispose()
    elif is_sqlite(url):
        path = sqlite_path(url).with_suffix(f".register-{key & 0xFFFFFFFF:x}.lock")
        with open(path, "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    else:
        print(f"[tune] note: no registration lock for {redact(url)}; run `register` once after the workers",
              flush=True)
        yield


def redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url
