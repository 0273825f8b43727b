"""Locks for what workers started together must do once: create a new store's tables (MLflow's
tracking database, Optuna's), create a study, decide a champion.

MLflow and Optuna each create and migrate a new database's schema in whichever process opens it
first, without a lock: processes that open one new store at the same moment all run the
migrations, and any of them (all of them, at times) fail halfway (SQLite: ``duplicate column
name``, ``table _alembic_tmp_... already exists``; PostgreSQL: ``duplicate key value violates
unique constraint "pg_type_typname_nsp_index"``, alembic's ``Online migration expected to match
one row ... 0 found``). So each store is opened under a lock, by one process at a time: the
first creates the schema, the others find it made.

A SQLite file is locked with a file lock beside it (fcntl: one machine, as SQLite itself); a
PostgreSQL database with an advisory lock held in an open transaction on a connection of its
own, in that database: a holder that dies ends its session, and with it the lock. While it is
held, the connection says ``SELECT 1`` every few seconds, so that a server's or PgBouncer's idle
transaction timeout does not end it; a lock lost anyway (the session killed, the server
restarted) is said at once on stderr: what runs under it is no longer alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import sqlalchemy

from ..params import ConfigError
from . import dbretry

KEEPALIVE_S = 5.0  # far below the idle transaction timeouts people set (PgBouncer's idle_transaction_timeout, ...)


def lock_key(name: str) -> int:
    """The advisory lock key (a signed 64-bit integer) of ``name``."""
    return int.from_bytes(hashlib.sha256(f"fmnist-exp:{name}".encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive fcntl lock on ``path`` (created, with its folder, if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def advisory_lock(engine: sqlalchemy.engine.Engine, name: str, *, retry: bool = True,
                  describe: Callable[[Exception], Exception] | None = None) -> Iterator[None]:
    """Hold PostgreSQL's advisory lock ``name`` on a connection of ``engine``'s (disposed of
    afterwards). ``retry``: connecting is retried across a database restart (dbretry); without it
    a refused connection is raised at once. ``describe`` turns a failure to connect into the
    error to raise (a message for people).

    A transaction lock, held by keeping its transaction open and waited for by asking again in
    short transactions: behind PgBouncer's transaction pooling a session lock would stay on
    whichever server session PgBouncer lends next, and a waiter blocked in the server would pin
    one of the pool's connections (see tests/test_pgbouncer.py).
    """
    try:
        try:
            conn = dbretry.retry_transient(engine.connect, what=f"lock {name!r}") if retry else engine.connect()
        except Exception as e:
            if describe is None:
                raise
            raise describe(e) from None
        with conn:
            ask, wait = sqlalchemy.text("SELECT pg_try_advisory_xact_lock(:k)"), 0.05
            while not conn.execute(ask, {"k": lock_key(name)}).scalar():
                conn.rollback()  # the transaction's end gives PgBouncer its server connection back
                time.sleep(wait * random.uniform(0.5, 1.5))  # spread out: waiters ask at different times
                wait = min(2 * wait, 1.0)
            keeper = _KeepAlive(conn, name)
            keeper.start()
            try:
                yield
            finally:
                keeper.stop()
                with contextlib.suppress(sqlalchemy.exc.DBAPIError):  # a lost session took the lock along
                    conn.rollback()  # the transaction's end releases the lock
    finally:
        engine.dispose()


class _KeepAlive(threading.Thread):
    """Keeps a held lock's transaction busy; says so once when the lock is lost. Only this thread
    uses the connection until :meth:`stop` returns."""

    def __init__(self, conn: sqlalchemy.engine.Connection, name: str):
        super().__init__(name=f"lock-keepalive-{name}", daemon=True)
        self.conn, self.lock_name, self.lost = conn, name, False
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(KEEPALIVE_S):
            try:
                self.conn.execute(sqlalchemy.text("SELECT 1"))
            except sqlalchemy.exc.DBAPIError as e:
                self.lost = True
                why = (dbretry.chain_text(e).strip().splitlines() or [type(e).__name__])[0][:200]
                print(f"[lock] warning: the lock {self.lock_name!r} was lost with its database session ({why}); "
                      "what runs under it may now run beside another worker's", file=sys.stderr, flush=True)
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def beside(sqlite_file: Path, name: str) -> Path:
    """The lock file for ``name`` next to a SQLite database file."""
    return sqlite_file.with_name(f"{sqlite_file.name}.{name}.lock")


TRACKING_SCHEMA = "mlflow-schema"


def ready_tracking_store() -> None:
    """Open the MLflow tracking store once under a lock, so that its tables exist before any
    other MLflow call of this process: MLflow creates a new database store's schema unlocked in
    every process that opens it. A tracking server made its store when it started, and a
    file store has no schema: nothing to do for them. Cheap once the store exists."""
    uri = mlflow.get_tracking_uri()
    try:
        url = sqlalchemy.engine.make_url(uri)
    except Exception:  # http(s)://, file:, a plain path: not a database URL
        return
    backend = url.get_backend_name()
    if backend == "sqlite" and url.database not in (None, "", ":memory:"):
        lock: contextlib.AbstractContextManager = file_lock(beside(Path(url.database or ""), TRACKING_SCHEMA))
    elif backend == "postgresql":
        # MLflow names no driver for postgresql://: SQLAlchemy 2.1 then takes psycopg (3), installed here
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                          connect_args={"connect_timeout": 5, "application_name": "fmnist-exp"})
        # said within seconds, not retried for minutes: nothing has started yet
        lock = advisory_lock(engine, TRACKING_SCHEMA, retry=False, describe=lambda e: _unusable(url, e))
    else:
        return  # MySQL or another database: MLflow's own behaviour, unlocked
    with lock:
        mlflow.MlflowClient(uri).search_experiments(max_results=1)  # MLflow makes the store here


def _unusable(url: sqlalchemy.engine.URL, e: Exception) -> ConfigError:
    lines = dbretry.chain_text(e).strip().splitlines()
    text = lines[0] if lines else type(e).__name__
    if url.password:
        text = text.replace(str(url.password), "***")
    return ConfigError(f"cannot open the MLflow tracking store {url.render_as_string(hide_password=True)}: "
                       f"{text[:300]}. Fix: check host, port, database and user in MLFLOW_TRACKING_URI (the "
                       "password in PGPASSWORD or ~/.pgpass), and that the database server runs")
