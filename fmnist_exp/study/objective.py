"""The search itself: every trial a nested MLflow run, trained, pruned or failed, one console line each.

    python -m fmnist_exp tune --family cnn --n_trials 10

Pruning watches per-epoch validation accuracy; a trial's run records its parameters, curves,
final validation accuracy, state and (when complete) its models. A study with several objectives
(study/goals.py) returns validation accuracy and the trial's measured costs and prunes nothing (Optuna
prunes single-objective studies only); a study with budgets sets each trial's constraint values, and a
network whose deterministic costs already break a budget is not trained (PRUNED, with the reason).
A point the study has already trained to completion is not trained again: with the study's one seed
and data it would give the same bits, and samplers redraw points of a small categorical space often.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable

import keras
import mlflow
import optuna

from .. import params as P
from ..console import duration
from ..data import Dataset, DatasetInfo
from ..metrics import EPOCHS_RUN, VAL_ACC
from ..model import cost, networks
from ..model.wrappers import as_served
from ..train import job, runs
from ..train.builder_fit import Examined, prepared
from ..train.evaluate import AT_CHANCE, AT_CHANCE_ALPHA
from .goals import COSTS_ATTR, OVER, OVER_BUDGET_ATTR, TWIN_ATTR, Goals, recorded_costs
from .setup import Setup
from .space import suggest

TrainFn = Callable[[Dataset, P.NetworkParams, job.Hooks], job.RunResult]  # train.job.train_in_run
RECIPE_ATTR = "recipe_digest"  # trial user attribute: the recipe it trained, NetworkParams.digest()


class PruningCallback(job.PruneCheck):
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
        multi = len(study.directions) > 1
        if multi:
            best = f"front of {sum(TWIN_ATTR not in t.user_attrs for t in study.best_trials)}"  # points, not draws
            value = "/".join(f"{v:.4g}" for v in trial.values) if trial.values else "-"
        else:
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
        twin = trial.user_attrs.get(TWIN_ATTR)
        same = f" (the point of trial {twin}: not trained again)" if twin is not None else ""
        chance = " at chance: validation not above the majority class's share" if AT_CHANCE in trial.user_attrs else ""
        print(f"[tune] trial {trial.number} ({self.done}/{total}) {state:<8} value={value} epochs={epochs} "
              f"time={duration(took)} best={best} elapsed={duration(elapsed)}{same}{chance}", flush=True)
        if trial.state == optuna.trial.TrialState.COMPLETE and not multi:
            # the client's call: mlflow.log_metric(run_id=...) reads the parent run back first, every trial
            mlflow.MlflowClient().log_metric(self.parent_run_id, "best_value", study.best_value, step=trial.number)


def freeze_survivors(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """After each trial (an Optuna callback), in a process that froze its imports (cli.main): the trial's
    garbage collected and what outlives it (the study, the data, MLflow's and TensorFlow's caches: ~200,000
    objects after a digits trial) frozen, so the collection before the next network (Keras' clear_session,
    train/fit.py) scans only what came since (BENCHMARKS.md, 'A trial's own work'). Between trials, not inside
    one: a running trial's frames, frozen, would keep a failed trial's traceback and all it holds forever."""
    if gc.get_freeze_count():
        gc.collect()
        gc.freeze()


def stop_if_interrupted(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """After each trial: a Ctrl-C or SIGTERM that a storage call turned into a failed trial
    still stops the worker (runs end FAILED, exit code 130), as one that reached it directly."""
    runs.raise_if_interrupted()


def static_costs(p: P.NetworkParams, info: DatasetInfo, model: keras.Model | None = None) -> dict[str, float]:
    """The deterministic costs of the network ``p`` describes for ``info``'s images (``model``: as built to train, read
    through a copy: wrapping the model itself would record calls that count its cost twice once it is wrapped again
    to be logged; else built here), untrained, as it would be served."""
    model = keras.models.clone_model(model) if model is not None else networks.build(p, info)
    return cost.static(as_served(model, p, info))


def over_budget(trial: optuna.Trial, goals: Goals, p: P.NetworkParams, info: DatasetInfo,
                model: keras.Model) -> str | None:
    """Why the network ``p`` is not trained: its deterministic costs break a budget. Its constraint
    values are set (the sampler learns from them) and the reason and costs recorded on the trial and
    its run. None: train it."""
    if not goals.static_constraints():
        return None
    static = static_costs(p, info, model)
    broken = goals.broken(static)
    if not broken:
        return None
    reason = f"{OVER}, not trained: " + "; ".join(broken)
    set_costs(trial, goals, static)
    trial.set_user_attr(OVER_BUDGET_ATTR, reason)
    mlflow.log_params(p.logged())
    mlflow.log_metrics(cost.as_metrics(static))
    mlflow.set_tags({"trial_state": "PRUNED", OVER_BUDGET_ATTR: reason})
    return reason


def set_costs(trial: optuna.Trial, goals: Goals, costs: dict[str, float]) -> None:
    """``costs`` on the trial, and the constraint values that follow from them (the sampler learns from both)."""
    trial.set_user_attr(COSTS_ATTR, costs)
    for name, excess in goals.excess(costs).items():
        trial.set_constraint(name, excess)


def record_costs(trial: optuna.Trial, goals: Goals, metrics: dict[str, float]) -> None:
    """The trained model's costs (``cost_*`` metrics of train.job) on the trial and as its constraint values."""
    costs = {name: metrics[f"cost_{name}"] for name in cost.COSTS if f"cost_{name}" in metrics}
    missing = sorted({*goals.costs, *goals.constraints} - set(costs))
    if missing:
        raise RuntimeError(f"the trial's run logged no cost_{missing[0]} metric: train.job measures every "
                           "completed run's cost; is this code older than the study file?")
    set_costs(trial, goals, costs)


def earlier_twin(trial: optuna.Trial, digest: str) -> optuna.trial.FrozenTrial | None:
    """The first complete, trained trial of this study with the recipe ``trial`` drew, if any."""
    for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.number != trial.number and t.user_attrs.get(RECIPE_ATTR) == digest and TWIN_ATTR not in t.user_attrs:
            return t
    return None


def same_as(trial: optuna.Trial, twin: optuna.trial.FrozenTrial, goals: Goals, p: P.NetworkParams) -> None:
    """Record ``trial`` as its ``twin``: its answers, model and costs, and on its run the parameters
    and which trial and run trained the model."""
    for key in (EPOCHS_RUN, "model_uri", "classifier_uri", "config"):
        if key in twin.user_attrs:
            trial.set_user_attr(key, twin.user_attrs[key])
    if COSTS_ATTR in twin.user_attrs:
        set_costs(trial, goals, recorded_costs(twin))
    trial.set_user_attr(TWIN_ATTR, twin.number)
    if AT_CHANCE in twin.user_attrs:
        trial.set_user_attr(AT_CHANCE, True)
    mlflow.log_params(p.logged())
    mlflow.log_metric(VAL_ACC, twin.values[0])
    # its chance test is the trained twin's (the gate reads it where this trial is the candidate: finals.at_chance)
    trained = mlflow.MlflowClient().get_run(twin.user_attrs["mlflow_run_id"]).data if "mlflow_run_id" in \
        twin.user_attrs else None
    if trained is not None and "val_chance_p" in trained.metrics:
        mlflow.log_metrics({k: trained.metrics[k] for k in ("val_chance_p", "val_majority_share")})
        mlflow.set_tags({k: trained.tags[k] for k in (AT_CHANCE, AT_CHANCE_ALPHA) if k in trained.tags})
    mlflow.set_tags({TWIN_ATTR: str(twin.number), "same_as_run": twin.user_attrs.get("mlflow_run_id", "")})


def make_objective(setup: Setup, parent_run_id: str, train_fn: TrainFn | None = None):
    """The objective: suggest, train one nested run, return validation accuracy (and, with several
    objectives, the costs named after it).

    ``train_fn`` defaults to :func:`train.job.train_in_run`; tests pass a wrapper that
    raises in one trial to show the study survives it.
    """
    train = train_fn or job.train_in_run
    goals = setup.spec.goals

    def trained(trial: optuna.Trial, built: Examined, tags: dict[str, str], suggestion: dict) -> job.RunResult:
        prune = None if goals.multi else PruningCallback(trial)  # several objectives: no per-epoch report
        try:
            hooks = job.Hooks(tags=tags, evaluate_test=False, prune=prune, timed_cost=goals.timed, built=built,
                              figure=False, keras_model=False, chance_alpha=setup.args.promote_alpha)
            result = train(setup.ds, built.params, hooks)
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
            if result.at_chance:
                trial.set_user_attr(AT_CHANCE, True)  # its console line says so
            if not goals.plain:
                record_costs(trial, goals, result.metrics)
        return result

    def objective(trial: optuna.Trial) -> float | list[float]:
        suggestion = suggest(trial, setup.spec.space)
        tags = {"optuna_study": setup.study_name, "optuna_trial": str(trial.number), "trial_state": "RUNNING"}
        with mlflow.start_run(run_name=f"trial {trial.number}", nested=True, tags=tags) as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            trial.set_user_attr("mlflow_parent_run_id", parent_run_id)
            p = setup.trial_params(suggestion)
            digest = p.digest()  # everything it trains with: sampled, fixed, budget, seed
            # a point trained before, known without a build where its builder adds nothing (the built-in networks)
            twin = earlier_twin(trial, digest)
            if twin is None:
                try:  # built once, to train: its builder's own definitions (hp.Int, ...) suggested by the trial too
                    built = prepared(p, setup.ds.info, trial)
                except Exception as e:  # e.g. a builder that raises at the values drawn: the trial's run says so
                    mlflow.set_tags({"trial_state": "FAIL", "failure": f"{type(e).__name__}: {e}"[:5000]})
                    raise
                p, suggestion = built.params, {**suggestion, **built.added}
                digest = p.digest()
                twin = earlier_twin(trial, digest) if built.added else None
            trial.set_user_attr(RECIPE_ATTR, digest)
            if twin is not None:
                same_as(trial, twin, goals, p)
                return list(twin.values) if goals.multi else twin.values[0]
            reason = over_budget(trial, goals, p, setup.ds.info, built.model)
            result = None if reason else trained(trial, built, tags, suggestion)
        # raised after the run ended, so a pruned run is FINISHED, not FAILED
        if result is None:
            raise optuna.TrialPruned(reason)
        if result.pruned:
            raise optuna.TrialPruned(f"pruned after epoch {result.metrics[EPOCHS_RUN]}")
        if goals.multi:
            costs = trial.user_attrs[COSTS_ATTR]
            return [result.val_accuracy, *(costs[name] for name in goals.costs)]
        return result.val_accuracy

    return objective
