"""The search itself: every trial a nested MLflow run, trained, pruned or failed, one console line each.

    python -m fmnist_exp tune --family cnn --n_trials 10

Pruning watches per-epoch validation accuracy; a trial's run records its parameters, curves,
final validation accuracy, state and (when complete) its models.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import keras
import mlflow
import optuna

from ..console import duration
from ..metrics import EPOCHS_RUN, VAL_ACC
from ..train import job, runs
from .setup import Setup
from .space import suggest

TrainFn = Callable[..., job.RunResult]


class PruningCallback(keras.callbacks.Callback):
    """Reports validation accuracy each epoch; stops training when the pruner says so."""

    def __init__(self, trial: optuna.Trial):
        super().__init__()
        self.trial = trial
        self.pruned = False

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(VAL_ACC)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            self.pruned = True
            self.model.stop_training = True


class Progress:
    """One console line per finished trial (state, value, epochs trained, the trial's time, best
    so far, time since start) and the trial's state on its MLflow run."""

    def __init__(self, n_trials: int, parent_run_id: str):
        self.n_trials, self.parent_run_id = n_trials, parent_run_id
        self.t0 = time.perf_counter()
        self.done = 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.done += 1
        state = trial.state.name
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            mlflow.MlflowClient().set_tag(run_id, "trial_state", state)
        try:
            best = f"{study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:
            best = "none yet"
        value = f"{trial.value:.4f}" if trial.value is not None else "-"
        epochs = trial.user_attrs.get(EPOCHS_RUN, len(trial.intermediate_values))
        took = (trial.datetime_complete - trial.datetime_start).total_seconds() \
            if trial.datetime_complete and trial.datetime_start else 0.0
        elapsed = time.perf_counter() - self.t0
        total = self.n_trials or "?"
        print(f"[tune] trial {trial.number} ({self.done}/{total}) {state:<8} value={value} epochs={epochs} "
              f"time={duration(took)} best={best} elapsed={duration(elapsed)}", flush=True)
        if trial.state == optuna.trial.TrialState.COMPLETE:
            mlflow.log_metric("best_value", study.best_value, step=trial.number, run_id=self.parent_run_id)


def stop_if_interrupted(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """After each trial: a Ctrl-C or SIGTERM that a storage call turned into a failed trial
    still stops the worker (runs end FAILED, exit code 130), as one that reached it directly."""
    runs.raise_if_interrupted()


def make_objective(setup: Setup, parent_run_id: str, train_fn: TrainFn | None = None):
    """The objective: suggest, train one nested run, return validation accuracy.

    ``train_fn`` defaults to :func:`train.job.train_in_run`; tests pass a wrapper that
    raises in one trial to show the study survives it.
    """
    train = train_fn or job.train_in_run

    def objective(trial: optuna.Trial) -> float:
        suggestion = suggest(trial, setup.spec.space)
        p = setup.trial_params(suggestion)
        tags = {"optuna_study": setup.study_name, "optuna_trial": str(trial.number), "trial_state": "RUNNING"}
        with mlflow.start_run(run_name=f"trial {trial.number}", nested=True, tags=tags) as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            trial.set_user_attr("mlflow_parent_run_id", parent_run_id)
            prune = PruningCallback(trial)
            try:
                result = train(p, ds=setup.ds, evaluate_test=False, prune_check=prune, extra_tags=tags)
            except Exception as e:
                mlflow.set_tags({"trial_state": "FAIL", "failure": f"{type(e).__name__}: {e}"[:5000]})
                raise
            trial.set_user_attr(EPOCHS_RUN, int(result.metrics[EPOCHS_RUN]))
            if result.pruned:
                mlflow.set_tag("trial_state", "PRUNED")
            else:
                trial.set_user_attr("model_uri", result.model_uri)
                trial.set_user_attr("classifier_uri", result.classifier_uri)
                trial.set_user_attr("config", suggestion)
        if result.pruned:  # raised after the run ended, so a pruned run is FINISHED, not FAILED
            raise optuna.TrialPruned(f"pruned after epoch {result.metrics[EPOCHS_RUN]}")
        return result.val_accuracy

    return objective
