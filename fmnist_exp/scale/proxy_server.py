"""`storage-proxy`: Optuna's gRPC storage proxy in front of a PostgreSQL study, for many workers
that should hold no database connection of their own.

    python -m fmnist_exp storage-proxy --storage postgresql://fmnist@db-host/optuna --port 13000
    python -m fmnist_exp tune --storage grpc://proxy-host:13000 ...      # on every worker

Workers heartbeat through the proxy (proxy_client.py); a reaper thread here does what surviving
workers do on a direct connection: every heartbeat interval it fails the stale trials of every
study, ends their MLflow runs FAILED and enqueues their retry (heartbeat.on_stale_trial). Direct
workers and proxied ones may share a study; each sees the other's heartbeats.

The proxy keeps nothing of its own: the studies, trials and heartbeats are in the database, so a
proxy restarted on the same port (or another one, listed second in the workers' URL) carries on
the same studies while the workers retry their calls (proxy_client.RETRY_FOR_S). A proxy that
starts waits one grace period before it judges any trial: heartbeats may be old only because no
proxy was there to take them, and every live worker beats again within that time.

The proxy is plaintext gRPC without authentication (Optuna's): keep it on loopback or a private
network. It reads MLFLOW_TRACKING_URI to end lost trials' runs, and FMNIST_GRACE_S for the grace.
"""

from __future__ import annotations

import contextlib
import copy
import signal
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import grpc
import mlflow
import optuna
from optuna.distributions import json_to_distribution
from optuna.trial import TrialState

from ..params import ConfigError, ProxyArgs
from .health import check_bind, check_tracking_server, shown_uri
from .heartbeat import GRACE_S, HEARTBEAT_S
from .optuna_private import CachedStorage, OptunaStorageProxyService, api_pb2, api_pb2_grpc, never_beaten
from .proxy_client import HEARTBEAT_KEY, KEEPALIVE_S, LOCK_PREFIX
from .storage import StorageURL

THREADS = 10  # gRPC handler threads, as Optuna's proxy; each uses at most one pooled connection
SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),  # a second proxy on a port in use fails to start rather than share its calls
    # the workers' keepalive pings (proxy_client.KEEPALIVE_S) are welcome however long a call takes
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_S * 1000 // 2),
    ("grpc.http2.max_ping_strikes", 0),
]


class _Service(OptunaStorageProxyService):
    """Optuna's proxy service, with the heartbeat attribute written as a database heartbeat."""

    _backend: CachedStorage  # what run() serves: get_storage's cache around the RDB storage

    def SetTrialSystemAttribute(self, request, context):
        if request.key == HEARTBEAT_KEY:
            self._backend.record_heartbeat(request.trial_id)
            return api_pb2.SetTrialSystemAttributeReply()
        return super().SetTrialSystemAttribute(request, context)

    def SetTrialParameter(self, request, context):
        """Optuna's, for trials its cache has not seen too. The cache finds a trial's study among
        the trials it created or read, which a trial created through another proxy, or before this
        one restarted, is not (a KeyError, NOT_FOUND to the worker): the database knows it."""
        args = (request.trial_id, request.param_name, request.param_value_internal,
                json_to_distribution(request.distribution))
        try:
            try:
                self._backend.set_trial_param(*args)
            except KeyError:
                self._backend._backend.set_trial_param(*args)
        except KeyError as e:
            context.abort(code=grpc.StatusCode.NOT_FOUND, details=str(e))
        except optuna.exceptions.UpdateFinishedTrialError as e:
            context.abort(code=grpc.StatusCode.FAILED_PRECONDITION, details=str(e))
        except ValueError as e:
            context.abort(code=grpc.StatusCode.INVALID_ARGUMENT, details=str(e))
        return api_pb2.SetTrialParameterReply()


class Reaper(threading.Thread):
    """Every ``interval`` seconds, the first time one grace period after the start, fail the stale
    trials of every study in ``backend`` (the database's heartbeat table, the database's clock, the
    grace of the backend) and those that never beat, and run the backend's stale-trial callback on
    each: MLflow runs ended FAILED, the trial retried."""

    def __init__(self, backend: CachedStorage, interval: float) -> None:
        super().__init__(name="stale-trial reaper", daemon=True)
        self.backend, self.interval, self.stopped = backend, interval, threading.Event()
        self.first_seen: dict[int, float] = {}  # lock study id -> when this reaper first saw it
        self.unbeaten: dict[int, dict[int, float]] = {}  # study id -> trial id -> first seen without a beat

    def run(self) -> None:
        # A proxy started just now (perhaps restarted) has heard from no worker yet: heartbeats may
        # be old only because no proxy took them. Every live worker beats again within a grace
        # period (it tries every HEARTBEAT_S), so the first sweep waits one.
        if self.stopped.wait(GRACE_S):
            return
        while True:
            self.sweep()
            if self.stopped.wait(self.interval):
                return

    def sweep(self) -> None:
        try:
            studies = self.backend.get_all_studies()
        except Exception as e:  # the database is gone for longer than dbretry waits: try next round
            print(f"[storage-proxy] reaper could not list studies: {e}", flush=True)
            return
        locks = {s._study_id for s in studies if s.study_name.startswith(LOCK_PREFIX)}
        self.first_seen = {k: v for k, v in self.first_seen.items() if k in locks}  # released ones are gone
        for s in studies:
            try:
                if s._study_id in locks:
                    self.free_if_dead(s._study_id)
                    continue
                study = optuna.load_study(study_name=s.study_name, storage=self.backend)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
                self.fail_never_beaten(study)
            except Exception as e:  # one study's trouble (deleted meanwhile) must not stop the others
                print(f"[storage-proxy] reaper, study {s.study_name!r}: {type(e).__name__}: {e}", flush=True)
        self.unbeaten = {k: v for k, v in self.unbeaten.items() if k in {s._study_id for s in studies}}

    def fail_never_beaten(self, study: optuna.Study) -> None:
        """Fail, as stale, a RUNNING trial seen without any heartbeat for a grace period, which
        Optuna's stale-trial query passes over: its worker died before its first beat, or it is a
        second trial made by a creation retried after its answer was lost with a proxy."""
        now, seen = time.monotonic(), self.unbeaten.get(study._study_id, {})
        since = {t: seen.get(t, now) for t in never_beaten(self.backend._backend, study._study_id)}
        self.unbeaten[study._study_id] = since
        callback = self.backend.get_heartbeat_stale_trial_callback()
        for trial_id in [t for t, first in since.items() if now - first > GRACE_S]:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                if self.backend.set_trial_state_values(trial_id, state=TrialState.FAIL):
                    trial = copy.deepcopy(self.backend.get_trial(trial_id))
                    print(f"[storage-proxy] trial {trial.number} of {study.study_name!r}: RUNNING without a "
                          f"heartbeat for {GRACE_S} s; failed", flush=True)
                    if callback is not None:
                        callback(study, trial)


    def free_if_dead(self, study_id: int) -> None:
        """Delete a registration-lock study whose holder died: its trial is stale, or it never got
        a trial (the holder died between the two calls) within the grace."""
        first = self.first_seen.setdefault(study_id, time.monotonic())
        stale = self.backend._get_stale_trial_ids(study_id)
        orphan = not self.backend.get_all_trials(study_id, deepcopy=False) and time.monotonic() - first > GRACE_S
        if stale or orphan:
            print(f"[storage-proxy] registration lock study {study_id}: its holder is gone; lock freed", flush=True)
            with contextlib.suppress(KeyError):
                self.backend.delete_study(study_id)
            self.first_seen.pop(study_id, None)


def check_backend(url: StorageURL) -> None:
    """The proxy serves PostgreSQL (or MySQL): SQLite is one worker's store, a proxy another's job."""
    if url.is_sqlite:
        raise ConfigError(f"storage-proxy --storage {url}: the proxy is for many workers and SQLite is for one; "
                          "give it postgresql://USER@HOST:PORT/DATABASE (one worker can use SQLite directly)")
    if url.is_grpc:
        raise ConfigError(f"storage-proxy --storage {url}: that is a proxy already; give the proxy the database "
                          "URL, postgresql://USER@HOST:PORT/DATABASE")


def run(args: ProxyArgs) -> None:
    """Check the database, the tracking server and the port, then serve until SIGTERM or Ctrl-C."""
    if not args.storage:
        raise ConfigError("storage-proxy needs --storage postgresql://USER@HOST:PORT/DATABASE, the study store "
                          "it serves (password in PGPASSWORD or ~/.pgpass)")
    url = StorageURL.parse(args.storage)
    check_backend(url)
    check_tracking_server()  # lost trials' runs are ended there
    url.check()
    host, port = args.host, args.port
    check_bind(host, port)

    backend = optuna.storages.get_storage(url.open(application_name="fmnist-exp storage-proxy"))
    assert isinstance(backend, CachedStorage), "Optuna caches an RDB storage it is given"
    server = grpc.server(ThreadPoolExecutor(max_workers=THREADS), options=SERVER_OPTIONS)
    api_pb2_grpc.add_StorageServiceServicer_to_server(_Service(backend), server)
    server.add_insecure_port(f"{host}:{port}")
    reaper = Reaper(backend, interval=HEARTBEAT_S)

    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    server.start()
    reaper.start()
    print(f"[storage-proxy] serving {url} at grpc://{host}:{port}; workers: --storage grpc://{host}:{port}. "
          f"Stale trials (no heartbeat for {GRACE_S} s) are failed, retried and their runs in "
          f"{shown_uri(mlflow.get_tracking_uri())} ended FAILED, the first look in {GRACE_S} s "
          "(workers that lost a proxy beat again first). SIGTERM or Ctrl-C stops it.", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        print("[storage-proxy] stopping: finishing calls in flight (up to 5 s)", flush=True)
        server.stop(grace=5).wait()
        reaper.stopped.set()
        reaper.join(timeout=30)
        backend._backend.engine.dispose()  # close the pool's connections now, not at exit
        print("[storage-proxy] stopped", flush=True)
