"""The Optuna storage URL as one value that alone knows its rules: parse, redact, open, check, lock.

A storage URL may hold a database password. :class:`StorageURL` is the only holder of the
raw text: it prints, logs and reports itself with the password replaced by ``***``, so the
password reaches no MLflow parameter, tag, artifact, log line or error message. Better still,
leave it out of the URL (``postgresql://user@host/db``) and let libpq find it in
``PGPASSWORD`` or ``~/.pgpass``.

One worker uses SQLite; many share a study through PostgreSQL (every storage call retried across
a database restart: dbretry.py; lost workers' trials retried: heartbeat.py), or through Optuna's
gRPC proxy (``grpc://HOST:PORT``, served by the `storage-proxy` entry point: proxy_server.py),
where they hold no database connection and the proxy judges stale trials for them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import mlflow
import optuna
import sqlalchemy
from mlflow.tracking import MlflowClient

from ..params import ConfigError
from . import dbretry, locks
from .health import check_tracking_server
from .heartbeat import GRACE_S, HEARTBEAT_S, on_stale_trial
from .proxy_client import HeartbeatingProxy, ProxyUnavailable, lock_study, probe

DEFAULT_PROXY_PORT = 13000  # Optuna's
OPTUNA_SCHEMA = "optuna-schema"  # the lock under which a worker opens (and so may create) the study store
CONNECT_TIMEOUT_S = 5  # libpq's connect_timeout: an unreachable host is reported in seconds, not minutes

# Why a first connection failed, in libpq's words (psycopg 3 passes them through), and what to do.
# None is retried before a study starts; during one, a refused connection is a restart and is
# retried (dbretry), a failed login or a missing database never.
_PERMANENT = (
    (dbretry.AUTH_FAILED, "the server refused the login",
     "check the user name and the password: put the password in PGPASSWORD or ~/.pgpass (mode 0600) "
     "rather than in the URL, see docs/scale-out.md, 'PostgreSQL and one tracking server'"),
    (dbretry.NO_DATABASE, "the database does not exist",
     "create it (createdb -O {user} {database}) or fix the database name at the end of the URL"),
    (("failed to resolve host", "could not translate host name", "name or service not known",
      "nodename nor servname"), "the host name is unknown", "fix the host name in the URL"),
    (("connection refused",), "nothing accepts connections there",
     "start PostgreSQL on {host}:{port} (scripts/start_postgres.sh for a local one) or fix host and port"),
    (("timeout expired", "timed out"), f"no answer within {CONNECT_TIMEOUT_S} s",
     "check that {host}:{port} is reachable from this machine (firewall, VPN, listen_addresses)"),
)


@dataclass(frozen=True)
class StorageURL:
    """An Optuna storage URL, parsed once; ``str`` and ``repr`` never show its password."""

    url: sqlalchemy.engine.URL = field(repr=False)
    more_proxies: tuple[tuple[str, int], ...] = ()  # grpc://A,B,...: the proxies after the first, for failover

    @classmethod
    def parse(cls, text: str | None) -> StorageURL:
        """None or '' is the default storage; grpc://HOST:PORT a storage proxy; anything else must be a
        SQLAlchemy database URL."""
        if not text:
            return cls.default()
        if text[:7].lower() == "grpc://" and "," in text:  # several proxies, each checked as one
            first, *more = (cls.parse("grpc://" + part) for part in text[7:].split(","))
            return cls(first.url, tuple(m.proxy_address for m in more))
        try:
            url = sqlalchemy.engine.make_url(text)
        except Exception:  # the text may hold a password: say what is wrong without quoting it
            raise ConfigError("storage: not a database URL; use sqlite:///path/optuna.db, "
                              "postgresql://USER@HOST:PORT/DATABASE (password in PGPASSWORD or ~/.pgpass) "
                              "or grpc://HOST:PORT (a storage-proxy)") from None
        if url.get_backend_name() == "grpc":
            if not url.host or url.username or url.password or url.database or url.query:
                raise ConfigError(f"storage={cls(url)}: a storage proxy URL is grpc://HOST:PORT and nothing more, "
                                  "or a list, grpc://HOST1:PORT1,HOST2:PORT2 (the proxy holds the database URL)")
            return cls(url.set(port=url.port or DEFAULT_PROXY_PORT))
        if url.get_backend_name() not in ("sqlite", "postgresql", "mysql"):
            raise ConfigError(f"storage={cls(url)}: {url.get_backend_name()!r} is not a database Optuna can use; "
                              "use sqlite:///path/optuna.db, postgresql://USER@HOST:PORT/DATABASE "
                              "or grpc://HOST:PORT (a storage-proxy)")
        if url.drivername == "postgresql":
            # postgresql:// means psycopg2 to SQLAlchemy < 2.1 and psycopg 3 after; name the driver
            # we install (psycopg 3) so the URL works with either.
            url = url.set(drivername="postgresql+psycopg")
        return cls(url)

    @classmethod
    def default(cls) -> StorageURL:
        """sqlite optuna.db beside mlflow.db for a sqlite tracking store, else ./optuna.db."""
        tracking_uri = mlflow.get_tracking_uri()
        if tracking_uri.startswith("sqlite:"):
            folder = Path(sqlalchemy.engine.make_url(tracking_uri).database or ".").parent
        else:
            folder = Path(".")
        return cls(sqlalchemy.engine.make_url(f"sqlite:///{(folder / 'optuna.db').resolve()}"))

    def __str__(self) -> str:
        return ",".join([self.url.render_as_string(hide_password=True), *(f"{h}:{p}" for h, p in self.more_proxies)])

    def __repr__(self) -> str:
        return f"StorageURL({str(self)!r})"

    @property
    def has_password(self) -> bool:
        return bool(self.url.password)

    @property
    def without_password(self) -> str:
        """The URL as a user should pass it: libpq finds the password in PGPASSWORD or ~/.pgpass."""
        # URL.set(password=None) keeps the password (None means "unchanged" there)
        return self.url._replace(password=None).render_as_string(hide_password=False)

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @property
    def is_postgresql(self) -> bool:
        return self.url.get_backend_name() == "postgresql"

    @property
    def is_grpc(self) -> bool:
        return self.url.get_backend_name() == "grpc"

    @property
    def sqlite_path(self) -> Path:
        return Path(self.url.database or "")

    @property
    def where(self) -> str:
        """Host, port, database and user, for messages."""
        if self.is_sqlite:
            return f"SQLite file {self.sqlite_path}"
        if self.is_grpc:
            return f"storage prox{'ies' if self.more_proxies else 'y'} " + ", ".join(
                f"{h}:{p}" for h, p in self.proxy_addresses)
        user = f" as user {self.url.username}" if self.url.username else ""
        return f"database {self.url.database!r} on {self.url.host or 'localhost'}:{self.url.port or 5432}{user}"

    def scrub(self, text: str) -> str:
        """``text`` with this URL's password (raw or URL-encoded) replaced by ***."""
        pw = self.url.password
        if not pw:
            return text
        for form in {str(pw), quote(str(pw), safe="")}:
            text = text.replace(form, "***")
        return text

    def _engine_kwargs(self, *, pool: bool = True, application_name: str = "fmnist-exp") -> dict[str, Any]:
        if self.is_sqlite:
            return {}
        # application_name: pg_stat_activity says which connections are whose (worker or proxy)
        connect_args: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S, "application_name": application_name}
        kwargs: dict[str, Any] = {"connect_args": connect_args}
        if self.url.drivername == "postgresql+psycopg":
            # No server-side prepared statements: psycopg 3 prepares a query on its 5th run, and behind
            # PgBouncer's transaction pooling (Debian's 1.18) the next transaction may land on another
            # server connection ("prepared statement _pg3_0 already exists / does not exist").
            # bench/bench_scale.py measured no cost in a direct connection.
            connect_args["prepare_threshold"] = None
        if pool:
            kwargs["pool_pre_ping"] = True  # a connection the server dropped (restart) is replaced, not used
        else:
            kwargs["poolclass"] = sqlalchemy.pool.NullPool
        return kwargs

    def engine(self) -> sqlalchemy.engine.Engine:
        """A pool-less engine for one-off statements (the probe, the advisory lock)."""
        return sqlalchemy.create_engine(self.url, **self._engine_kwargs(pool=False))

    def check(self) -> None:
        """Connect once, within seconds, and say what is wrong (host and database, never the
        password) and how to fix it; called before any MLflow run is started."""
        if self.is_sqlite:
            folder = self.sqlite_path.parent
            if not folder.is_dir():
                raise ConfigError(f"storage={self}: folder {folder} does not exist; create it or choose another path")
            return
        if self.is_grpc:
            failures = []
            for host, port in self.proxy_addresses:  # one that answers will do: workers fail over
                try:
                    probe(host, port)
                    return
                except ProxyUnavailable as e:
                    failures.append(f"{host}:{port}: {e}" if self.more_proxies else str(e))
            raise self.proxy_error("; ".join(failures))
        engine = self.engine()
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT 1"))
        except Exception as e:
            raise self.config_error(e) from None
        finally:
            engine.dispose()

    def config_error(self, e: BaseException) -> ConfigError:
        """A connection failure as a message for people: where, what, and what to do."""
        text = dbretry.chain_text(e)
        if self.is_grpc:
            return self.proxy_error(f"{type(e).__name__}: {text.strip()[:300]}")
        for needles, what, fix in _PERMANENT:
            if any(n in text.lower() for n in needles):
                fix = fix.format(host=self.url.host or "localhost", port=self.url.port or 5432,
                                 user=self.url.username or "USER", database=self.url.database or "DATABASE")
                detail = self.scrub(text.strip().splitlines()[0])[:300]
                return ConfigError(f"cannot open the Optuna storage, {self.where}: {what} ({detail}). Fix: {fix}.")
        return ConfigError(f"cannot open the Optuna storage, {self.where}: "
                           f"{type(e).__name__}: {self.scrub(text)[:500]}")

    def proxy_error(self, what: str) -> ConfigError:
        """A storage proxy that cannot be used, as a message for people."""
        return ConfigError(
            f"cannot use the Optuna {self.where}: {what}. Fix: start it there (python -m fmnist_exp storage-proxy "
            f"--storage postgresql://USER@DBHOST/DATABASE --host {self.url.host} --port {self.url.port}, see "
            "docs/scale-out.md, 'The storage proxy') or fix host and port in the URL.")

    @property
    def proxy_address(self) -> tuple[str, int]:
        """A grpc:// URL's host and port (parse gives it both)."""
        assert self.is_grpc and self.url.host and self.url.port, "only a storage proxy URL has a proxy address"
        return self.url.host, self.url.port

    @property
    def proxy_addresses(self) -> tuple[tuple[str, int], ...]:
        """Every proxy of a grpc:// URL, in the order workers try them."""
        return (self.proxy_address, *self.more_proxies)

    def _proxy_client(self) -> HeartbeatingProxy:
        try:
            return HeartbeatingProxy(self.proxy_addresses)
        except Exception as e:
            raise self.config_error(e) from None

    def open(self, application_name: str = "fmnist-exp") -> optuna.storages.BaseStorage:
        """An RDB storage with heartbeats and retries (SQLite and PostgreSQL alike), or for
        grpc:// a proxy client that heartbeats through the proxy."""
        if self.is_grpc:
            return self._proxy_client()
        # Optuna creates a new database's tables in the process that opens it first, unlocked
        # (locks.py): workers that start together open it one at a time.
        schema_lock = self.lock(OPTUNA_SCHEMA) if self.is_sqlite or self.is_postgresql else contextlib.nullcontext()
        try:
            with schema_lock, warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return dbretry.RetryingRDBStorage(
                    self.url.render_as_string(hide_password=False), heartbeat_interval=HEARTBEAT_S,
                    grace_period=GRACE_S, heartbeat_stale_trial_callback=on_stale_trial,
                    engine_kwargs=self._engine_kwargs(application_name=application_name) or None,
                )
        except Exception as e:
            if dbretry.is_permanent(e):
                raise self.config_error(e) from None
            raise

    @contextlib.contextmanager
    def single_worker_guard(self):
        """Refuse a second worker on one SQLite storage: SQLite serialises writers and loses
        heartbeats under contention, so parallel workers need PostgreSQL."""
        if not self.is_sqlite:
            yield
            return
        lock = self.sqlite_path.with_suffix(".worker.lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(
                    f"another tune worker is already using {self.sqlite_path}. SQLite is not for parallel "
                    "workers (one writer at a time, heartbeats lost under lock contention): run several "
                    "workers against PostgreSQL (storage=postgresql://...), see docs/scale-out.md, "
                    "'PostgreSQL and one tracking server'."
                ) from None
            f.write(str(os.getpid()))
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def registration_lock(self, name: str) -> contextlib.AbstractContextManager:
        """Serialise the champion decision for ``name`` across workers sharing this storage
        (:meth:`lock`; through PgBouncer too: tests/test_pgbouncer.py)."""
        return self.lock(name, unlocked=f"no registration lock for {self}; run `register` once after the workers")

    @contextlib.contextmanager
    def lock(self, name: str, *, unlocked: str = ""):
        """Serialise ``name`` (a step that one worker at a time must do) across the workers sharing
        this storage. PostgreSQL: an advisory lock in the study's own database. SQLite: a
        file lock beside the database (one machine). A storage proxy: a lock study through the
        proxy (proxy_client.lock_study). Other storages: none; ``unlocked``, if given, is said."""
        if self.is_postgresql:
            with locks.advisory_lock(self.engine(), name, describe=self.config_error):
                yield
        elif self.is_grpc:
            client = self._proxy_client()
            try:
                with lock_study(client, name):
                    yield
            finally:
                client.close()
        elif self.is_sqlite:
            with locks.file_lock(locks.beside(self.sqlite_path, f"lock-{locks.lock_key(name) & 0xFFFFFFFF:x}")):
                yield
        else:
            if unlocked:
                print(f"[tune] note: {unlocked}", flush=True)
            yield


def preflight(text: str | None) -> StorageURL:
    """The storage URL, once the tracking server and the storage have answered and a new
    tracking store has been made (under a lock: locks.py): seconds, before TensorFlow is
    imported or any MLflow run is started. Under `mlflow run` with a password in the URL, warns
    (once) that MLflow has recorded it. Done once per storage and tracking store in a process: the
    CLI asks before it imports the command, and the command's own setup gets the answer."""
    key = (text, mlflow.get_tracking_uri())
    if key not in _preflighted:
        url = StorageURL.parse(text)
        check_tracking_server()
        locks.ready_tracking_store()
        flag_recorded_password(url)
        url.check()
        _preflighted[key] = url
    return _preflighted[key]


_preflighted: dict[tuple[str | None, str], StorageURL] = {}


_flagged: set[str] = set()  # runs already warned about in this process


def flag_recorded_password(url: StorageURL) -> bool:
    """Under `mlflow run -P storage=...` MLflow has logged the URL, password included, as the run's
    ``storage`` parameter before this process started. Parameters cannot be changed or deleted,
    so: say so once on stderr with the way to avoid it, and tag the run
    ``storage_password_exposed=true`` so an administrator can find it. Returns whether it did."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not (url.has_password and run_id) or run_id in _flagged:
        return False
    _flagged.add(run_id)
    client = MlflowClient()
    recorded = client.get_run(run_id).data.params.get("storage", "")
    if url.scrub(recorded) == recorded:  # the password is not in it, raw or URL-encoded
        return False
    client.set_tag(run_id, "storage_password_exposed", "true")
    print(f"WARNING: the storage password is now stored in MLflow, in parameter 'storage' of run {run_id}: "
          "`mlflow run` logs every -P value itself, before this program starts, and MLflow parameters "
          "cannot be changed or deleted (the run is tagged storage_password_exposed=true: delete the run "
          "with `mlflow runs delete` and `mlflow gc`, or change the password). Nothing else of this run holds it. "
          f"To avoid this, leave the password out of the URL (-P storage={url.without_password}) and give it to "
          "PostgreSQL's client through PGPASSWORD or ~/.pgpass (see docs/scale-out.md, "
          "'PostgreSQL and one tracking server').",
          file=sys.stderr, flush=True)
    return True
