"""`storage-proxy`: Optuna's gRPC storage proxy in front of a PostgreSQL study, for many workers
that should hold no database connection of their own.

    python -m fmnist_exp storage-proxy --storage postgresql://fmnist@db-host/optuna --port 13000
    python -m fmnist_exp tune --storage grpc://proxy-host:13000 ...      # on every worker

Optuna's proxy has no heartbeat call, so behind a plain proxy a worker killed mid-trial would
leave its trial RUNNING for ever. Here the heartbeat travels as a trial system attribute write
(:data:`HEARTBEAT_KEY`) that the proxy turns into Optuna's own ``record_heartbeat`` on the
database (the database's clock, as for direct workers), and a reaper thread in the proxy does
what surviving workers do on a direct connection: every heartbeat interval it fails the stale
trials of every study, ends their MLflow runs FAILED and enqueues their retry
(:func:`storage.on_stale_trial`). Workers never judge staleness themselves; direct workers and
proxied ones may share a study, each sees the other's heartbeats.

The proxy is plaintext gRPC without authentication (Optuna's): keep it on loopback or a private
network. It reads MLFLOW_TRACKING_URI to end lost trials' runs, and FMNIST_GRACE_S for the grace.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import grpc
import mlflow
import optuna
from optuna.storages import GrpcStorageProxy
# Optuna exports run_grpc_proxy_server, which owns its server and never returns, and no heartbeat
# base class: the service class, its messages and the heartbeat classes are private, used here
# to add the heartbeat and a clean stop (pinned: optuna>=5,<6).
from optuna.storages._grpc.auto_generated import api_pb2, api_pb2_grpc
from optuna.storages._grpc.servicer import OptunaStorageProxyService
from optuna.storages._heartbeat import BaseHeartbeat, HeartbeatThread

from . import storage
from .config import ConfigError

HEARTBEAT_KEY = "fmnist:heartbeat"
LOCK_PREFIX = "fmnist-exp lock:"  # studies that are registration locks, not studies
THREADS = 10  # gRPC handler threads, as Optuna's proxy; each uses at most one pooled connection
PROBE_TIMEOUT_S = 5.0


class HeartbeatingProxy(GrpcStorageProxy, BaseHeartbeat):
    """Optuna's gRPC client with heartbeats: Optuna starts its heartbeat thread for a trial only on a
    storage that is a BaseHeartbeat. The beat is a system attribute write the proxy turns into a
    database heartbeat; whether a trial is stale is the proxy's to judge, never a worker's."""

    def __init__(self, host: str, port: int) -> None:
        with warnings.catch_warnings():  # the gRPC proxy is "experimental" since Optuna 4.2; we rely on it
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(host=host, port=port)

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_KEY, time.time())
        except (grpc.RpcError, optuna.exceptions.UpdateFinishedTrialError, KeyError) as e:
            # Optuna's heartbeat thread ends at the first error; the next beat may well get through
            print(f"[tune] heartbeat of trial id {trial_id} not delivered: {_rpc_text(e)}", flush=True)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return []  # the proxy's reaper fails stale trials

    def get_heartbeat_interval(self) -> int:
        return storage.HEARTBEAT_S

    def get_heartbeat_stale_trial_callback(self):
        return None



def probe(url: storage.StorageURL, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Refuse, within ``timeout`` seconds, a grpc:// URL where no Optuna storage proxy answers."""
    try:  # a refused connection is said at once; gRPC itself would keep trying until the timeout
        socket.create_connection((url.url.host, url.url.port), timeout=timeout).close()
    except OSError as e:
        raise url.proxy_error(f"nothing listens there ({e.strerror or type(e).__name__})") from None
    client = url.open()
    try:
        client.wait_server_ready(timeout=timeout)
        client._stub.GetStudyIdFromName(api_pb2.GetStudyIdFromNameRequest(study_name="fmnist-exp probe"),
                                        timeout=timeout)
    except ConnectionError:
        raise url.proxy_error(f"nothing answers there within {timeout:.0f} s") from None
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:  # NOT_FOUND is how an Optuna proxy answers
            raise url.proxy_error(f"it does not answer as an Optuna storage proxy ({_rpc_text(e)})") from None
    finally:
        client.close()
def _rpc_text(e: BaseException) -> str:
    if isinstance(e, grpc.RpcError):
        return f"{e.code().name}: {e.details()}"
    return f"{type(e).__name__}: {e}"


@contextlib.contextmanager
def registration_lock(client: HeartbeatingProxy, name: str):
    """The registration lock for workers behind a proxy, which have no database session to hold an
    advisory lock: the study ``fmnist-exp lock:<name>`` exists while the lock is held (creating a
    study is atomic: one creator wins). Its one trial heartbeats like any trial, so when the holder
    dies the proxy's reaper finds it stale and deletes the study, which frees the lock."""
    waited = False
    while True:
        try:
            study_id = client.create_new_study([optuna.study.StudyDirection.MAXIMIZE], LOCK_PREFIX + name)
            break
        except optuna.exceptions.DuplicatedStudyError:
            if not waited:
                print(f"[tune] waiting for the registration lock of {name!r} (another worker registers)", flush=True)
                waited = True
            time.sleep(2)
    try:
        with HeartbeatThread(client.create_new_trial(study_id), client):
            yield
    finally:
        with contextlib.suppress(KeyError):
            client.delete_study(study_id)


class _Service(OptunaStorageProxyService):
    """Optuna's proxy service, with the heartbeat attribute written as a database heartbeat."""

    def SetTrialSystemAttribute(self, request, context):
        if request.key == HEARTBEAT_KEY:
            self._backend.record_heartbeat(request.trial_id)
            return api_pb2.SetTrialSystemAttributeReply()
        return super().SetTrialSystemAttribute(request, context)


class Reaper(threading.Thread):
    """Every ``interval`` seconds, fail the stale trials of every study in ``backend`` (the
    database's heartbeat table, the database's clock, the grace of the backend) and run the
    backend's stale-trial callback on each: MLflow runs ended FAILED, the trial retried."""

    def __init__(self, backend: optuna.storages.BaseStorage, interval: float) -> None:
        super().__init__(name="stale-trial reaper", daemon=True)
        self.backend, self.interval, self.stopped = backend, interval, threading.Event()
        self.first_seen: dict[int, float] = {}  # lock study id -> when this reaper first saw it

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.sweep()

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
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(optuna.load_study(study_name=s.study_name, storage=self.backend))
            except Exception as e:  # one study's trouble (deleted meanwhile) must not stop the others
                print(f"[storage-proxy] reaper, study {s.study_name!r}: {type(e).__name__}: {e}", flush=True)


    def free_if_dead(self, study_id: int) -> None:
        """Delete a registration-lock study whose holder died: its trial is stale, or it never got
        a trial (the holder died between the two calls) within the grace."""
        first = self.first_seen.setdefault(study_id, time.monotonic())
        stale = self.backend._get_stale_trial_ids(study_id)
        orphan = not self.backend.get_all_trials(study_id, deepcopy=False) and time.monotonic() - first > storage.GRACE_S
        if stale or orphan:
            print(f"[storage-proxy] registration lock study {study_id}: its holder is gone; lock freed", flush=True)
            with contextlib.suppress(KeyError):
                self.backend.delete_study(study_id)
            self.first_seen.pop(study_id, None)


def check_backend(url: storage.StorageURL) -> None:
    """The proxy serves PostgreSQL (or MySQL): SQLite is one worker's store, a proxy another's job."""
    if url.is_sqlite:
        raise ConfigError(f"storage-proxy --storage {url}: the proxy is for many workers and SQLite is for one; "
                          "give it postgresql://USER@HOST:PORT/DATABASE (one worker can use SQLite directly)")
    if url.is_grpc:
        raise ConfigError(f"storage-proxy --storage {url}: that is a proxy already; give the proxy the database "
                          "URL, postgresql://USER@HOST:PORT/DATABASE")


def run(params: dict) -> None:
    """Check the database, the tracking server and the port, then serve until SIGTERM or Ctrl-C."""
    from .dashboard import check_bind

    if not params["storage"]:
        raise ConfigError("storage-proxy needs --storage postgresql://USER@HOST:PORT/DATABASE, the study store "
                          "it serves (password in PGPASSWORD or ~/.pgpass)")
    url = storage.StorageURL.parse(params["storage"])
    check_backend(url)
    storage.check_tracking_server()  # lost trials' runs are ended there
    url.check()
    host, port = params["host"], params["port"]
    check_bind(host, port)

    backend = optuna.storages.get_storage(url.open(application_name="fmnist-exp storage-proxy"))
    server = grpc.server(ThreadPoolExecutor(max_workers=THREADS))
    api_pb2_grpc.add_StorageServiceServicer_to_server(_Service(backend), server)
    server.add_insecure_port(f"{host}:{port}")
    reaper = Reaper(backend, interval=storage.HEARTBEAT_S)

    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    server.start()
    reaper.start()
    print(f"[storage-proxy] serving {url} at grpc://{host}:{port}; workers: --storage grpc://{host}:{port}. "
          f"Stale trials (no heartbeat for {storage.GRACE_S} s) are failed, retried and their runs in "
          f"{mlflow.get_tracking_uri()} ended FAILED. SIGTERM or Ctrl-C stops it.", flush=True)
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
