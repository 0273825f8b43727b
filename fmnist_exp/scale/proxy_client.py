"""The client side of the storage proxy: workers that reach their study through ``grpc://HOST:PORT``,
or through several proxies, ``grpc://HOST1:PORT1,HOST2:PORT2``, used one at a time.

Optuna's proxy has no heartbeat call, so behind a plain proxy a worker killed mid-trial would
leave its trial RUNNING for ever. Here the heartbeat travels as a trial system attribute write
(:data:`HEARTBEAT_KEY`) that the proxy turns into Optuna's own ``record_heartbeat`` on the
database (proxy_server.py); whether a trial is stale is the proxy's to judge, never a worker's.

Optuna's client fails at the first call that finds no proxy (and Optuna 5 then dies in its own
error handling with an UnboundLocalError, the trial left RUNNING). Here such a call (the proxy
killed, restarting, its host gone) is retried with backoff, each retry on the next proxy of the
list, for up to :data:`RETRY_FOR_S` seconds; after that the worker stops with :class:`ProxyLost`.
A proxy keeps no state of its own (the study is in the database), so a restarted proxy, or the
next one, carries on where the lost one stopped.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from typing import ClassVar

import grpc
import optuna
from optuna.storages import GrpcStorageProxy

from .heartbeat import GRACE_S, HEARTBEAT_S
from .optuna_private import BaseHeartbeat, GrpcClientCache, HeartbeatThread, api_pb2, api_pb2_grpc


class ProxyUnavailable(Exception):
    """No Optuna storage proxy answers at an address; the message says what happened."""


class ProxyLost(BaseException):
    """No storage proxy answered for RETRY_FOR_S seconds: the worker stops. A BaseException, as
    asyncio's CancelledError is, so that Optuna's ``except Exception`` around a trial does not take
    it for one failed trial and go on to the next, which could not be recorded either."""


HEARTBEAT_KEY = "fmnist:heartbeat"
LOCK_PREFIX = "fmnist-exp lock:"  # studies that are registration locks, not studies
PROBE_TIMEOUT_S = 5.0
# How long a storage call keeps retrying when no proxy answers: a restart takes seconds, a proxy
# moved to another host a minute or so. Longer than the heartbeat grace on purpose: a restarted
# proxy waits one grace before it judges any trial (proxy_server.Reaper), so an outage up to
# this bound costs no trial.
RETRY_FOR_S = float(os.environ.get("FMNIST_PROXY_RETRY_S", "120"))
MAX_DELAY_S = 5.0  # backoff 0.5 s doubling to this: a restarted proxy is found within seconds
# How long a heartbeat waits for a proxy before it tries the next. A silent proxy is found by the
# keepalive pings (below) sooner; this bounds a slow one, which still records the beat: at 128
# workers on one busy proxy, calls took 4-10 s, beats given 5 s never arrived, and the reaper
# failed 57 live trials. A third of the grace keeps a failed-over beat inside it.
BEAT_TIMEOUT_S = max(5.0, GRACE_S / 3)
KEEPALIVE_S = 10  # a connection with a call in flight is pinged this often (the proxy allows it)
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),  # Optuna's: a study's trials come in one message
    # A proxy whose host went silent (frozen, powered off, cut off) fails the call in flight within
    # one or two keepalives, to be retried on the next proxy, not at TCP's timeout minutes later.
    # A live proxy acks pings while its handler waits (on the database, say): slow is not silent.
    ("grpc.keepalive_time_ms", KEEPALIVE_S * 1000),
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_S * 1000),  # gRPC's keepalive_timeout_ms is not what ends the wait
    ("grpc.http2.max_pings_without_data", 0),
]


def rpc_text(e: BaseException) -> str:
    if isinstance(e, grpc.RpcError):
        return f"{e.code().name}: {e.details()}"
    return f"{type(e).__name__}: {e}"


class HeartbeatingProxy(GrpcStorageProxy, BaseHeartbeat):
    """Optuna's gRPC client with heartbeats, retries and failover over ``addresses`` (host, port).

    Optuna starts its heartbeat thread for a trial only on a storage that is a BaseHeartbeat. The
    beat is a system attribute write the proxy turns into a database heartbeat; whether a trial is
    stale is the proxy's to judge, never a worker's."""

    _lost: ClassVar[dict[tuple[tuple[str, int], ...], str]] = {}  # proxy lists this process gave up on

    def __init__(self, addresses: Sequence[tuple[str, int]]) -> None:
        self._addresses = tuple(addresses)
        self._at = 0  # which of them is in use
        self._generation = 0  # bumped at each new channel, so two threads that fail together move on once
        self._switch = threading.Lock()
        self._beat_failed = False
        with warnings.catch_warnings():  # the gRPC proxy is "experimental" since Optuna 4.2; we rely on it
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(host=self._addresses[0][0], port=self._addresses[0][1])

    @property
    def where(self) -> str:
        return f"storage proxy {self._host}:{self._port}"

    def _setup(self) -> None:
        """Optuna's channel, stub and trial cache, on a channel with keepalive."""
        self._channel = grpc.insecure_channel(f"{self._host}:{self._port}", options=CHANNEL_OPTIONS)
        self._stub = api_pb2_grpc.StorageServiceStub(self._channel)
        self._cache = GrpcClientCache(self._stub)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        del state["_switch"]
        return state

    def __setstate__(self, state: dict) -> None:
        state["_switch"] = threading.Lock()
        super().__setstate__(state)

    def _next_proxy(self, generation: int) -> None:
        """A fresh channel to the next proxy of the list (the same one where it is the only one),
        unless another thread has opened one since ``generation``. The old channel is left open:
        another thread may be waiting on it, and it closes when the last call on it is done."""
        with self._switch:
            if self._generation != generation:
                return
            before = self.where
            self._at = (self._at + 1) % len(self._addresses)
            self._host, self._port = self._addresses[self._at]
            self._setup()
            self._generation += 1
            if self.where != before:
                print(f"[storage] switching from {before} to {self.where}", flush=True)

    @property
    def lost(self) -> bool:
        """Whether this process has given up on these proxies."""
        return self._addresses in HeartbeatingProxy._lost

    def _retried(self, name: str, call, *args, **kwargs):
        """``call(self, *args, **kwargs)``, retried while no proxy answers (UNAVAILABLE: refused,
        reset, shutting down): every proxy of the list in turn, then a pause that doubles from
        0.5 s to MAX_DELAY_S, for up to RETRY_FOR_S seconds from the first failure."""
        if self.lost:
            raise ProxyLost(HeartbeatingProxy._lost[self._addresses])
        failed_at: float | None = None
        delay, tries = 0.5, 0
        while True:
            generation, where, error = self._generation, self.where, None
            try:
                result = call(self, *args, **kwargs)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    error = rpc_text(e)
                else:
                    result = self._refused(e, name, where, failed_at, *args, **kwargs)
            except Exception as e:  # an answer (KeyError, UpdateFinishedTrialError, ...) from a proxy that answers
                result = self._refused(e, name, where, failed_at, *args, **kwargs)
            if error is None:
                self._answered(where, failed_at, name)
                return result
            now = time.monotonic()
            if failed_at is None:
                failed_at = now
                print(f"[storage] {where} does not answer ({error}); retrying {name} "
                      f"for up to {RETRY_FOR_S:.0f} s (FMNIST_PROXY_RETRY_S)", flush=True)
            elif now - failed_at >= RETRY_FOR_S:
                raise self._give_up(name, error, now - failed_at)
            tries += 1
            self._next_proxy(generation)
            if tries % len(self._addresses) == 0:  # each proxy tried once more: pause before the next round
                time.sleep(min(delay, max(0.0, failed_at + RETRY_FOR_S - now)))
                delay = min(2 * delay, MAX_DELAY_S)

    @staticmethod
    def _answered(where: str, failed_at: float | None, name: str) -> None:
        if failed_at is not None:
            print(f"[storage] {where} answers again after {time.monotonic() - failed_at:.1f} s ({name})", flush=True)

    def _refused(self, refusal: Exception, name: str, where: str, failed_at: float | None, *args, **kwargs):
        """Raise the error a proxy answered with, unless it refuses a trial's final state that an
        earlier attempt, whose answer was lost with a proxy, has written already: the trial holds
        that state and those values, so the write is done (Optuna's other writes may be repeated)."""
        if failed_at is not None and name == "set_trial_state_values":
            given = inspect.signature(GrpcStorageProxy.set_trial_state_values).bind(self, *args, **kwargs).arguments
            trial = self.get_trial(given["trial_id"])
            if trial.state == given["state"] and [float(v) for v in given.get("values") or []] == (trial.values or []):
                return True
        self._answered(where, failed_at, name)
        raise refusal

    def _give_up(self, name: str, error: str, waited: float) -> ProxyLost:
        proxies = ", ".join(f"{h}:{p}" for h, p in self._addresses)
        message = (f"no storage proxy answered at {proxies} for {waited:.0f} s ({error}; call {name}): this "
                   "worker stops and its MLflow runs end FAILED. A trial it was running stays RUNNING in the study "
                   "until a proxy runs again, whose reaper fails and retries it (its heartbeat stopped). Fix: "
                   "start the storage-proxy again (python -m fmnist_exp storage-proxy --storage postgresql://...), "
                   "list a second proxy (--storage grpc://HOST1:PORT1,HOST2:PORT2), or let workers wait longer "
                   f"(FMNIST_PROXY_RETRY_S, now {RETRY_FOR_S:.0f})")
        HeartbeatingProxy._lost[self._addresses] = message
        print(f"[storage] giving up: {message}", file=sys.stderr, flush=True)
        return ProxyLost(message)

    def record_heartbeat(self, trial_id: int) -> None:
        """One beat through the proxy in use or, where it does not answer, each of the others once
        (BEAT_TIMEOUT_S each): a failover thus reaches the next proxy's reaper within one heartbeat
        interval, even while training makes no other call. Never raises: Optuna's heartbeat thread
        would end at the first error, and the next beat may well get through."""
        request = api_pb2.SetTrialSystemAttributeRequest(trial_id=trial_id, key=HEARTBEAT_KEY,
                                                         value=json.dumps(time.time()))
        for _ in self._addresses:
            generation, where = self._generation, self.where
            try:
                self._stub.SetTrialSystemAttribute(request, timeout=BEAT_TIMEOUT_S)
            except grpc.RpcError as e:
                error = rpc_text(e)
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    break
                if generation == self._generation and len(self._addresses) > 1:  # said before the switch it makes
                    print(f"[storage] {where} does not answer a heartbeat ({error}); trying the next proxy",
                          flush=True)
                self._next_proxy(generation)
                continue
            if self._beat_failed:
                print(f"[tune] heartbeat of trial id {trial_id} delivered again ({where})", flush=True)
                self._beat_failed = False
            return
        if not self._beat_failed:  # said once per outage, not at every beat
            print(f"[tune] heartbeat of trial id {trial_id} not delivered: {error}; trying again every "
                  f"{HEARTBEAT_S} s", flush=True)
            self._beat_failed = True

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return []  # the proxy's reaper fails stale trials

    def get_heartbeat_interval(self) -> int:
        return HEARTBEAT_S

    def get_heartbeat_stale_trial_callback(self):
        return None


def _retrying(name: str):
    call = getattr(GrpcStorageProxy, name)

    @functools.wraps(call)
    def retried(self, *args, **kwargs):
        return self._retried(name, call, *args, **kwargs)

    return retried


# Every call of Optuna's client that reaches the proxy; BaseStorage's other methods use these.
for _name in (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
    "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
    "get_all_studies", "create_new_trial", "set_trial_param", "set_trial_state_values",
    "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials",
):
    setattr(HeartbeatingProxy, _name, _retrying(_name))


def probe(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise ProxyUnavailable, within ``timeout`` seconds, where no Optuna storage proxy answers."""
    try:  # a refused connection is said at once; gRPC itself would keep trying until the timeout
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise ProxyUnavailable(f"nothing listens there ({e.strerror or type(e).__name__})") from None
    client = HeartbeatingProxy([(host, port)])
    try:
        client.wait_server_ready(timeout=timeout)
        client._stub.GetStudyIdFromName(api_pb2.GetStudyIdFromNameRequest(study_name="fmnist-exp probe"),
                                        timeout=timeout)
    except ConnectionError:
        raise ProxyUnavailable(f"nothing answers there within {timeout:.0f} s") from None
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:  # NOT_FOUND is how an Optuna proxy answers
            raise ProxyUnavailable(f"it does not answer as an Optuna storage proxy ({rpc_text(e)})") from None
    finally:
        client.close()


@contextlib.contextmanager
def lock_study(client: HeartbeatingProxy, name: str):
    """The registration lock for workers behind a proxy, which have no database session to hold an
    advisory lock: the study ``fmnist-exp lock:<name>`` exists while the lock is held (creating a
    study is atomic: one creator wins). Its one trial heartbeats like any trial, so when the holder
    dies the proxy's reaper finds it stale and deletes the study, which frees the lock; the reaper
    also frees a lock study left without a trial (a creation whose answer was lost with a proxy)."""
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
        if not client.lost:  # else no proxy answers: once one does, its reaper frees the lock
            with contextlib.suppress(KeyError):
                client.delete_study(study_id)
