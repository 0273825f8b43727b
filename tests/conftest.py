"""Shared fixtures: every budget shrinks (tiny subsets, 1-2 epochs), never the behaviour.

Tracking goes to a real MLflow sqlite store under tmp_path; entry points run through the
real `mlflow run` CLI in a subprocess. The scale-out and fault tests share a ``cluster``: a real
`mlflow server` on a fresh PostgreSQL database and an Optuna database beside it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parent.parent
MLFLOW = str(Path(sys.executable).parent / "mlflow")  # the CLI of this interpreter's MLflow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_collection_finish(session):
    """What collection imported (TensorFlow, MLflow, the test modules) leaves the garbage collector's view, as
    `python -m fmnist_exp` does once its command is imported (cli.main): in-process tests train as it does."""
    gc.freeze()


def unavailable(msg: str, ci_runs: str = "these tests") -> NoReturn:
    """Skip for want of what ``msg`` names; under CI=true fail instead, since CI must run every test."""
    if os.environ.get("CI"):
        pytest.fail(f"{msg} -- CI must run {ci_runs}")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def dataset():
    from fmnist_exp import data

    return data.load()


@pytest.fixture(autouse=True)
def _no_active_experiment(monkeypatch):
    """Commands pick their experiment with mlflow.set_experiment, which remembers its id in this
    process and exports it (MLFLOW_EXPERIMENT_ID) to every subprocess: each test starts and ends
    without one, so no test or `mlflow run` inherits an experiment id from another test's store."""
    import mlflow.tracking.fluent

    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    yield
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store made once per test process: making one runs all of MLflow's schema
    migrations (3-6 s on these machines), which a test of its own store has no reason to pay again.
    Tests whose subject is making a new store (test_start_together.py) make their own."""
    import mlflow

    db = tmp_path_factory.mktemp("store-template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


def new_store(root: Path, template: Path) -> str:
    """A copy of the migrated empty store as root/mlflow.db, its Default experiment's artifacts under
    root/mlruns/0 as MLflow would have made it there; its URI."""
    db = root / "mlflow.db"
    shutil.copyfile(template, db)
    with contextlib.closing(sqlite3.connect(db)) as c, c:
        c.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (str(root / "mlruns" / "0"),))
    return f"sqlite:///{db}"


@pytest.fixture
def tracking(tmp_path, monkeypatch, migrated_store):
    """A fresh MLflow store (sqlite + ./mlruns) under tmp_path, used in-process and by subprocesses."""
    with in_use(new_store(tmp_path, migrated_store), tmp_path, monkeypatch) as uri:
        yield uri


@contextlib.contextmanager
def in_use(uri: str, tmp_path: Path, monkeypatch):
    """The store at ``uri`` made the tracking store (in-process and for subprocesses) and tmp_path the working
    directory for the block; whatever run the test left active is ended after it."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        while mlflow.active_run():
            mlflow.end_run()


@contextlib.contextmanager
def store_at(root: Path, template: Path | None = None):
    """A module's own MLflow store (sqlite + ./mlruns) in ``root``, the working directory meanwhile; yields its
    URI and puts the directory and MLFLOW_TRACKING_URI back afterwards (for module-scoped fixtures, which
    cannot use monkeypatch). ``template`` (``migrated_store``): a store made from it when ``root`` has none,
    so nothing migrates it later: a server process and this one opening a new store at once would both run
    MLflow's migrations on it, and the loser leaves it broken ("table _alembic_tmp_params already exists")."""
    import mlflow

    if template is not None and not (root / "mlflow.db").exists():
        new_store(root, template)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old_cwd, old_env = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(root)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        os.chdir(old_cwd)
        if old_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_env


def subprocess_env() -> dict:
    env = dict(os.environ)
    # `mlflow run --env-manager local` runs `python -m fmnist_exp ...`: it must be this interpreter.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    # a test's `mlflow server` runs no server jobs: each would start a consumer process per job type
    # (GenAI evaluation, prompt optimisation), unused here, as deploy/k8s/mlflow.yaml does too
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def mlflow_run(entry: str, params: dict, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """`mlflow run <repo> -e <entry> --env-manager local -P k=v ...` and return the finished process."""
    cmd = [MLFLOW, "run", str(REPO), "-e", entry, "--env-manager", "local"]
    for k, v in params.items():
        cmd += ["-P", f"{k}={v}"]
    proc = subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    return proc


def cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmnist_exp", *args], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def in_process(argv: list[str], capture) -> subprocess.CompletedProcess:
    """`python -m fmnist_exp ARGV` in this process (the CLI's main: the code the subprocess runs, without
    another TensorFlow import): its exit code and what it wrote, as ``cli`` returns them. ``capture``: the
    test's capsys, or capfd where what C++ or a child writes to the file descriptors counts too."""
    from fmnist_exp import cli as command_line

    capture.readouterr()  # what came before is not this command's
    code = command_line.main(argv)
    seen = capture.readouterr()
    return subprocess.CompletedProcess(argv, code, seen.out, seen.err)


def pinned_packages(model_uri: str) -> set[str]:
    """The package names a logged model's requirements.txt pins (what `mlflow models serve` installs)."""
    import mlflow

    with open(mlflow.pyfunc.get_model_dependencies(model_uri)) as f:
        return {line.split("==")[0] for line in f.read().split()}


def predict_in_batches(model, x, batch: int = 1024):
    """The servable classifier refuses batches over its limit; score a whole split in chunks."""
    import pandas as pd

    return pd.concat([model.predict(x[i:i + batch]) for i in range(0, len(x), batch)], ignore_index=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(cmd: list[str], ready_url: str, *, cwd: Path, env: dict, timeout: int = 180,
                   log: str = "server.log"):
    """Start a server process in its own process group (output to cwd/``log``), wait until
    ``ready_url`` answers, yield the process, and stop the whole group afterwards (`mlflow server`
    runs uvicorn workers as children); fail with the log's tail if it exits or never answers."""
    log_path = cwd / log
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + timeout
            while True:
                if proc.poll() is not None:
                    pytest.fail("server exited:\n" + log_path.read_text()[-3000:])
                try:
                    urllib.request.urlopen(ready_url, timeout=2)
                    break
                except OSError:
                    if time.time() > deadline:
                        pytest.fail(f"no answer from {ready_url} within {timeout} s:\n" + log_path.read_text()[-3000:])
                    time.sleep(0.1)
            yield proc
        finally:
            stop_group(proc, signal.SIGTERM)


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the process group ``proc`` leads and reap it; SIGKILL after 30 s."""
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)
    except ProcessLookupError:  # already gone (a test killed it)
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


# --- many workers on one study: PostgreSQL, a real `mlflow server`, `tune` worker processes ---

MODEL = "digits-classifier"  # what a study registers on the workers' data (worker(): digits)
# batch_size 32 (and a learning rate of 1e-2 where none is searched): a tiny budget that learns, shown on the
# validation images at p < 1e-6, not near 0.05: the gate registers no model at chance (issue 54)
STUDY = """description: scale-out test study
family: mlp
budget: {{n_trials: 2, epochs: {epochs}, train_samples: {samples}, timeout: 0}}
fixed: {{early_stopping_patience: 0, batch_size: 32}}
space:
  dropout: {{type: float, low: 0.0, high: 0.3}}
  learning_rate: {{type: float, low: 1.0e-3, high: 3.0e-3, log: true}}
  hidden_units: {{type: widths, layers: [1, 2], units: [32, 64]}}
pruner: {{type: none}}
reference: {reference}
"""
REFERENCE_OFF = "off"  # where the reference is not what a test checks: no second process training it
REFERENCE_SMALL = "{params: {epochs: 2}}"  # a reference trained, on a pinned budget


@pytest.fixture(scope="session")
def pg_admin():
    """An AUTOCOMMIT engine on FMNIST_TEST_PG; skips without PostgreSQL, fails under CI=true."""
    import sqlalchemy

    url = os.environ.get("FMNIST_TEST_PG", "postgresql://fmnist:fmnist@127.0.0.1:5432/postgres")
    try:
        engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as c:
            c.execute(sqlalchemy.text("SELECT 1"))
    except Exception as e:
        unavailable(f"PostgreSQL not reachable at {url} ({type(e).__name__}); run scripts/start_postgres.sh")
    yield url, engine
    engine.dispose()


def fresh_db(pg_admin, prefix: str, template: str = "") -> str:
    """A new database's URL; a copy of the database ``template`` (its name) when given."""
    import sqlalchemy

    url, engine = pg_admin
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with engine.connect() as c:
        c.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    return url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def mlflow_pg_template(pg_admin) -> str:
    """The name of an MLflow database on PostgreSQL migrated once per test process, which `cluster`
    copies (CREATE DATABASE ... TEMPLATE, a fraction of a second) instead of having each server run
    MLflow's migrations again (seconds each). Its Default experiment's artifacts are where a server
    serving artifacts puts them (mlflow-artifacts:/0), whatever folder that server proxies to."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    url = fresh_db(pg_admin, "mlflow_template")
    SqlAlchemyStore(url, "mlflow-artifacts:/").engine.dispose()  # no connection left: a template must have none
    return url.rsplit("/", 1)[1]


@pytest.fixture
def cluster(pg_admin, mlflow_pg_template, tmp_path, monkeypatch):
    """A real mlflow server (PostgreSQL backend, proxied artifacts) and an Optuna database.

    ``server`` is the server process (its group leader) and ``server_cmd`` starts it again on the
    same port and backend, for the tests that kill it."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    cmd = [MLFLOW, "server", "--backend-store-uri", fresh_db(pg_admin, "mlflow", mlflow_pg_template),
           "--artifacts-destination",
           str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with running_server(cmd, uri + "/health", cwd=tmp_path, env=subprocess_env(), timeout=120) as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        import mlflow

        mlflow.set_tracking_uri(uri)
        yield {"tracking": uri, "optuna": fresh_db(pg_admin, "optuna"), "tmp": tmp_path,
               "server": server, "server_cmd": cmd}


def worker(cluster, study_file, study_name, n_trials, log_name, grace_s: int = 8, storage: str = "",
           data: str = "digits"):
    """A `tune` worker process on the cluster, output to tmp/``log_name``. Heartbeats every 2 s;
    a trial silent for ``grace_s`` is taken for lost. The short default lets the kill tests see a
    SIGKILLed worker quickly; tests of healthy workers pass a long one, because several TensorFlow
    workers on two busy cores can starve a heartbeat thread for longer than 8 s. ``storage``
    (default: the cluster's Optuna database) may name a storage proxy, grpc://HOST:PORT. ``data``:
    the 8x8 digits by default (a fraction of a second an epoch, 360 test images to score): what
    these tests check is the processes, stores and servers around the training, not its images."""
    env = {**subprocess_env(), "MLFLOW_TRACKING_URI": cluster["tracking"],
           "FMNIST_HEARTBEAT_S": "2", "FMNIST_GRACE_S": str(grace_s)}
    cmd = [sys.executable, "-m", "fmnist_exp", "tune", "--family", "mlp", "--study", str(study_file),
           "--study_name", study_name, "--storage", storage or cluster["optuna"], "--n_trials", str(n_trials),
           "--data", data]
    log = open(cluster["tmp"] / log_name, "w")
    return subprocess.Popen(cmd, cwd=cluster["tmp"], env=env, stdout=log, stderr=subprocess.STDOUT)


def all_runs():
    import mlflow

    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def trial_runs(runs):
    return [r for r in runs if "optuna_trial" in r.data.tags and "final_of_trial" not in r.data.tags]


def wait_for_epoch(proc, log_path: Path, timeout: int = 300):
    """Wait until a trial of ``proc`` is provably in flight: RUNNING in MLflow with at least one
    epoch's val_accuracy logged; return that run. Fails (killing ``proc``) if it never gets there."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        running = [r for r in trial_runs(all_runs()) if r.info.status == "RUNNING"]
        if running and client.get_metric_history(running[0].info.run_id, "val_accuracy"):
            return running[0]
        time.sleep(0.2)
    proc.kill()
    pytest.fail("no trial got through an epoch:\n" + log_path.read_text()[-3000:])


@contextlib.contextmanager
def frozen(*procs: subprocess.Popen):
    """The processes stopped (SIGSTOP) meanwhile, continued (SIGCONT) after: what a test reads while
    they are frozen cannot change under it, so a fault injected then lands where the read saw them
    (mid-trial, mid-epoch), whatever the load, instead of wherever they got to by the time it lands."""
    for p in procs:
        p.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)


def still_training(run_id: str, epochs: int) -> int:
    """For a frozen worker: how many epochs run ``run_id`` has logged; fails unless it is RUNNING with
    epochs still to log (a fault injected now lands at one of its epochs)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    done = len(client.get_metric_history(run_id, "val_accuracy"))
    status = client.get_run(run_id).info.status
    assert status == "RUNNING" and done < epochs, \
        f"the trial trained out ({done} of {epochs} epochs, {status}) before it was frozen: give it more epochs"
    return done


# --- a real headless browser: Debian's chromium driven by playwright ---

CHROMIUM = "/usr/bin/chromium"  # scripts/setup.sh installs it; playwright's own download is not used
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


@pytest.fixture(scope="session")
def browser():
    """A headless chromium; skips without it (or without playwright), fails under CI=true."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    missing = ("playwright is not installed (pip install -e '.[test]')" if sync_playwright is None else
               f"no browser at {CHROMIUM} (apt-get install chromium; scripts/setup.sh does)"
               if not Path(CHROMIUM).exists() else None)
    if missing:
        unavailable(missing, "the browser tests")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


# ----------------------------------------------------------------------------- an earlier commit's code

BASELINE = "861b7d0"  # the last commit before fmnist_exp/ was restructured into subpackages


@pytest.fixture(scope="session")
def old_code(tmp_path_factory) -> Path:
    """The baseline's fmnist_exp/ and experiments/ (its study files, found beside the package),
    extracted once per session; fails if the commit is missing or its package is not the one imported."""
    return code_at(BASELINE, tmp_path_factory)


def code_at(commit: str, tmp_path_factory) -> Path:
    """``commit``'s fmnist_exp/ and experiments/, extracted into a new folder; fails if the commit is missing or its
    package is not the one a process started there imports."""
    if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"],
                      capture_output=True).returncode != 0:
        shallow = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--is-shallow-repository"],
                                 capture_output=True, text=True).stdout.strip() == "true"
        missing = pytest.fail if os.environ.get("CI") == "true" else pytest.skip  # a tarball has no history
        missing(f"the commit {commit} is not in the history of {REPO}"
                    f"{' (a shallow clone)' if shallow else ''}: run `git fetch --unshallow` there "
                    "(in CI: check out with the full history, e.g. fetch-depth: 0)")
    old = tmp_path_factory.mktemp(f"old-{commit}")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "fmnist_exp", "experiments"],
                             capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    # the repo's package is installed (editable) and on conftest's PYTHONPATH: prove the old one wins
    where = subprocess.run([sys.executable, "-c", "import fmnist_exp; print(fmnist_exp.__file__)"], cwd=old,
                           env=old_env(old), capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr[-3000:]
    assert Path(where.stdout.strip()).is_relative_to(old), f"imported {where.stdout.strip()}, not {commit}'s"
    return old


def old_env(old: Path, tracking_uri: str | None = None) -> dict:
    env = subprocess_env()
    env["PYTHONPATH"] = str(old) + os.pathsep + env["PYTHONPATH"]
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def old_cli(args: list[str], old: Path, tracking_uri: str) -> subprocess.CompletedProcess:
    """``python -m fmnist_exp ...`` of the baseline's code, on the test's tracking store."""
    return subprocess.run([sys.executable, "-m", "fmnist_exp", *args], cwd=old, env=old_env(old, tracking_uri),
                          capture_output=True, text=True, timeout=600)


def ok(proc: subprocess.CompletedProcess, who: str) -> dict:
    """The JSON line a command prints last, once it has exited 0."""
    assert proc.returncode == 0, f"{who} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    last = proc.stdout.strip().splitlines()[-1]
    try:
        return json.loads(last)
    except json.JSONDecodeError:
        pytest.fail(f"{who}: the last line of stdout is not its JSON summary: {last!r}")


# --- a module's trained store shared read-only: each test that changes it works on its own copy ---


def store_fingerprint(root: Path) -> tuple:
    """A store's databases' bytes and its files' names: what a test that changed it would change."""
    import hashlib

    dbs = tuple(hashlib.sha256((root / db).read_bytes()).hexdigest() for db in ("mlflow.db", "optuna.db")
                if (root / db).exists())
    return dbs, tuple(sorted(str(f.relative_to(root)) for f in root.rglob("*")))


@contextlib.contextmanager
def store_copy(root: Path, tmp_path: Path, monkeypatch):
    """A copy of the store in ``root`` as tmp_path's own (every path its databases name moved into tmp_path, so
    its runs and artifacts are the copy's), in use for the block (in_use): its URI."""
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    for db in ("mlflow.db", "optuna.db"):
        if not (tmp_path / db).exists():
            continue
        with contextlib.closing(sqlite3.connect(tmp_path / db)) as c, c:
            for (table,) in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                for column in [col[1] for col in c.execute(f'PRAGMA table_info("{table}")').fetchall()]:
                    c.execute(f'UPDATE "{table}" SET "{column}" = replace("{column}", ?1, ?2) '
                              f'WHERE typeof("{column}") = \'text\' AND instr("{column}", ?1) > 0',
                              (str(root), str(tmp_path)))
    with in_use(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path, monkeypatch) as uri:
        yield uri

