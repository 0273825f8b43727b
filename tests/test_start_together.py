"""Workers that start together all run: processes started at the same moment on new stores (a new
SQLite tracking store file or PostgreSQL tracking database; a new PostgreSQL study database,
directly or behind the storage proxy) make each store once, under a lock (scale/locks.py), and
every one runs to the end. Without the locks MLflow's and Optuna's schema migrations run in every
process at once, and all but one may die (``duplicate column name``, ``table _alembic_tmp_...
already exists``, alembic's ``expected to match one row ... 0 found``).

Real processes and real PostgreSQL (conftest.pg_admin: skipped without it, a failure under CI=true).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import sqlalchemy
from conftest import all_runs, free_port, fresh_db, stop_group, subprocess_env, trial_runs

WORKERS = 4
STUDY = """description: workers started together
family: mlp
budget: {n_trials: 1, epochs: 1, train_samples: 300, timeout: 0}
fixed: {early_stopping_patience: 0, hidden_units: "32"}
space:
  dropout: {type: float, low: 0.0, high: 0.3}
  learning_rate: {type: float, low: 1.0e-3, high: 3.0e-3, log: true}
enqueue:
  - {dropout: 0.1, learning_rate: 2.0e-3}
pruner: {type: none}
"""
ENQUEUED = {"dropout": 0.1, "learning_rate": 2.0e-3}

# What a worker does before any work: the tracking store made, the study store opened. One process
# imports what that takes, once, and forks the workers (each a whole process with its own
# connections, as a worker started by hand, without paying the imports again); it says so, and
# each waits for the word: all open the stores within milliseconds. It exits 0 only if every worker did.
OPEN_STORES = """
import os, sys, time
from pathlib import Path
import mlflow.store.tracking.sqlalchemy_store, optuna.storages._rdb.storage  # what opening imports (no store)
from fmnist_exp.scale.storage import preflight
workers, go, storage, ready = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
pids = []
for _ in range(workers):
    pid = os.fork()
    if pid == 0:  # a worker: nothing below this block runs in it
        while not go.exists():
            time.sleep(0.005)
        preflight(storage).open()
        os._exit(0)  # done (an error above exits 1): no seconds of interpreter teardown
    pids.append(pid)
ready.touch()
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
print("worker exit codes", codes, flush=True)
os._exit(0 if codes == [0] * workers else 1)
"""


def alembic_revisions(url: str) -> list[str]:
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
            return [r[0] for r in db.execute("SELECT version_num FROM alembic_version")]
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as c:
            return [r[0] for r in c.execute(sqlalchemy.text("SELECT version_num FROM alembic_version"))]
    finally:
        engine.dispose()


@pytest.mark.parametrize("tracking_db", ["sqlite", "postgresql"])
def test_new_stores_opened_at_the_same_moment_are_made_once(tracking_db, pg_admin, tmp_path):
    tracking = (f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}" if tracking_db == "sqlite"
                else fresh_db(pg_admin, "mlflow"))
    storage = fresh_db(pg_admin, "optuna")
    env = {**subprocess_env(), "MLFLOW_TRACKING_URI": tracking}
    go, ready = tmp_path / "go", tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", OPEN_STORES, str(WORKERS), str(go), storage, str(ready)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its workers with it: stop_group ends them all
    try:
        deadline = time.time() + 180
        while not ready.exists():
            assert time.time() < deadline and proc.poll() is None, proc.poll()
            time.sleep(0.02)
        go.touch()
        out = proc.communicate(timeout=180)[0]
    finally:
        if proc.poll() is None:  # a failure above: the process and the workers it forked
            stop_group(proc)
    assert proc.returncode == 0 and f"worker exit codes {[0] * WORKERS}" in out, out[-8000:]

    # each store was made once: one schema revision, and it opens as its library expects
    assert len(alembic_revisions(tracking)) == 1
    assert [e.name for e in mlflow.MlflowClient(tracking).search_experiments()] == ["Default"]
    assert len(alembic_revisions(storage)) == 1
    assert optuna.get_all_study_names(storage=storage) == []


def tune_worker(tmp: Path, env: dict, storage: str | None, n_trials: int, log: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fmnist_exp", "tune", "--study", str(tmp / "s.yaml"), "--study_name", "together",
           "--n_trials", str(n_trials), "--register", "false", "--data", "digits",  # 8x8 images: seconds a trial
           *(["--storage", storage] if storage else [])]
    with open(tmp / log, "w") as out:
        return subprocess.Popen(cmd, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_all(procs: list[subprocess.Popen], timeout: int = 900) -> list[int]:
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture
def new_stores(pg_admin, tmp_path, monkeypatch):
    """A tracking store that does not exist yet (a SQLite file), a new PostgreSQL study database,
    the study file, and the workers' environment."""
    (tmp_path / "s.yaml").write_text(STUDY)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    mlflow.set_tracking_uri(tracking)
    env = {**subprocess_env(), "FMNIST_HEARTBEAT_S": "2", "FMNIST_GRACE_S": "120"}
    return {"tmp": tmp_path, "tracking": tracking, "optuna": fresh_db(pg_admin, "optuna"), "env": env}


@contextlib.contextmanager
def storage_proxy(stores):
    """`storage-proxy` over the new study database on a free port, until it answers; its grpc:// URL."""
    from fmnist_exp.params import ConfigError
    from fmnist_exp.scale.storage import StorageURL

    url, log = f"grpc://127.0.0.1:{free_port()}", stores["tmp"] / "proxy.log"
    cmd = [sys.executable, "-m", "fmnist_exp", "storage-proxy", "--storage", stores["optuna"],
           "--port", url.rsplit(":", 1)[1]]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=stores["tmp"], env=stores["env"], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            with contextlib.suppress(ConfigError):
                StorageURL.parse(url).check()
                break
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.mark.slow
def test_four_tune_workers_started_together_all_run(new_stores, pg_admin):
    """Four tune workers started at once on one new tracking store (a SQLite file not there yet): two on
    a new PostgreSQL study database, two behind a storage-proxy over another. Each pair makes its study
    once (under a PostgreSQL advisory lock; under a lock study through the proxy), all four make the
    tracking store and the experiment once, and every one runs to the end. Two a storage, not four: the
    first of them makes the store or study under the lock and the others find it made, and one waiter
    goes through the same code as three (locks.advisory_lock's loop, proxy_client.lock_study's); what
    four processes opening new stores within milliseconds do is test_new_stores_opened_at_the_same_moment."""
    tmp, env = new_stores["tmp"], new_stores["env"]
    assert not (tmp / "mlflow.db").exists()
    proxied_db = fresh_db(pg_admin, "optuna")  # the proxy makes its schema: the direct pair races on the other
    with storage_proxy({**new_stores, "optuna": proxied_db}) as proxy:
        storages = {"postgresql": new_stores["optuna"], "storage-proxy": proxy}
        via = [name for name in storages for _ in range(2)]
        procs = [tune_worker(tmp, env, storages[v], 1, f"w{i}.log") for i, v in enumerate(via)]
        codes = wait_all(procs)
    assert codes == [0] * len(via), "\n".join(f"--- w{i}.log ({via[i]})\n" + (tmp / f"w{i}.log").read_text()[-2500:]
                                              for i, c in enumerate(codes) if c)

    runs = all_runs()
    assert [r.info.run_name for r in runs if r.info.status != "FINISHED"] == []
    assert len(runs) == 2 * len(via)  # a parent and a trial each: the experiment made once, all in it
    assert len({r.info.experiment_id for r in runs}) == 1
    parents = [r for r in runs if r.info.run_name == "tune together"]
    assert len(parents) == len(via)
    for name, db in (("postgresql", new_stores["optuna"]), ("storage-proxy", proxied_db)):
        study = optuna.load_study(study_name="together", storage=db)
        assert sorted(t.number for t in study.trials) == [0, 1], name
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials), name
        # the study was created once: its starting point enqueued (and trained) once
        assert sum(t.params == pytest.approx(ENQUEUED) for t in study.trials) == 1, name
        theirs = {p.info.run_id for p in parents
                  if (p.data.params["storage"] == proxy) == (name == "storage-proxy")}
        assert len(theirs) == 2, name
        by_trial = {int(r.data.tags["optuna_trial"]): r for r in trial_runs(runs)
                    if r.data.tags["mlflow.parentRunId"] in theirs}
        assert sorted(by_trial) == [0, 1], name
        for t in study.trials:
            assert by_trial[t.number].info.run_id == t.user_attrs["mlflow_run_id"]


@pytest.mark.slow
def test_second_worker_on_a_new_sqlite_study_store_is_still_refused(new_stores):
    tmp, env = new_stores["tmp"], new_stores["env"]
    # no storage: SQLite optuna.db beside mlflow.db, neither there yet
    procs = [tune_worker(tmp, env, None, 2, f"w{i}.log") for i in range(2)]
    codes = wait_all(procs)
    logs = [(tmp / f"w{i}.log").read_text() for i in range(2)]
    assert sorted(codes) == [0, 2], logs
    refused = logs[codes.index(2)]
    assert "another tune worker is already using" in refused and "SQLite is not for parallel workers" in refused
    assert "Traceback" not in refused

    study = optuna.load_study(study_name="together", storage=f"sqlite:///{tmp / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    runs = all_runs()
    assert sorted(r.info.run_name for r in runs) == ["trial 0", "trial 1", "tune together"]
    assert all(r.info.status == "FINISHED" for r in runs)


def test_a_made_study_is_joined_without_the_creation_lock(tracking, tmp_path):
    # a hundred workers joining a made study must not queue for the lock that makes it: hold that lock
    # as another worker making it would, and a second worker still joins at once; a new study waits
    # for the lock, and is made only once it is free
    import threading

    from fmnist_exp import params as P
    from fmnist_exp.study.setup import open_study, prepare
    from fmnist_exp.study.stored import STUDY_TEXT, creation_lock

    path = tmp_path / "made.yaml"
    path.write_text(STUDY)
    setup = prepare(P.tune_args({"family": "mlp", "study": str(path), "data": "digits"}))
    started = time.perf_counter()
    first = open_study(setup, 42)
    making = time.perf_counter() - started  # how long making a new study takes, nothing in its way
    assert STUDY_TEXT in first.user_attrs and [t.state.name for t in first.trials] == ["WAITING"]  # enqueued

    def open_while_locked(name: str, hold: float | None) -> tuple[bool, float, float]:
        """Open study ``name`` in a thread while this one holds its creation lock, for ``hold`` s (None:
        until the thread is done, 60 s at most). Whether it was done under the lock, when it was done,
        and when the lock was let go."""
        s = prepare(P.tune_args({"family": "mlp", "study": str(path), "study_name": name, "data": "digits"}))
        done, finished = threading.Event(), []

        def opening() -> None:
            try:
                open_study(s, 42)
                finished.append(time.perf_counter())
            finally:
                done.set()

        with creation_lock(s.storage, name):
            threading.Thread(target=opening, daemon=True).start()
            under_lock = done.wait(timeout=60 if hold is None else hold)
            assert under_lock or name not in optuna.get_all_study_names(storage=setup.optuna_storage), \
                f"study {name!r} was created while another worker held its creation lock"
            released = time.perf_counter()
        assert done.wait(timeout=60) and finished, f"study {name!r} was not opened within 60 s of the lock's release"
        return under_lock, finished[0], released

    joined, _, _ = open_while_locked("made", None)
    assert joined, "joining a made study waited for the creation lock"
    # three times what making a study took unhindered: a new study made without the lock would be done by then
    made_under_lock, made_at, released = open_while_locked("new", min(20.0, max(1.0, 3 * making)))
    assert not made_under_lock and made_at > released, "a new study was made without the lock"
    assert STUDY_TEXT in optuna.load_study(study_name="new", storage=setup.optuna_storage).user_attrs
    assert len(optuna.load_study(study_name="made", storage=setup.optuna_storage).trials) == 1, "enqueued once"


def test_a_study_half_made_by_another_worker_is_read_once_made(tracking, tmp_path):
    # two workers start on a new study: one creates it and, under its creation lock, records what it is
    # (its data, family, study file: the file last). The other must not read it in between: a study
    # without its data passes for one made before datasets were values (Fashion-MNIST), and a digits
    # worker was refused ("created on fashion-mnist"; a fresh-clone run's test_proxy fail-over, 0e82b16)
    import threading

    from fmnist_exp import params as P
    from fmnist_exp.study.setup import make_study, open_study, prepare
    from fmnist_exp.study.stored import STUDY_DATA_NAME, creation_lock

    path = tmp_path / "half.yaml"
    path.write_text(STUDY)
    args = P.tune_args({"family": "mlp", "study": str(path), "data": "digits"})
    maker = prepare(args)
    joined: list = []

    def join() -> None:
        try:
            setup = prepare(args)
            joined.append(open_study(setup, 7).user_attrs[STUDY_DATA_NAME])
        except Exception as e:  # said by the assertion below
            joined.append(e)

    def lock_files() -> list[str]:
        """The lock files this process has open, once per open (a waiter opens the file, then waits)."""
        fds = Path("/proc/self/fd")
        return [t for fd in fds.iterdir() if (t := os.path.realpath(fd)).endswith(".lock")]

    joiner = threading.Thread(target=join, daemon=True)
    with creation_lock(maker.storage, maker.study_name):
        optuna.create_study(study_name=maker.study_name, storage=maker.optuna_storage,
                            direction="maximize")  # made, nothing recorded yet
        [held] = lock_files()  # the creation lock (a SQLite storage: a file lock)
        joiner.start()
        while joiner.is_alive() and lock_files().count(held) < 2:  # until the joiner waits for it
            time.sleep(0.01)
        assert joiner.is_alive(), f"a half-made study was read without waiting for its maker: {joined}"
        make_study(maker, 42)
    joiner.join(timeout=60)
    assert joined == ["digits"], joined
