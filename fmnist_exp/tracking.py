"""MLflow at the edges: the experiment a command files its runs under, the per-epoch callback,
safe parameter logging, model logging (each model a LoggedModel that carries its metrics), and
the guarantee that no run is left RUNNING when a process is interrupted.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from . import config as C


DEFAULT_EXPERIMENT_ID = "0"  # MLflow's "Default"


def use_experiment(chosen: str, default: str) -> str:
    """File this command's runs under an experiment and return its name: ``chosen`` (the
    ``experiment`` parameter), else $MLFLOW_EXPERIMENT_NAME, else ``default`` (fmnist-<family>,
    fmnist-study-<study>), created on first use.

    Under `mlflow run` the run exists before this code starts, in the experiment `mlflow run`
    chose (--experiment-name or --experiment-id, which also read $MLFLOW_EXPERIMENT_NAME / _ID;
    else Default), and a run cannot move: that experiment is kept, and the nested runs follow it.
    A ``chosen`` that differs is refused before any work (it could not be honoured); a run that
    landed in Default gets a note saying how to file it under ``default`` next time.
    """
    run_id = os.environ.get("MLFLOW_RUN_ID")  # set by `mlflow run` until start_run resumes the run
    if run_id:
        client = MlflowClient()
        experiment = client.get_experiment(client.get_run(run_id).info.experiment_id)
        if chosen and chosen != experiment.name:
            raise C.ConfigError(
                f"experiment={chosen!r}: under `mlflow run` the run already exists in experiment "
                f"{experiment.name!r} and cannot move; pass `mlflow run --experiment-name {chosen}` instead")
        if experiment.experiment_id == DEFAULT_EXPERIMENT_ID and not chosen:
            print(f"note: `mlflow run` filed this run under experiment {experiment.name!r}; to file it under "
                  f"{default!r}, add --experiment-name {default} to `mlflow run`", file=sys.stderr, flush=True)
        return experiment.name
    name = chosen or os.environ.get("MLFLOW_EXPERIMENT_NAME") or default
    experiment = mlflow.set_experiment(name)
    # When two workers create it at once, the loser's set_experiment returns the winner's
    # experiment without making it active (MLflow 3.17): activate it by id either way.
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    return name


class EpochLogger(keras.callbacks.Callback):
    """Logs train/validation loss and accuracy, the learning rate and epoch time with step=epoch.

    One ``log_metrics`` call per epoch: a few milliseconds against tens of seconds of training.
    Each point carries the time its epoch ended: while the tracking server is down the call waits
    in MLflow's retries, and MLflow's own timestamp would be the time the server came back.
    """

    def __init__(self, run_id: str):
        super().__init__()
        self.run_id = run_id
        self.history: dict[str, list[float]] = {}
        self._t0 = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        metrics = {k: float(v) for k, v in (logs or {}).items() if np.isscalar(v)}
        metrics.setdefault(C.LEARNING_RATE, float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        metrics["epoch_time_s"] = time.perf_counter() - self._t0
        for k, v in metrics.items():
            self.history.setdefault(k, []).append(v)
        # MLflow refuses NaN in some stores; a diverged epoch is reported by the run's error instead.
        finite = {k: v for k, v in metrics.items() if math.isfinite(v)}
        mlflow.log_metrics(finite, step=epoch, run_id=self.run_id, timestamp=int(time.time() * 1000))
        raise_if_interrupted()  # a signal swallowed in a finalizer stops training within an epoch


def log_params(params: dict, run_id: str | None = None) -> None:
    """Log params, skipping keys already on the run.

    ``mlflow run`` logs the entry point's parameters itself (as the user typed them, e.g.
    "0.30"); logging "0.3" again would be refused as a change, so those keys are kept as is.
    """
    run_id = run_id or mlflow.active_run().info.run_id
    existing = MlflowClient().get_run(run_id).data.params
    new = {k: str(v) for k, v in params.items() if k not in existing}
    if new:
        mlflow.log_params(new, run_id=run_id)


# The packages of each Keras backend a model may be trained under (and so served with).
BACKEND_PACKAGES = {"tensorflow": ("tensorflow",), "jax": ("jax", "jaxlib"), "torch": ("torch",)}


def pip_requirements() -> list[str]:
    """The model's requirements, stated: MLflow would otherwise infer them by loading the model
    in a subprocess, which costs seconds per logged model. The backend is the one in use: a
    machine with JAX and no TensorFlow logs jax, not a version of a package it lacks."""
    from importlib.metadata import version

    backend = BACKEND_PACKAGES.get(keras.backend.backend(), ())
    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", *backend, "keras", "numpy", "pandas")]


@dataclass(frozen=True)
class LoggedModelRef:
    """A model logged by this run: the URI to load it with and its MLflow 3 LoggedModel id (the
    UI's Models tab, ``mlflow.search_logged_models``, metrics with ``model_id``)."""

    uri: str
    model_id: str


def log_keras_model(model: keras.Model, x_example: np.ndarray, *, name: str = "model", step: int = 0) -> LoggedModelRef:
    """Log with the keras flavor, a signature (raw 0-255 pixels, shape (-1, 28, 28)) and a
    3-image input example, as a LoggedModel of the active run; the URI is ``runs:/<run>/<name>``.

    ``mlflow.keras.log_model(input_example=...)`` fails on a directory it never creates
    (mlflow/mlflow#16183, still there in 3.17), so this does what ``Model.log`` does around the
    flavor's ``save_model``: a PENDING LoggedModel, the model saved into a directory made here,
    its files uploaded to the LoggedModel, the model recorded as the run's output, READY.
    ``runs:/<run>/<name>`` resolves to the LoggedModel of that name and run, as for any MLflow 3 model.

    ``step``: when a model is logged, MLflow copies the run's metrics logged at its step onto it.
    A network's models are logged at step = epochs trained, past the last epoch's step, so epoch
    0's val_accuracy does not become the model's; :func:`log_model_metrics` gives it its own.
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    run_id = mlflow.active_run().info.run_id
    client = MlflowClient()
    example = x_example[:3].astype("float32")
    signature = infer_signature(example, model.predict(example, verbose=0))
    logged = mlflow.initialize_logged_model(name=name, source_run_id=run_id, model_type="keras")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.mkdir()
            meta = Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=run_id,
                         model_id=logged.model_id)
            mlflow.keras.save_model(model, str(path), mlflow_model=meta, signature=signature, input_example=example,
                                    pip_requirements=pip_requirements())
            client.log_model_artifacts(logged.model_id, str(path))
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=step)])
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return LoggedModelRef(f"runs:/{run_id}/{name}", logged.model_id)


def log_model_metrics(run_id: str, metrics: dict[str, float], *, digest: str = "",
                      model_ids: list[str] | None = None) -> None:
    """Log ``metrics`` on the run and on its models (``model_ids``, default: every model the run
    logged), so the Models tab and ``mlflow.search_logged_models`` can rank models by them.

    One batch, one timestamp: the run keeps one point per metric however many models share it.
    ``digest`` names the split the metrics were measured on (a dataset input of the run, see
    lineage.py): the UI shows a model's metrics per dataset.
    """
    from mlflow.entities import Metric

    from .lineage import DATASET_NAME

    client = MlflowClient()
    if model_ids is None:
        outputs = client.get_run(run_id).outputs
        model_ids = [o.model_id for o in outputs.model_outputs] if outputs else []
    ts = int(time.time() * 1000)
    dataset = {"dataset_name": DATASET_NAME, "dataset_digest": digest} if digest else {}
    batch = [Metric(k, float(v), ts, 0, model_id=mid, **dataset)
             for k, v in metrics.items() if math.isfinite(v) for mid in (model_ids or [None])]
    for i in range(0, len(batch), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=batch[i:i + 1000])


def log_figure(fig, path: str) -> None:
    from .plots import close

    mlflow.log_figure(fig, path)
    close(fig)


_signalled: list[int] = []  # signals seen by _raise_interrupt since the outermost interrupts_end_runs began
_depth = [0]  # interrupts_end_runs blocks open (the CLI's around tune's)


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

