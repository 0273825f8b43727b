"""`dashboard`: optuna-dashboard over a study store, on loopback by default.

The MLflow UI shows every trial as a run; optuna-dashboard shows the study as Optuna sees it
(history, importances, intermediate values, the trials still running in other workers). It reads
the same storage `tune` writes, so it works while a study runs.

    python -m fmnist_exp dashboard                      # optuna.db beside mlflow.db, port 8080
    python -m fmnist_exp dashboard --storage postgresql://user@db/optuna --port 8081   # password: PGPASSWORD

A storage that cannot be read (a missing SQLite file, a file that is not an Optuna database, an
unreachable PostgreSQL) is refused before the server starts: the dashboard would otherwise create
an empty database, or start and show nothing.
"""

from __future__ import annotations

import ipaddress
import sqlite3

import optuna

from ..params import ConfigError, DashboardArgs
from .health import check_bind
from .storage import StorageURL

LOOPBACK_NAMES = ("localhost",)


def open_storage(url: StorageURL) -> optuna.storages.BaseStorage:
    """The study store at ``url``, opened only if it exists and is an Optuna database."""
    if url.is_sqlite:
        path = url.sqlite_path
        if not path.is_file():
            raise ConfigError(f"storage={url}: no such file. Run `python -m fmnist_exp tune` first (it writes "
                              "optuna.db beside mlflow.db), or pass --storage with the study store tune used.")
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "studies" not in tables:
            raise ConfigError(f"storage={url}: not an Optuna database (no 'studies' table; is it the MLflow "
                              "store?). Pass the optuna.db that tune wrote.")
    else:
        url.check()  # an unreachable server, a wrong password: ConfigError naming host and database
    return url.open()


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in LOOPBACK_NAMES


def run(args: DashboardArgs) -> None:
    """Check the storage and the port, then serve until interrupted."""
    from optuna_dashboard import run_server

    url = StorageURL.parse(args.storage)
    study_store = open_storage(url)
    check_bind(args.host, args.port)
    names = [s.study_name for s in study_store.get_all_studies()]
    print(f"[dashboard] {url}: {len(names)} stud{'y' if len(names) == 1 else 'ies'}"
          f"{' (' + ', '.join(names) + ')' if names else ''}", flush=True)
    if not is_loopback(args.host):
        # the dashboard has no login and can delete studies and trials
        print(f"[dashboard] warning: listening on {args.host}, not loopback: anyone who reaches it can "
              "delete studies", flush=True)
    print(f"[dashboard] open http://{args.host}:{args.port}/dashboard/ (Ctrl-C stops it)", flush=True)
    run_server(study_store, host=args.host, port=args.port)
