"""MLflow at the edges: the per-epoch callback, safe parameter logging, model logging,
and the guarantee that no run is left RUNNING when a process is interrupted.
"""

from __future__ import annotations

import contextlib
import math
import signal
import tempfile
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
from mlflow.entities import RunStatus
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from . import config as C


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


def pip_requirements() -> list[str]:
    """The model's requirements, stated: MLflow would otherwise infer them by loading the model
    in a subprocess, which costs seconds per logged model."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "tensorflow", "keras", "numpy", "pandas")]


def log_keras_model(model: keras.Model, x_example: np.ndarray, *, name: str = "model") -> str:
    """Log with the keras flavor, a signature (raw 0-255 pixels, shape (-1, 28, 28)) and a
    3-image input example; returns the ``runs:/`` URI.

    ``mlflow.keras.log_model(input_example=...)`` fails on a directory it never creates
    (mlflow/mlflow#16183, still open in 3.18), so the model is saved into a directory made
    here and logged as the run's artifacts: same MLmodel, same URI scheme for loading and
    registering.
    """
    example = x_example[:3].astype("float32")
    signature = infer_signature(example, model.predict(example, verbose=0))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.mkdir()
        mlflow.keras.save_model(model, str(path), signature=signature, input_example=example,
                                pip_requirements=pip_requirements())
        mlflow.log_artifacts(str(path), name)
    return f"runs:/{mlflow.active_run().info.run_id}/{name}"


def log_figure(fig, path: str) -> None:
    from .plots import close

    mlflow.log_figure(fig, path)
    close(fig)


_signalled: list[int] = []  # signals seen by _raise_interrupt in this process


def _raise_interrupt(signum, frame):
    _signalled.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def interrupts_end_runs():
    """Turn SIGTERM (and Ctrl-C, unless SIGINT is ignored) into KeyboardInterrupt so ``with
    mlflow.start_run()`` blocks unwind and end their runs (FAILED) instead of leaving them
    RUNNING, and remember it for :func:`raise_if_interrupted`."""
    handled = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        handled.append(signal.SIGINT)
    previous = {s: signal.signal(s, _raise_interrupt) for s in handled}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt again if a signal arrived and was swallowed: one that lands inside
    an Optuna RDB storage call (PostgreSQL) comes out as StorageInternalError, an ordinary
    exception that the study would count as one failed trial before going on."""
    if _signalled:
        raise KeyboardInterrupt(f"signal {_signalled[-1]} (arrived during a storage call)")


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

