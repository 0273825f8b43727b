"""Scale benchmark: N workers on one study, each running the real worker loop (commands.tune.run: ask,
per-epoch report and pruning, tell, a nested MLflow run with per-epoch metrics against a real
`mlflow server` on PostgreSQL) around a SYNTHETIC objective that sleeps instead of training, so
that coordination and tracking are what is measured, not training.

    apt-get install -y pgbouncer          # for the pgbouncer path (Debian's package)
    python bench/bench_scale.py [--ns 1,8,32,64] [--paths direct,pgbouncer,grpc] [--window 40] [--stagger 0.1]

Everything runs in a private PostgreSQL cluster (initdb into a temp folder, its own port and
max_connections), started and removed here; the shared server on 5432 is never touched. Three
storage paths: PostgreSQL direct, PostgreSQL through PgBouncer (transaction pooling), and the gRPC
storage proxy (`python -m fmnist_exp storage-proxy`). Then, at one N, the tracking server:
`--workers 1` against MLflow's default 4, MLflow's async logging, and artifacts written by the
clients to a shared folder (--no-serve-artifacts) instead of proxied through the server.

A phase measures the steady state of all N workers: each worker waits in its first trial until
every worker has asked for one (so that the ones in their loop leave the cores to the ones still
starting), they go on at staggered moments, and the window opens once every worker has finished
that first trial. Start-up is timed (startup_s), not measured in the window.

Workers are forked from one "fleet" process that has imported fmnist_exp (TensorFlow included,
~0.9 GB resident, 5 s) and loaded the dataset once: 64 separately started workers would need
~57 GB and minutes of imports on this machine. Each forked worker is still its own process with
its own database pool, heartbeat thread and HTTP session, calling commands.tune.run() as the CLI does.
On a 2-core machine all N workers, PostgreSQL, PgBouncer, the proxy and the tracking server share
two cores: the figures are an upper bound on coordination cost per trial, not a cluster measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests"), str(ROOT)]
from common import MLFLOW, emit, free_port, machine  # noqa: E402

STUDY = """description: scale benchmark (synthetic objective that sleeps)
family: mlp
budget: {n_trials: 100000, epochs: 4, train_samples: 0, timeout: 0}
fixed: {early_stopping_patience: 0}
space:
  dropout: {type: float, low: 0.0, high: 0.5}
  learning_rate: {type: float, low: 3.0e-4, high: 5.0e-3, log: true}
  hidden_units: {type: widths, layers: [1, 3], units: [128, 256, 512]}
pruner: {type: median, n_startup_trials: 4, n_warmup_steps: 1}
sampler: {type: tpe, n_startup_trials: 5}
reference: off
"""
# Heartbeats and the grace after which a silent trial is failed, for the workers and for the
# storage proxy that judges stale trials on the gRPC path: on two shared cores a heartbeat may be
# late by more than the default 40 s without its worker being lost.
HEARTBEAT_ENV = {"FMNIST_HEARTBEAT_S": "10", "FMNIST_GRACE_S": "120"}


@dataclass
class Phase:
    """One measurement: a storage path, N workers, and how the tracking side is set up."""

    path: str  # direct | pgbouncer | grpc
    n: int
    server_workers: int = 4  # MLflow's default
    async_logging: bool = False
    serve_artifacts: bool = True
    storage: str = ""  # filled in by the controller: the URL workers use
    storage_direct: str = ""  # the same database, straight to PostgreSQL (for the checks afterwards)
    tracking: str = ""
    tracking_db: str = ""  # the tracking server's database in the private cluster
    study_name: str = ""
    warmup_s: float = 0.0  # the longest the fleet waits for all workers in their loop, then through a first trial
    window_s: float = 0.0
    stagger_s: float = 0.0  # between two workers' starts
    epoch_s: tuple[float, float] = (0.5, 1.5)
    artifact_kb: int = 1024  # what a completed trial logs (an MLP's saved model is ~1 MB)
    out: str = ""

    @property
    def label(self) -> str:
        extra = [f"server_workers={self.server_workers}"] if self.server_workers != 4 else []
        extra += ["async_logging"] if self.async_logging else []
        extra += ["no_serve_artifacts"] if not self.serve_artifacts else []
        return f"{self.path} N={self.n}" + (f" ({', '.join(extra)})" if extra else "")

    @property
    def trial_s(self) -> float:
        """A trial's mean length without coordination: the study's 4 epochs."""
        return 4 * statistics.mean(self.epoch_s)


# ----------------------------------------------------------------------------- the workers


RECORDS: list[tuple[str, float, float]] = []  # (what, start time, seconds), per worker process
READY_FILE = [""]  # touched by this worker's first ask


def _timed(what: str, fn):
    def call(*args, **kwargs):
        t0 = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            RECORDS.append((what, t0, time.time() - t0))
    return call


def time_optuna_calls() -> None:
    """Time what study.optimize does around each trial: the stale-trial check (heartbeats) before
    every ask, the ask, and the tell."""
    import optuna
    import optuna.study._optimize as opt

    timed_ask = _timed("ask", optuna.Study.ask)

    def ask(self, *args, **kwargs):
        trial = timed_ask(self, *args, **kwargs)
        if READY_FILE[0]:  # the fleet starts the window once every worker is in its loop
            Path(READY_FILE[0]).touch()
            READY_FILE[0] = ""
        return trial

    optuna.Study.ask = ask
    opt._tell_with_warning = _timed("tell", opt._tell_with_warning)
    optuna.storages.fail_stale_trials = _timed("stale_check", optuna.storages.fail_stale_trials)


def synthetic_train(phase: Phase, index: int | None = None):
    """A train_fn for study.objective.make_objective that logs what train.job.train_in_run logs
    (tags, parameters, one log_metrics per epoch, final metrics, a model-sized artifact when not
    pruned) but sleeps instead of training; accuracy is a smooth function of the parameters plus noise.
    Worker ``index`` of a fleet waits in its first trial for the fleet's word, then a random part
    of a trial (so that the workers do not go in step), and says when it starts its second."""
    import math
    import types

    import mlflow

    from fmnist_exp import metrics as M
    from fmnist_exp.model.networks import summary_tags
    from fmnist_exp.train import tracking
    from fmnist_exp.train.job import RunResult

    calls = [0]

    def train(ds, p, hooks):
        prune_check, extra_tags = hooks.prune, hooks.tags
        calls[0] += 1
        if index is not None and calls[0] == 1:
            while not Path(phase.out, "go").exists():
                time.sleep(0.2)
            time.sleep(random.uniform(0, phase.trial_s))
        elif index is not None and calls[0] == 2:
            Path(phase.out, f"looped-{index}").touch()
        run_id = mlflow.active_run().info.run_id
        RECORDS.append(("trial", time.time(), float(extra_tags["optuna_trial"])))
        mlflow.set_tags({**summary_tags(p), **extra_tags})
        tracking.log_params({**p.flat(), "family": p.FAMILY})
        tracking.log_params(ds.describe())
        rng = random.Random(f"{run_id}")
        peak = 0.9 - 0.5 * (math.log10(p.learning_rate) + 2.8) ** 2 - 0.1 * p.dropout
        prune_check.set_model(types.SimpleNamespace(stop_training=False))
        t_start, epoch, val = time.time(), 0, 0.0
        for epoch in range(p.epochs):
            t0 = time.perf_counter()
            time.sleep(rng.uniform(*phase.epoch_s))
            val = peak * (1 - 0.5 ** (epoch + 1)) + rng.gauss(0, 0.005)
            metrics = {M.VAL_ACC: val, M.VAL_LOSS: 1 - val, M.TRAIN_ACC: val + 0.01, M.TRAIN_LOSS: 0.99 - val,
                       M.LEARNING_RATE: p.learning_rate, M.EPOCH_TIME: time.perf_counter() - t0}
            t1 = time.time()
            mlflow.log_metrics(metrics, step=epoch, run_id=run_id, timestamp=int(t1 * 1000))
            RECORDS.append(("log_epoch", t1, time.time() - t1))
            prune_check.on_epoch_end(epoch, {M.VAL_ACC: val})
            if prune_check.pruned:
                break
        wall = time.time() - t_start
        t1 = time.time()
        mlflow.log_metrics({M.BEST_VAL_ACC: val, M.EPOCHS_RUN: epoch + 1, "train_wall_s": wall})
        result = RunResult(run_id, {M.VAL_FINAL_ACC: val, M.EPOCHS_RUN: epoch + 1, "train_wall_s": wall},
                           pruned=prune_check.pruned)
        if not result.pruned:
            with tempfile.TemporaryDirectory() as tmp:
                blob = Path(tmp) / "model.bin"
                blob.write_bytes(os.urandom(phase.artifact_kb * 1024))
                t2 = time.time()
                mlflow.log_artifact(str(blob), "model")
                RECORDS.append(("artifact", t2, time.time() - t2))
            result.model_uri = result.classifier_uri = f"runs:/{run_id}/model"
            mlflow.set_tags({"model_uri": result.model_uri, "classifier_uri": result.classifier_uri})
        RECORDS.append(("log_final", t1, time.time() - t1))
        return result

    return train


def worker(phase: Phase, index: int, study_file: Path) -> int:
    """One worker (a forked child of the fleet): tune.run as the CLI runs it, until the fleet
    says stop (after the trial in progress, through the callback tune.run passes to optimize)."""
    from fmnist_exp import params as P
    from fmnist_exp.commands import tune

    READY_FILE[0] = str(Path(phase.out, f"ready-{index}"))
    stop_file, own_callback = Path(phase.out, "stop"), tune.stop_if_interrupted

    def stop_when_told(study, trial):
        own_callback(study, trial)
        if stop_file.exists():
            study.stop()

    tune.stop_if_interrupted = stop_when_told
    code = 0
    try:
        args = P.tune_args({"study": str(study_file), "study_name": phase.study_name, "storage": phase.storage,
                            "n_trials": 100000, "register": False, "experiment": f"bench-scale-{phase.study_name}"})
        tune.run(args, train_fn=synthetic_train(phase, index))
        RECORDS.append(("run_end", time.time(), 0.0))
    except BaseException as e:  # noqa: BLE001 - counted as an error by the controller
        print(f"[worker {index}] {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        code = 1
    finally:
        Path(phase.out, f"worker-{index}.json").write_text(json.dumps({"records": RECORDS, "exit": code}))
    return code


def warm_up(phase: Phase, study_file: Path) -> None:
    """One short study on throwaway SQLite stores, so that every module a worker imports lazily
    (samplers, pruners, plots, the report, psycopg) is imported once here, not in each child:
    the phases measure workers in their steady state."""
    import mlflow
    import psycopg  # noqa: F401
    import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401

    from fmnist_exp import params as P
    from fmnist_exp.commands import tune

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        quick = Phase(**{**asdict(phase), "epoch_s": (0.0, 0.01), "artifact_kb": 1})
        args = P.tune_args({"study": str(study_file), "study_name": "warm-up", "storage": f"sqlite:///{tmp}/o.db",
                            "n_trials": 3, "register": False, "experiment": "warm-up"})
        tune.run(args, train_fn=synthetic_train(quick))
    mlflow.set_tracking_uri(phase.tracking)
    RECORDS.clear()


def fleet(phase: Phase) -> None:
    """Import once, load the dataset once, warm up, fork N workers, wait for them."""
    import gc

    from fmnist_exp import data as D
    from fmnist_exp.commands import tune

    ds = D.load_dataset(None, None)  # Fashion-MNIST, as the study's default data
    D.load_dataset = lambda *a, **k: ds  # every worker's prepare() gets the same (shared) arrays
    study_file = Path(phase.out, "scale.yaml")
    study_file.write_text(STUDY)
    with contextlib.redirect_stdout(sys.stderr):
        warm_up(phase, study_file)
    time_optuna_calls()
    # A worker's own end of study (its counts) is timed in every worker. The study-level plots and
    # report are made once, by the process that registers; worker 0 renders them anyway, timed, so
    # the phase shows what each worker saves now that it does not (every worker did until then).
    tune.count_trials = _timed("end_of_study", tune.count_trials)
    views = tune._study_views
    gc.freeze()  # keep the imported objects' pages shared after fork
    pids, t_fork = [], time.time()
    for i in range(phase.n):
        pid = os.fork()
        if pid == 0:
            if i == 0:
                tune._study_views = _timed("render", lambda study, pid, setup, render: views(study, pid, setup, True))
            os._exit(worker(phase, i, study_file))
        pids.append(pid)
        time.sleep(phase.stagger_s)  # a fleet's workers start over seconds, not in the same millisecond
    # Start-up is not measured: the workers wait in their first trial until all have asked for one,
    # and the window opens once each has finished that trial (the one they began in step).
    count = lambda what: len(list(Path(phase.out).glob(f"{what}-*")))  # noqa: E731
    while count("ready") < phase.n and time.time() < t_fork + phase.warmup_s:
        time.sleep(0.5)
    t_go, ready = time.time(), count("ready")
    Path(phase.out, "go").touch()
    while count("looped") < ready and time.time() < t_go + phase.warmup_s:
        time.sleep(0.5)
    start = time.time()
    when = {"start": start, "end": start + phase.window_s, "forked": t_fork, "go": t_go, "ready_at_go": ready,
            "looped_at_start": count("looped")}
    Path(phase.out, "window.tmp").write_text(json.dumps(when))
    Path(phase.out, "window.tmp").rename(Path(phase.out, "window"))  # whole, for the controller's reads
    time.sleep(phase.window_s)
    Path(phase.out, "stop").touch()
    for pid in pids:
        os.waitpid(pid, 0)


# ----------------------------------------------------------------------------- the infrastructure


class Cluster:
    """The private PostgreSQL (tests/private_pg.py) with room for every worker's connections."""

    def __init__(self, max_connections: int):
        from private_pg import PrivatePG

        self.pg = PrivatePG(free_port()).init()
        with open(self.pg.data / "postgresql.conf", "a") as f:
            f.write(f"\nmax_connections = {max_connections}\nshared_buffers = 256MB\n")
        self.pg.start()

    def url(self, db: str, port: int | None = None) -> str:
        url = self.pg.url(db)
        return url if port is None else url.replace(f":{self.pg.port}/", f":{port}/")

    def new_db(self, prefix: str) -> str:
        return self.pg.create_database(f"{prefix}_{uuid.uuid4().hex[:8]}")

    def query(self, sql: str):
        import sqlalchemy

        engine = sqlalchemy.create_engine(self.url("postgres").replace("postgresql://", "postgresql+psycopg://"),
                                          poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as c:
                return c.execute(sqlalchemy.text(sql)).fetchall()
        finally:
            engine.dispose()

    def close(self) -> None:
        self.pg.stop()
        self.pg.remove()


def start_pgbouncer(cluster: Cluster, folder: Path) -> tuple[subprocess.Popen, int]:
    """Debian's pgbouncer in transaction pooling mode in front of the private cluster."""
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(exe).exists():
        raise SystemExit("pgbouncer is not installed: `sudo apt-get install -y pgbouncer` (Debian/Ubuntu), "
                         "or leave it out with --paths direct,grpc")
    folder.mkdir()
    port = free_port()
    (folder / "userlist.txt").write_text(f'"{cluster.pg.user}" "{cluster.pg.password}"\n')
    (folder / "pgbouncer.ini").write_text(f"""[databases]
* = host=127.0.0.1 port={cluster.pg.port}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {folder}/userlist.txt
pool_mode = transaction
max_client_conn = 4000
default_pool_size = 20
logfile = {folder}/pgbouncer.log
""")
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        for f in folder.iterdir():
            shutil.chown(f, "postgres", "postgres")
    cmd = [exe, *(["-u", "postgres"] if os.geteuid() == 0 else []), str(folder / "pgbouncer.ini")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_port(port, proc, "pgbouncer")
    return proc, port


def start_tracking(cluster: Cluster, folder: Path, workers: int, serve_artifacts: bool,
                   pool: int = 0) -> tuple[subprocess.Popen, str, str]:
    """``pool``: each server worker's database pool size and overflow (0: MLflow's 5 + 10)."""
    port = free_port()
    db = cluster.new_db("bench_mlflow")
    cmd = [MLFLOW, "server", "--backend-store-uri", cluster.url(db), "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(workers)]
    if serve_artifacts:
        cmd += ["--artifacts-destination", str(folder / f"artifacts-{db}")]
    else:  # clients write straight to a folder they all see (on a cluster: an object store)
        cmd += ["--no-serve-artifacts", "--default-artifact-root", str(folder / f"artifacts-{db}")]
    log = open(folder / f"mlflow-{port}.log", "w")  # uvicorn says there when it restarts a worker
    proc = subprocess.Popen(cmd, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
                                 **({"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": str(pool),
                                     "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(pool)} if pool else {})})
    _wait_port(port, proc, "mlflow server", path="/health")
    return proc, f"http://127.0.0.1:{port}", db


def start_grpc_proxy(storage: str, folder: Path, tracking: str) -> tuple[subprocess.Popen, str]:
    """The proxy, with the phase's tracking server: its reaper ends a lost trial's runs there."""
    port = free_port()
    cmd = [sys.executable, "-m", "fmnist_exp", "storage-proxy", "--storage", storage, "--host", "127.0.0.1",
           "--port", str(port)]
    log = open(folder / f"grpc-{port}.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": tracking,
                                 **HEARTBEAT_ENV})
    _wait_port(port, proc, "storage-proxy")
    return proc, f"grpc://127.0.0.1:{port}"


def _wait_port(port: int, proc: subprocess.Popen, what: str, path: str = "", timeout: float = 120) -> None:
    import socket
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            if path:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2).close()
            else:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{what} never listened on {port}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ----------------------------------------------------------------------------- measuring a phase


@dataclass
class Sampler:
    """Samples, once a second while a phase runs: database connections per database, the
    tracking server's latency on a cheap call, and CPU seconds per component."""

    cluster: Cluster
    tracking: str
    procs: dict  # component -> root psutil.Process (its children are counted with it)
    samples: list = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def cpu(self) -> dict:
        import psutil

        out = {}
        for name, root in self.procs.items():
            total = 0.0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        t = p.cpu_times()
                        # children_*: what it has reaped (a closed PostgreSQL backend, a restarted server worker)
                        total += t.user + t.system + t.children_user + t.children_system
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            out[name] = total
        return out

    def run(self) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking)
        while not self._stop.is_set():
            t = time.time()
            conns = dict(self.cluster.query("SELECT coalesce(datname, '-'), count(*) FROM pg_stat_activity "
                                            "WHERE backend_type = 'client backend' GROUP BY 1"))
            xacts = dict(self.cluster.query("SELECT datname, xact_commit + xact_rollback FROM pg_stat_database "
                                            "WHERE datname IS NOT NULL"))
            t0 = time.perf_counter()
            try:
                client.get_experiment("0")
                latency = time.perf_counter() - t0
            except Exception:  # noqa: BLE001 - a failed probe is a figure, not a crash
                latency = None
            self.samples.append({"t": t, "conns": conns, "xacts": xacts, "tracking_s": latency, "cpu": self.cpu()})
            self._stop.wait(max(0.0, 1.0 - (time.time() - t)))

    def __enter__(self):
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1)  # ms


def run_phase(phase: Phase, cluster: Cluster, tracking_proc, extra_procs: dict) -> dict:
    import psutil

    env = {**os.environ, "MLFLOW_TRACKING_URI": phase.tracking, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3",
           **HEARTBEAT_ENV, "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_ENABLE_ASYNC_LOGGING": "true" if phase.async_logging else "false"}
    Path(phase.out).mkdir(parents=True)
    log = open(Path(phase.out, "fleet.log"), "w")
    t_launch = time.time()
    fleet_proc = subprocess.Popen([sys.executable, __file__, "--fleet", json.dumps(asdict(phase))], env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
    procs = {"workers": psutil.Process(fleet_proc.pid), "mlflow_server": psutil.Process(tracking_proc.pid),
             "postgres": _postmaster(cluster), **{k: psutil.Process(p.pid) for k, p in extra_procs.items()}}
    mem: dict = {}
    with Sampler(cluster, phase.tracking, procs) as sampler:
        while fleet_proc.poll() is None:
            time.sleep(1)
            opened = Path(phase.out, "window")
            halfway = opened.exists() and time.time() > json.loads(opened.read_text())["start"] + phase.window_s / 2
            if not mem and halfway:
                mem = _worker_memory(procs["workers"])
    wall = time.time() - t_launch
    return summarize(phase, cluster, sampler.samples, mem, wall)


def _postmaster(cluster: Cluster):
    import psutil

    return psutil.Process(int((cluster.pg.data / "postmaster.pid").read_text().split()[0]))


def _worker_memory(fleet_proc) -> dict:
    import psutil

    pss, uss = [], []
    for p in fleet_proc.children():
        try:
            m = p.memory_full_info()
            pss.append(m.pss)
            uss.append(m.uss)
        except psutil.Error:
            pass
    mb = lambda xs: round(statistics.mean(xs) / 2**20, 1) if xs else None  # noqa: E731
    return {"worker_pss_mb": mb(pss), "worker_uss_mb": mb(uss), "workers_total_pss_mb": round(sum(pss) / 2**20)}


def summarize(phase: Phase, cluster: Cluster, samples: list, mem: dict, wall: float) -> dict:
    import mlflow
    import optuna

    workers = [json.loads(f.read_text()) for f in sorted(Path(phase.out).glob("worker-*.json"))]
    records = [r for w in workers for r in w["records"]]
    when = json.loads(Path(phase.out, "window").read_text())
    start, deadline = when["start"], when["end"]
    window = deadline - start
    inside = lambda what: [r[2] for r in records if r[0] == what and start <= r[1] <= deadline]  # noqa: E731

    study = optuna.load_study(study_name=phase.study_name, storage=phase.storage_direct)
    TS = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (TS.COMPLETE, TS.PRUNED) and t.datetime_complete
            and start <= t.datetime_complete.timestamp() <= deadline]
    started = [int(r[2]) for r in records if r[0] == "trial"]
    mlflow.set_tracking_uri(phase.tracking)
    runs = mlflow.search_runs(experiment_names=[f"bench-scale-{phase.study_name}"], output_format="list",
                              filter_string="tags.optuna_trial != ''", max_results=50000)
    run_numbers = [int(r.data.tags["optuna_trial"]) for r in runs]
    finished = {t.number for t in trials if t.state in (TS.COMPLETE, TS.PRUNED)}
    lost = ({t.number for t in trials if t.state == TS.RUNNING} | (set(started) - {t.number for t in trials})
            | (finished - set(run_numbers)))
    duplicated = (len(started) - len(set(started))) + (len(run_numbers) - len(set(run_numbers)))

    in_window = [s for s in samples if start <= s["t"] <= deadline]
    conns = [s["conns"] for s in in_window]
    optuna_db = phase.storage_direct.rsplit("/", 1)[1]
    cpu, xacts = {}, {}
    mlflow_db = phase.tracking_db
    if len(in_window) >= 2:
        a, b = in_window[0], in_window[-1]
        cpu = {k: round((b["cpu"][k] - a["cpu"][k]) / max(len(done), 1), 4) for k in a["cpu"]}
        xacts = {"optuna_db": (b["xacts"].get(optuna_db, 0) - a["xacts"].get(optuna_db, 0)) / max(len(done), 1),
                 "mlflow_db": (b["xacts"].get(mlflow_db, 0) - a["xacts"].get(mlflow_db, 0)) / max(len(done), 1)}
    tracking = [s["tracking_s"] for s in in_window if s["tracking_s"] is not None]
    return {
        "phase": phase.label, "path": phase.path, "n": phase.n, "server_workers": phase.server_workers,
        "async_logging": phase.async_logging, "serve_artifacts": phase.serve_artifacts,
        "window_s": round(window, 1), "phase_wall_s": round(wall, 1),
        "startup_s": round(when["go"] - when["forked"], 1), "first_trial_s": round(start - when["go"], 1),
        "workers_ready_at_go": when["ready_at_go"], "workers_in_loop_at_start": when["looped_at_start"],
        "end_of_study_s_mean": round(statistics.mean(ends), 2) if (ends := [
            r[2] for w in workers for r in w["records"] if r[0] == "end_of_study"]) else None,
        "render_saved_s_per_worker": round(sum(r[2] for r in workers[0]["records"] if r[0] == "render"), 1)
        if workers else None,
        "tail_s": round(max((r[1] for r in records if r[0] == "run_end"), default=deadline) - deadline, 1),
        "trials_in_window": len(done), "trials_per_s": round(len(done) / window, 3),
        "ideal_trials_per_s": round(phase.n / (4 * statistics.mean(phase.epoch_s)), 3),
        "trials_total": len(trials),
        "states": {s.name: sum(t.state == s for t in trials) for s in TS if any(t.state == s for t in trials)},
        "ask_ms": {"p50": pct(inside("ask"), .5), "p99": pct(inside("ask"), .99), "n": len(inside("ask"))},
        "tell_ms": {"p50": pct(inside("tell"), .5), "p99": pct(inside("tell"), .99)},
        "stale_check_ms": {"p50": pct(inside("stale_check"), .5), "p99": pct(inside("stale_check"), .99)},
        "log_epoch_ms": {"p50": pct(inside("log_epoch"), .5), "p99": pct(inside("log_epoch"), .99)},
        "artifact_ms": {"p50": pct(inside("artifact"), .5), "p99": pct(inside("artifact"), .99)},
        "tracking_probe_ms": {"p50": pct(tracking, .5), "p99": pct(tracking, .99)},
        "db_connections": {
            "optuna_db_max": max((c.get(optuna_db, 0) for c in conns), default=0),
            "optuna_db_mean": round(statistics.mean(c.get(optuna_db, 0) for c in conns), 1) if conns else 0,
            "all_max": max((sum(c.values()) for c in conns), default=0)},
        "cpu_s_per_trial": cpu,
        "db_transactions_per_trial": {k: round(v, 1) for k, v in xacts.items()},
        "errors": {"worker_exit_nonzero": sum(w["exit"] != 0 for w in workers),
                   "workers_reported": len(workers), "failed_trials": sum(t.state == TS.FAIL for t in trials),
                   "error_lines": _error_lines(Path(phase.out, "fleet.log"))},
        "lost_trials": len(lost), "duplicated_trials": duplicated,
        **mem,
    }


def _error_lines(log: Path) -> int:
    text = log.read_text(errors="replace") if log.exists() else ""
    return sum(("Traceback" in line or "[storage]" in line or "Error" in line) for line in text.splitlines())


# ----------------------------------------------------------------------------- the controller


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ns", default="1,8,32,64", help="worker counts per storage path")
    ap.add_argument("--paths", default="direct,pgbouncer,grpc")
    ap.add_argument("--window", type=float, default=25, help="seconds measured per phase")
    ap.add_argument("--stagger", type=float, default=0.1, help="seconds between two workers' starts")
    ap.add_argument("--tracking_n", type=int, default=32, help="N for the tracking-server phases (0 = skip them)")
    ap.add_argument("--tracking_pool", type=int, default=0,
                    help="the tracking server's database pool size and overflow per server worker (0: MLflow's 5 + 10; "
                         "docs/scale-out.md advises 20 beyond ~100 workers)")
    ap.add_argument("--fleet", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fleet:
        raw = json.loads(args.fleet)
        raw["epoch_s"] = tuple(raw["epoch_s"])
        return fleet(Phase(**raw))

    ns = [int(x) for x in args.ns.split(",")]
    paths = args.paths.split(",")
    plan = [Phase(p, n) for p in paths for n in ns]
    if args.tracking_n:
        plan += [Phase("direct", args.tracking_n, server_workers=1),
                 Phase("direct", args.tracking_n, async_logging=True),
                 Phase("direct", args.tracking_n, serve_artifacts=False)]
    results = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    tmp.chmod(0o755)  # pgbouncer runs as user postgres and writes its log in there
    # optuna 2 per worker, the tracking server's workers x (pool + overflow), PostgreSQL's own
    cluster = Cluster(max_connections=max(ns + [args.tracking_n]) * 3 + 100 + 8 * max(0, args.tracking_pool - 8))
    bouncer = None
    servers: dict = {}
    try:
        if "pgbouncer" in paths:
            bouncer = start_pgbouncer(cluster, tmp / "pgbouncer")
        for i, phase in enumerate(plan):
            key = (phase.server_workers, phase.serve_artifacts)
            for other in [k for k in servers if k != key]:  # one tracking server at a time
                stop(servers.pop(other)[0])
            if key not in servers:
                servers[key] = start_tracking(cluster, tmp, phase.server_workers, phase.serve_artifacts,
                                              args.tracking_pool)
            db = cluster.new_db("bench_optuna")
            direct = phase.storage_direct = cluster.url(db)
            phase.study_name, phase.out = f"scale{i}", str(tmp / f"phase{i}")
            phase.tracking, phase.tracking_db = servers[key][1:]
            # the most start-up may take (the first trial as long again): a safety net, reported if reached
            phase.warmup_s, phase.window_s, phase.stagger_s = 60 + 3.0 * phase.n, args.window, args.stagger
            extra = {}
            proxy = None
            if phase.path == "direct":
                phase.storage = direct
            elif phase.path == "pgbouncer":
                phase.storage = cluster.url(db, port=bouncer[1])
                extra["pgbouncer"] = bouncer[0]
            else:
                proxy = start_grpc_proxy(direct, tmp, phase.tracking)
                phase.storage = proxy[1]
                extra["grpc_proxy"] = proxy[0]
            print(f"[bench_scale] {phase.label}: window {phase.window_s:.0f} s once every worker has finished a trial",
                  file=sys.stderr, flush=True)
            try:
                results.append(run_phase(phase, cluster, servers[key][0], extra))
            finally:
                if proxy:
                    stop(proxy[0])
            r = results[-1]
            print(f"[bench_scale]   {r['trials_per_s']} trials/s, "
                  f"ask p50/p99 {r['ask_ms']['p50']}/{r['ask_ms']['p99']} ms, "
                  f"tell {r['tell_ms']['p50']}/{r['tell_ms']['p99']} ms, conns {r['db_connections']}, "
                  f"errors {r['errors']}, lost {r['lost_trials']}, dup {r['duplicated_trials']}",
                  file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            stop(server[0])
        if bouncer:
            stop(bouncer[0])
        cluster.close()
        if not os.environ.get("BENCH_SCALE_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)
    emit({"machine": machine(), "objective": "synthetic: sleeps 0.5-1.5 s per epoch, 4 epochs, no training",
          "system_metrics": os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "the tune default"),
          "tracking_pool": args.tracking_pool or "MLflow default (5 + 10)",
          "phases": results})


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    main()
