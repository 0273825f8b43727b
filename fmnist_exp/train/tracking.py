"""MLflow at the edges of training: the experiment a command files its runs under, the per-epoch
callback, safe parameter logging, and metrics on a run and on its models (each model a
LoggedModel that carries its metrics).
"""

from __future__ import annotations

import math
import os
import sys
import time

import keras
import mlflow
import numpy as np
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from ..metrics import EPOCH_TIME, LEARNING_RATE
from ..params.table import MADE_CONCRETE, NOT_GIVEN, trained_name
from .runs import active_run_id, experiment_of_mlflow_run, raise_if_interrupted

DEFAULT_EXPERIMENT_ID = "0"  # MLflow's "Default"


def use_experiment(chosen: str | None, default: str) -> str:
    """File this command's runs under an experiment and return its name: ``chosen`` (the
    ``experiment`` parameter), else $MLFLOW_EXPERIMENT_NAME, else ``default`` (fmnist-<family>,
    fmnist-study-<study>), created on first use.

    Under `mlflow run` the run exists before this code starts, in the experiment `mlflow run`
    chose (--experiment-name or --experiment-id, which also read $MLFLOW_EXPERIMENT_NAME / _ID;
    else Default), and a run cannot move: that experiment is kept, and the nested runs follow it.
    A ``chosen`` that differs is refused before any work (it could not be honoured); a run that
    landed in Default gets a note saying how to file it under ``default`` next time.
    """
    experiment = experiment_of_mlflow_run(chosen)
    if experiment is not None:
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

    One batch per epoch, written straight to the store: ``mlflow.log_metrics(run_id=...)`` reads the whole
    run back first (to tie the points to models logged at that step: none is while it trains), which
    doubled an epoch's tracking (BENCHMARKS.md, 'A trial's own work').
    Each point carries the time its epoch ended: while the tracking server is down the call waits
    in MLflow's retries, and MLflow's own timestamp would be the time the server came back.
    """

    def __init__(self, run_id: str):
        super().__init__()
        self.run_id = run_id
        self._client = MlflowClient()
        self.history: dict[str, list[float]] = {}
        self._t0 = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        metrics = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float, np.number))}
        lr = np.asarray(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate), dtype=np.float64)
        metrics.setdefault(LEARNING_RATE, float(lr))
        metrics[EPOCH_TIME] = time.perf_counter() - self._t0
        for k, v in metrics.items():
            self.history.setdefault(k, []).append(v)
        # MLflow refuses NaN in some stores; a diverged epoch is reported by the run's error instead.
        finite = {k: v for k, v in metrics.items() if math.isfinite(v)}
        ts = int(time.time() * 1000)
        self._client.log_batch(self.run_id, metrics=[Metric(k, v, ts, epoch) for k, v in finite.items()])
        raise_if_interrupted()  # a signal swallowed in a finalizer stops training within an epoch


def log_params(params: dict, run_id: str | None = None) -> None:
    """Log params, skipping keys already on the run.

    ``mlflow run`` logs the entry point's parameters itself (as the user typed them, e.g.
    "0.30"); logging "0.3" again would be refused as a change, so those keys are kept as is.
    """
    run_id = run_id or active_run_id()
    existing = MlflowClient().get_run(run_id).data.params
    new = {k: str(v) for k, v in params.items() if k not in existing}
    # a parameter `mlflow run` logged as not given ('') that the run made concrete (epochs, filters): the value it
    # trained with beside it, which a rebuild reads (params.as_trained)
    new |= {trained_name(k): str(params[k]) for k in MADE_CONCRETE if k in params and existing.get(k) in NOT_GIVEN
            and str(params[k]) not in NOT_GIVEN and trained_name(k) not in existing}
    if new:
        mlflow.log_params(new, run_id=run_id)


def record(run_id: str, metrics: dict, tags: dict | None = None) -> None:
    """Numbers (and readable sentences) on a run, e.g. a gate's or a gain's fields."""
    client = MlflowClient()
    for k, v in metrics.items():
        client.log_metric(run_id, k, float(v))
    for k, v in (tags or {}).items():
        client.set_tag(run_id, k, str(v))


def log_model_metrics(run_id: str, metrics: dict[str, float], *, digest: str = "", dataset: str = "",
                      model_ids: list[str] | None = None) -> None:
    """Log ``metrics`` on the run and on its models (``model_ids``, default: every model the run
    logged), so the Models tab and ``mlflow.search_logged_models`` can rank models by them.

    One batch, one timestamp: the run keeps one point per metric however many models share it.
    ``digest`` names the split the metrics were measured on (a dataset input of the run, see
    lineage.py) and ``dataset`` its dataset's name: the UI shows a model's metrics per dataset.
    """
    client = MlflowClient()
    if model_ids is None:
        outputs = client.get_run(run_id).outputs
        model_ids = [o.model_id for o in outputs.model_outputs] if outputs else []
    ts = int(time.time() * 1000)
    named = {"dataset_name": dataset, "dataset_digest": digest} if digest else {}
    targets: list[str | None] = [*model_ids] or [None]  # no model: the run alone
    batch = [Metric(k, float(v), ts, 0, model_id=mid, **named)
             for k, v in metrics.items() if math.isfinite(v) for mid in targets]
    for i in range(0, len(batch), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=batch[i:i + 1000])


def log_figure(fig, path: str) -> None:
    """Log a run's figure as a PNG compressed at zlib's fastest level: every run, each trial included, logs
    one, and the default level spends a good part of the saving on a file only slightly smaller."""
    from .plots import close

    mlflow.log_figure(fig, path, save_kwargs={"pil_kwargs": {"compress_level": 1}})
    close(fig)
