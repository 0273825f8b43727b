"""`launch`: N tune workers started by a Dask cluster on its machines, against one shared study.

Dask distributed (the engine Optuna's documentation uses for distributed optimisation) places
the workers; this module does not schedule anything itself. The launcher creates the study once
(so the workers do not race to create it, and they need no study file: the study carries its
own), then submits one task per tune worker. Each task runs ``python -m fmnist_exp tune ...`` as
a child process of a Dask worker that offers the ``tune`` resource, so every tune worker is a
whole process with its own TensorFlow, signals and MLflow run stack, exactly as a worker started
by hand. Secrets never travel as task arguments (Dask shows those on its dashboard): the tune
process takes MLFLOW_TRACKING_URI and PGPASSWORD (or ~/.pgpass) from its Dask worker's
environment, and a storage URL holding a password is refused.

    dask scheduler --port 8786
    MLFLOW_TRACKING_URI=http://tracking-host:5000 PGPASSWORD=... dask worker tcp://sched:8786 \\
        --nworkers 1 --nthreads 1 --resources tune=1          # on each machine
    python -m fmnist_exp launch --scheduler tcp://sched:8786 --workers 4 \\
        --study mlp --study_name mlp-v1 --storage postgresql://fmnist@db-host/optuna --n_trials 5

``--workers 0`` creates the study and prints the worker command only (the Kubernetes Job in
deploy/k8s starts its workers itself).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..params import ConfigError, LaunchArgs, TuneArgs
from ..params.table import TUNE_PARAMS

RESOURCE = "tune"  # a Dask worker started with --resources tune=1 runs at most one tune worker at a time
CONNECT_TIMEOUT_S = 5  # an unreachable scheduler is reported in seconds
STOP_GRACE_S = 90  # after Ctrl-C: time for the tune workers to end their runs FAILED before the tasks are cancelled
LOG_DIR = Path(tempfile.gettempdir()) / "fmnist-exp-launch"  # on each Dask worker's machine
TRIAL_LINE = re.compile(r"\[tune\] trial \d+ \(\S+\) (\w+)")  # study.objective.Progress's line: its state
# The study carries its file and family once created, so the workers are started without them.
NOT_FOR_WORKERS = ("study", "family")
START_WORKERS = ("Dask workers that offer the tune resource, one per tune worker: "
                 "`dask worker {address} --nworkers 1 --nthreads 1 --resources tune=1` on each machine, "
                 "see docs/scale-out.md, 'Dask' and 'Kubernetes'")


@dataclass(frozen=True)
class WorkerResult:
    """What one tune worker did, as its Dask task reports it."""

    index: int
    dask_worker: str  # the Dask worker's address
    host: str
    exit_code: int | None  # None: the tune process never started (see error)
    trials: dict[str, int] = field(default_factory=dict)  # finished trials by state
    log: str = ""  # the tune process's whole output, on ``host``
    tail: str = ""
    error: str = ""


# ----------------------------------------------------------------------------- the worker command


def tune_flags(args: TuneArgs) -> list[str]:
    """The ``tune`` command line every worker runs: the tune parameters given (those that differ from
    tune's defaults), the study named explicitly, and neither study file nor family (the study has them)."""
    from ..study.spec import resolve_path

    values = {**args.flat(), "study_name": args.study_name or resolve_path(args.study, args.family).stem}
    flags = ["tune"]
    for p in TUNE_PARAMS:
        value = values[p.name]
        given = value != ("" if p.default is None else p.default)
        if p.name not in NOT_FOR_WORKERS and (given or p.name in ("study_name", "storage")):
            flags += [f"--{p.name}", str(value).lower() if isinstance(value, bool) else str(value)]
    return flags


def worker_command(args: TuneArgs, python: str = "python") -> list[str]:
    """The whole worker command, as the Kubernetes worker Job runs it (a Dask task uses its own
    interpreter for ``python``)."""
    return [python, "-m", "fmnist_exp", *tune_flags(args)]


# ----------------------------------------------------------------------------- in the Dask worker

_running: dict[str, list[subprocess.Popen]] = collections.defaultdict(list)
_running_lock = threading.Lock()


@contextlib.contextmanager
def _registered(launch_id: str, proc: subprocess.Popen):
    """Make ``proc`` findable by :func:`stop_workers` while it runs."""
    with _running_lock:
        _running[launch_id].append(proc)
    try:
        yield
    finally:
        with _running_lock:
            _running[launch_id].remove(proc)


def stop_workers(launch_id: str) -> int:
    """Run on every Dask worker after the launcher's Ctrl-C: SIGTERM to this launch's tune
    processes, which end their MLflow runs FAILED and exit 130. Returns how many it signalled."""
    with _running_lock:
        procs = [p for p in _running.get(launch_id, []) if p.poll() is None]
    for p in procs:
        p.terminate()
    return len(procs)


def _child_env(tags: dict) -> dict:
    import dask

    env = dict(os.environ)
    # The nanny pins OpenMP and BLAS to one thread for Dask's own thread-pool tasks; a tune worker
    # is a whole process and should use its cores as one started by hand does.
    for key, value in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items():
        if env.get(key) == str(value):
            env.pop(key)
    # MLflow adds MLFLOW_RUN_CONTEXT's tags to every run the process starts: parent and trials
    # say which Dask worker ran them.
    env["MLFLOW_RUN_CONTEXT"] = json.dumps({**json.loads(env.get("MLFLOW_RUN_CONTEXT") or "{}"), **tags})
    env.pop("MLFLOW_RUN_ID", None)
    env["PYTHONUNBUFFERED"] = "1"  # trial lines stream as they happen
    return env


def run_tune_worker(flags: list[str], launch_id: str, index: int) -> WorkerResult:
    """The Dask task: one ``tune`` process in this Dask worker; its ``[tune]`` lines go to the
    launcher as they come (a topic of this launch), all its output to a log file here."""
    from distributed import get_worker

    worker = get_worker()
    host = socket.gethostname()
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return WorkerResult(index, worker.address, host, exit_code=None, error=(
            "MLFLOW_TRACKING_URI is not set in this Dask worker's environment, so its runs would go to a "
            "local store: start the worker as `MLFLOW_TRACKING_URI=http://tracking-host:5000 dask worker ...` "
            "(with PGPASSWORD, or ~/.pgpass, for the study's database)"))
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"{launch_id}-{index}.log"
    env = _child_env({"launch_id": launch_id, "dask_worker": worker.address, "dask_host": host})
    states: collections.Counter = collections.Counter()
    tail: collections.deque = collections.deque(maxlen=40)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fmnist_exp", *flags], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None  # a pipe, asked for above
        with _registered(launch_id, proc):
            for line in proc.stdout:
                out.write(line)
                tail.append(line)
                if line.startswith("[tune]"):
                    worker.log_event(topic(launch_id), {"index": index, "line": line.rstrip()})
                    if m := TRIAL_LINE.match(line):
                        states[m.group(1)] += 1
            code = proc.wait()
    return WorkerResult(index, worker.address, host, exit_code=code, trials=dict(states), log=str(log),
                        tail="".join(tail))


def topic(launch_id: str) -> str:
    return f"fmnist-exp-launch-{launch_id}"


# ----------------------------------------------------------------------------- the launcher


def connect(address: str):
    """A client of the scheduler at ``address`` with at least one Dask worker offering the
    ``tune`` resource; a ConfigError within seconds otherwise, naming the address and the fix."""
    from distributed import Client

    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        raise ConfigError(
            f"scheduler={address}: no Dask scheduler answers there within {CONNECT_TIMEOUT_S} s ({e}). "
            f"Fix: correct --scheduler, or start a scheduler there (`dask scheduler --port 8786`) and "
            f"{START_WORKERS.format(address=address)}") from None
    if not slots(client):
        n = len(client.scheduler_info(n_workers=-1)["workers"])
        client.close()
        raise ConfigError(f"scheduler={address}: none of its {n} Dask workers offers the {RESOURCE!r} resource, "
                            "so no tune worker could start. Fix: start " + START_WORKERS.format(address=address))
    return client


def slots(client) -> int:
    """How many tune workers the cluster's Dask workers can run at once."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return sum(int(w.get("resources", {}).get(RESOURCE, 0)) for w in workers)


def check_storage(args: LaunchArgs) -> None:
    """A launch hands the storage URL to every worker as an argument, which Dask's dashboard and
    Kubernetes' pod specs show, and its workers run elsewhere: PostgreSQL, without a password."""
    from ..scale.storage import StorageURL

    url = StorageURL.parse(args.tune.storage)
    if url.has_password:
        raise ConfigError(f"storage={url}: launch passes the storage URL to every worker as an argument, "
                          "where Dask's dashboard shows it; leave the password out "
                          f"(--storage {url.without_password}) and set PGPASSWORD (or ~/.pgpass) "
                          "where the launcher and the Dask workers run")
    if url.is_sqlite and args.workers > 0:
        raise ConfigError(f"storage={url}: workers on a Dask cluster share the study through PostgreSQL "
                          "(storage=postgresql://USER@HOST/DB); SQLite is for one worker on one machine")


def create_study(args: TuneArgs) -> str:
    """Create (or join) the study once, with everything a worker would check first; its name."""
    from ..study.setup import open_study, prepare, trials_started

    setup = prepare(args)
    study = open_study(setup, args.seed)
    print(f"[launch] study {setup.study_name!r} ({setup.spec.family}, {setup.spec.description}) ready in "
          f"{setup.storage.where}; {trials_started(study)} trials so far", flush=True)
    return setup.study_name


def main(args: LaunchArgs) -> int:
    """The `launch` command: check, create the study, start the workers, report each; the exit
    code is 0 only if every tune worker exited 0 (130 after Ctrl-C)."""
    check_storage(args)
    client = connect(args.scheduler) if args.workers else None
    try:
        study_name = create_study(args.tune)
        args = replace(args, tune=replace(args.tune, study_name=study_name))
        if client is None:
            print("[launch] start the workers with: " + shlex.join(worker_command(args.tune)), flush=True)
            print(json.dumps({"study_name": study_name, "worker_command": worker_command(args.tune)}))
            return 0
        results = submit_and_wait(client, args)
    finally:
        if client is not None:
            client.close()
    failed = [r for r in results if r.exit_code != 0]
    print(json.dumps({"study_name": study_name, "scheduler": args.scheduler, "failed_workers": len(failed),
                      "workers": [{k: v for k, v in asdict(r).items() if k != "tail"} for r in results]}))
    return 130 if any(r.exit_code == 130 for r in failed) else int(bool(failed))


def submit_and_wait(client, args: LaunchArgs) -> list[WorkerResult]:
    """One task per tune worker; their trial lines and each end as they come. Ctrl-C (or
    SIGTERM) stops the tune processes, waits for their runs to end, then cancels the tasks."""
    from distributed import as_completed

    from ..train import runs

    n, address, launch_id = args.workers, args.scheduler, uuid.uuid4().hex[:12]
    flags = tune_flags(args.tune)
    free = slots(client)
    print(f"[launch] {n} tune workers on {address} ({free} tune slots"
          f"{'; the rest start as slots free up' if free < n else ''}), launch {launch_id}, each running: "
          f"python -m fmnist_exp {' '.join(flags)}", flush=True)
    client.subscribe_topic(topic(launch_id),
                           lambda event: print(f"[worker {event[1]['index']}] {event[1]['line']}", flush=True))
    futures = [client.submit(run_tune_worker, flags, launch_id, i, key=f"fmnist-tune-{launch_id}-{i}",
                             resources={RESOURCE: 1}, pure=False) for i in range(n)]
    results: dict[int, WorkerResult] = {}

    def collect(pending, timeout=None) -> None:
        try:
            for future in as_completed(pending, loop=client.loop, timeout=timeout):
                r = _result(future, address)
                results[r.index] = r
        except TimeoutError:
            pass

    try:
        with runs.interrupts_end_runs():
            collect(futures)
    except KeyboardInterrupt:
        stopped = sum(client.run(stop_workers, launch_id).values())
        print(f"[launch] interrupted: stopped {stopped} tune processes (their runs end FAILED); "
              f"waiting up to {STOP_GRACE_S} s for them", file=sys.stderr, flush=True)
        collect([f for i, f in enumerate(futures) if i not in results], timeout=STOP_GRACE_S)
        client.cancel(futures)
        for i in set(range(n)) - set(results):
            results[i] = WorkerResult(i, "", "", 130, error="interrupted before it ended; its task was cancelled")
    return [results[i] for i in range(n)]


def _result(future, address: str) -> WorkerResult:
    index = int(future.key.rsplit("-", 1)[1])
    try:
        r = future.result()
    except Exception as e:  # the task itself failed: most often fmnist_exp missing on that worker
        r = WorkerResult(index, "", "", None, error=f"{type(e).__name__}: {e} (is fmnist-exp installed, with the "
                         f"same version, where the Dask workers of {address} run?)")
    trials = ", ".join(f"{k} {v}" for k, v in sorted(r.trials.items())) or "none"
    line = (f"[launch] worker {r.index} on {r.dask_worker or '?'} ({r.host or '?'}): exit {r.exit_code}, "
            f"trials: {trials}" + (f"; log {r.host}:{r.log}" if r.log else ""))
    print(line + (f"\n  {r.error}" if r.error else ""), flush=True)
    if r.exit_code not in (0, 130) and r.tail:
        print("  " + r.tail.rstrip().replace("\n", "\n  "), flush=True)
    return r
