"""Database calls that survive a restart of the database server.

A PostgreSQL restart (or an admin shutdown, a failover, a network drop) breaks every connection
in flight; until it is back, new ones are refused. Without help, Optuna's heartbeat thread dies
on the first such error and ``trial.report``/``study.tell`` raise out of ``study.optimize`` (in
Optuna 5 as an UnboundLocalError from its own error handling), killing the worker and leaving its
trial RUNNING. Here each storage call is retried with backoff while the error is a lost
connection; wrong credentials and a missing database are never retried.
"""

from __future__ import annotations

import functools
import os
import threading
import time

import optuna
import sqlalchemy

# How long a storage call keeps retrying a lost connection (a database restart takes seconds;
# a failover a minute or two) before the error reaches the trial.
RETRY_FOR_S = float(os.environ.get("FMNIST_STORAGE_RETRY_S", "180"))
# libpq's words (psycopg 3 passes them through) for failures that stay failures.
AUTH_FAILED = ("password authentication failed", "no password supplied", "peer authentication failed",
               "no pg_hba.conf entry", "role \"")
NO_DATABASE = ("database \"",)


def causes(e: BaseException) -> list[BaseException]:
    """An exception and the ones it came from (Optuna wraps SQLAlchemy wraps psycopg), once each."""
    chain: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and all(cur is not seen for seen in chain):
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    return chain


def chain_text(e: BaseException) -> str:
    """The messages of an exception and its causes."""
    return "\n".join(str(getattr(x, "orig", None) or x) for x in causes(e))


def is_permanent(e: BaseException) -> bool:
    """Wrong credentials or a missing database: no retry mends them."""
    text = chain_text(e).lower()
    return any(n in text for n in (*AUTH_FAILED, *NO_DATABASE))


def is_transient(e: BaseException) -> bool:
    """A lost or refused connection (server restarting, admin shutdown, network drop): worth
    retrying. Wrong credentials or a missing database are not, nor is any SQL error."""
    chain = causes(e)
    if any(isinstance(x, (KeyboardInterrupt, SystemExit)) for x in chain):
        return False  # Ctrl-C or SIGTERM inside a storage call broke the connection: stop, do not retry
    lost = any(isinstance(x, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                              sqlalchemy.exc.DisconnectionError))
               or (isinstance(x, sqlalchemy.exc.DBAPIError) and x.connection_invalidated) for x in chain)
    return lost and not is_permanent(chain[0])


def retry_transient(fn, *args, what: str = "storage call", **kwargs):
    """``fn(*args, **kwargs)``, retried with exponential backoff (0.5 s doubling to 15 s) while it
    fails on a lost connection, for up to RETRY_FOR_S seconds."""
    deadline, delay = time.monotonic() + RETRY_FOR_S, 0.5
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not is_transient(e) or time.monotonic() + delay > deadline:
                raise
            line = str(getattr(e, "orig", None) or e.__cause__ or e).strip().splitlines()
            print(f"[storage] {what}: database connection lost ({line[0][:160] if line else type(e).__name__}); "
                  f"retrying in {delay:.1f} s", flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


class RetryingRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose calls survive a database restart: each call that fails on a
    lost connection is retried (the pool's pre-ping then opens a fresh one). Subclassing, not
    wrapping, keeps Optuna's cache (``_CachedStorage`` wraps RDBStorage instances only) and its
    heartbeat thread, which calls ``record_heartbeat`` here and would otherwise end at
    the first error, leaving the trial to be reaped as stale."""

    _depth = threading.local()  # only the outermost call retries: inner calls share its attempt


def _retrying(name: str):
    inner = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(inner)
    def call(self, *args, **kwargs):
        depth = getattr(RetryingRDBStorage._depth, "n", 0)
        RetryingRDBStorage._depth.n = depth + 1
        try:
            if depth:
                return inner(self, *args, **kwargs)
            return retry_transient(inner, self, *args, what=name, **kwargs)
        finally:
            RetryingRDBStorage._depth.n = depth

    return call


# Every storage call Optuna makes during a study, including the private ones _CachedStorage uses.
for _name in (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
    "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
    "get_trial_user_attrs", "get_trial_system_attrs", "get_all_studies", "create_new_trial", "_create_new_trial",
    "set_trial_param", "_set_trial_param", "get_trial_param", "set_trial_state_values",
    "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials", "_get_trials", "get_best_trial",
    "_get_best_trial_id", "record_heartbeat", "_get_stale_trial_ids",
):
    setattr(RetryingRDBStorage, _name, _retrying(_name))
