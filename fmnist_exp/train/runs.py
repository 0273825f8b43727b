"""Runs that end: no MLflow run is left RUNNING when a process is interrupted or a store hiccups.

SIGTERM and Ctrl-C become KeyboardInterrupt inside :func:`interrupts_end_runs`, so ``with`` blocks
unwind and end their runs FAILED; :func:`run_that_ends` retries a run's final status until the
store takes it; :func:`end_orphaned_children` ends nested runs a stopped process left behind.
:func:`system_metrics` decides whether the training runs a command starts record CPU, memory,
disk, network (and GPU) use, through MLflow's own switch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import sys
import time

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ..params import ConfigError


def active_run_id() -> str:
    """The id of the run this process logs into now; an error where none is active."""
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run: start one (mlflow.start_run) before logging into it")
    return run.info.run_id


_signalled: list[int] = []  # signals seen by _raise_interrupt since the outermost interrupts_end_runs began
_depth = [0]  # interrupts_end_runs blocks open (the CLI's; a test may open one around a command)


def experiment_of_mlflow_run(chosen: str | None):
    """The experiment `mlflow run` filed this process's run under, None outside `mlflow run`
    (tracking.use_experiment). A ``chosen`` experiment that differs is refused: the run cannot move.
    cli.main asks before the command's imports, so the refusal costs no TensorFlow import."""
    run_id = os.environ.get("MLFLOW_RUN_ID")  # set by `mlflow run` until start_run resumes the run
    if not run_id:
        return None
    client = MlflowClient()
    experiment = client.get_experiment(client.get_run(run_id).info.experiment_id)
    if chosen and chosen != experiment.name:
        raise ConfigError(
            f"experiment={chosen!r}: under `mlflow run` the run already exists in experiment "
            f"{experiment.name!r} and cannot move; pass `mlflow run --experiment-name {chosen}` instead")
    return experiment


def _raise_interrupt(signum, frame):
    _signalled.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def interrupts_end_runs():
    """Turn SIGTERM (and Ctrl-C, unless SIGINT is ignored) into KeyboardInterrupt so ``with
    mlflow.start_run()`` blocks unwind and end their runs (FAILED) instead of leaving them
    RUNNING, and remember it for :func:`raise_if_interrupted`."""
    if _depth[0] == 0:
        _signalled.clear()  # a signal from an earlier command in this process is not this one's
    handled = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        handled.append(signal.SIGINT)
    previous = {s: signal.signal(s, _raise_interrupt) for s in handled}
    _depth[0] += 1
    try:
        yield
        raise_if_interrupted()  # a swallowed signal still ends the command with exit code 130
    finally:
        _depth[0] -= 1
        for s, handler in previous.items():
            signal.signal(s, handler)


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt again if a signal arrived and was swallowed: one that lands inside
    an Optuna RDB storage call (PostgreSQL) comes out as StorageInternalError, an ordinary
    exception that the study would count as one failed trial before going on; one that lands in a
    finalizer (a ``__del__`` during garbage collection) is printed and dropped by Python."""
    if _signalled:
        raise KeyboardInterrupt(f"signal {_signalled[-1]} (arrived during a storage call)")


SETTLE_S = 30.0  # how long a run's final status is retried before the command gives up on it
_PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "PERMISSION_DENIED", "UNAUTHENTICATED"}


@contextlib.contextmanager
def run_that_ends(**start_run_kwargs):
    """``mlflow.start_run(**start_run_kwargs)`` for the run a process owns, ended more firmly than
    by MLflow's own ``with``, which writes the final status once: if that write fails (a busy
    SQLite file, a dropped connection) the run stays RUNNING and the write's error replaces the
    one that ended the block. Here the status is retried for up to ``SETTLE_S`` seconds; when the
    block failed or was interrupted, nested runs still RUNNING (their process was stopped before it
    could end them) end FAILED too, and the block's own exception goes on."""
    run = mlflow.start_run(**start_run_kwargs)
    run_id = run.info.run_id
    try:
        yield run
    except BaseException:
        _finish(run_id, RunStatus.FAILED)
        _retrying(lambda: end_orphaned_children(run_id), f"the nested runs of run {run_id}")
        raise
    _finish(run_id, RunStatus.FINISHED, must=True)  # a success that cannot be recorded is an error


def _finish(run_id: str, status: int, *, must: bool = False) -> None:
    name = RunStatus.to_string(status)
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        with contextlib.suppress(Exception):  # pops the run first, then writes; a failed write is retried below
            mlflow.end_run(name)

    def write() -> None:
        client = MlflowClient()
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, name)

    _retrying(write, f"run {run_id} as {name}", must=must)


def _retrying(fn, what: str, *, must: bool = False) -> None:
    """Call ``fn`` until it succeeds, a permanent error, or ``SETTLE_S`` seconds; say each failure."""
    deadline, delay = time.monotonic() + SETTLE_S, 1.0
    while True:
        try:
            fn()
            return
        except Exception as e:  # noqa: BLE001 - said, retried, and never hides the block's own error
            permanent = isinstance(e, MlflowException) and e.error_code in _PERMANENT
            last = permanent or time.monotonic() + delay > deadline
            with contextlib.suppress(OSError):  # stderr may be a closed pipe (a stopped parent's)
                print(f"[mlflow] could not end {what} ({type(e).__name__}: {e}); "
                      + ("gave up: it stays RUNNING" if last else f"retrying in {delay:.0f} s"),
                      file=sys.stderr, flush=True)
            if last:
                if must:
                    raise
                return
            time.sleep(delay)
            delay *= 2


def end_orphaned_children(parent_run_id: str, status: str = RunStatus.to_string(RunStatus.FAILED)) -> int:
    """Mark child runs of ``parent_run_id`` still RUNNING as ended (used after an interruption)."""
    client = MlflowClient()
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'",
    )
    for r in runs:
        client.set_terminated(r.info.run_id, status=status)
    return len(runs)


# ----------------------------------------------------------------------------- system metrics

# MLflow's own switches. mlflow.start_run reads the first only when it is not told
# (log_system_metrics=None), so the runs a command starts in other modules (trials, final retrains,
# the reference, also in its background process) follow it without each call passing a flag.
ENABLE_ENV = "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"
INTERVAL_ENV = "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"
# MLflow samples every 10 s by default and writes a sample only once its interval has passed with
# the run still RUNNING: a run shorter than the interval (a quick trial, a test) would record none.
SAMPLING_INTERVAL_S = 1.0


def system_metrics_on(given: bool | None) -> bool:
    """``given`` (the command's ``system_metrics``), else $MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING
    where it is set, else on; refused when on without psutil. The CLI asks before any work."""
    text = os.environ.get(ENABLE_ENV, "").strip().lower()
    if given is not None:
        on = given
    elif text in ("", "true", "1", "false", "0"):
        on = text not in ("false", "0")
    else:
        raise ConfigError(f"{ENABLE_ENV}={os.environ[ENABLE_ENV]!r}: must be true or false "
                          "(or unset it and use the system_metrics parameter)")
    if on and importlib.util.find_spec("psutil") is None:  # MLflow would refuse the first run mid-command
        raise ConfigError("system metrics need the psutil package: pip install psutil, "
                          "or pass system_metrics=false")
    return on


@contextlib.contextmanager
def system_metrics(given: bool | None):
    """Inside, every MLflow run started without an explicit ``log_system_metrics`` records system
    metrics (``system/...``, the run page's System metrics tab) as :func:`system_metrics_on`
    decides, sampled every ``SAMPLING_INTERVAL_S`` unless $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL
    says otherwise; processes started inside inherit it. The environment is restored afterwards.
    A run started before (a study's parent) keeps what it had: it trains nothing itself. The CLI has
    decided ``given`` already (:func:`system_metrics_on`); an in-process caller may leave it None."""
    on = system_metrics_on(None) if given is None else given
    saved = {k: os.environ.get(k) for k in (ENABLE_ENV, INTERVAL_ENV)}
    os.environ[ENABLE_ENV] = str(on).lower()
    os.environ.setdefault(INTERVAL_ENV, f"{SAMPLING_INTERVAL_S:g}")
    try:
        yield on
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
