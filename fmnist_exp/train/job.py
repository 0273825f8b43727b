"""One tracked training run, from typed parameters to a logged model.

``train_run`` is what the ``mlp`` and ``cnn`` entry points call; ``train_in_run`` is what each
tuning trial, final retrain and reference calls inside its own (nested) run, without touching the
test split. ``baseline_run`` logs the floor every later model must beat. Every one of these runs
records system metrics unless told not to (runs.system_metrics).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import keras
import mlflow
import numpy as np

from .. import data as D
from .. import stats
from ..metrics import BEST_VAL_ACC, EPOCHS_RUN, VAL_ACC, VAL_FINAL_ACC
from ..model import cost, networks
from ..model.wrappers import as_served
from ..params import BaselineParams, DataParams, NetworkParams, migrations, with_epochs
from . import builder_fit, lineage, plots, runs, tracking
from . import fit as F
from .distill import DISTILL_WEIGHT, Teacher
from .evaluate import log_chance, log_test_evaluation, predict_proba, scores, validated
from .model_logging import SKLEARN_PACKAGES, log_models, pip_requirements
from .runs import active_run_id


@dataclass
class RunResult:
    run_id: str
    metrics: dict[str, float]
    model_uri: str = ""
    classifier_uri: str = ""
    history: dict[str, list[float]] = field(default_factory=dict)
    pruned: bool = False
    at_chance: bool = False  # its validation answers not shown above the majority class's share (evaluate.log_chance)

    @property
    def val_accuracy(self) -> float:
        return self.metrics[VAL_FINAL_ACC]


def splits(ds: D.Dataset, p: DataParams) -> D.Splits:
    """The training, validation and test images a recipe trains and is scored on (split checked before:
    data.check_split)."""
    return D.split(ds, val_fraction=p.val_fraction, seed=p.split_by(), train_samples=p.train_samples)


def log_data_facts(ds: D.Dataset) -> None:
    """What the active run records of its dataset: the flat facts as parameters, the whole description
    (class names included) as dataset.json."""
    tracking.log_params(ds.describe())
    mlflow.log_dict(ds.info.to_json(), "dataset.json")
    if ds.notes:  # what the loader changed, e.g. images resized
        mlflow.set_tag("data_notes", "; ".join(ds.notes))


def run_name(p: NetworkParams) -> str:
    return networks.summary_tags(p)["arch"]


@contextlib.contextmanager
def _start(name: str, tags: dict, system_metrics: bool | None):
    """The command's own run, recording system metrics unless ``system_metrics`` or MLflow's
    variable says not to (runs.system_metrics). Under `mlflow run`, MLFLOW_RUN_ID is set and
    start_run() resumes that run."""
    with runs.system_metrics(system_metrics), runs.run_that_ends(run_name=name, tags=tags) as run:
        yield run


def train_run(ds: D.Dataset, p: NetworkParams, *, experiment: str | None = None,
              system_metrics: bool | None = None) -> RunResult:
    """Train the network ``p`` describes on ``ds`` in a new (or `mlflow run`'s) MLflow run, in experiment
    fmnist-<family> unless ``experiment`` or $MLFLOW_EXPERIMENT_NAME says otherwise."""
    tracking.use_experiment(experiment, f"fmnist-{p.FAMILY}")
    with _start(run_name(p), networks.summary_tags(p), system_metrics):
        return train_in_run(ds, p, Hooks(echo=f"[{p.FAMILY}]", params={"experiment": experiment or ""}))


class PruneCheck(keras.callbacks.Callback):
    """A callback that may stop training early for a search (study.objective.PruningCallback)."""

    pruned: bool = False


@dataclass(frozen=True)
class Hooks:
    """What a caller adds to the training of one run: the trials, the final retrains, the reference and
    ``reproduce`` differ only in these."""

    tags: Mapping[str, str] = field(default_factory=dict)  # set on the run beside the network's own
    params: Mapping[str, Any] = field(default_factory=dict)  # logged beside the recipe's
    evaluate_test: bool = True  # a single run and a rebuild score the test split; a search's runs do not
    prune: PruneCheck | None = None  # a trial's: when it stops training, no model is logged
    echo: str = ""  # one console line per epoch with this prefix (e.g. "[cnn]"); a trial prints one per trial
    teacher: Teacher | None = None  # distil it: fit its answers mixed with the labels (train.distill)
    # the serving times measured too (model/cost.py), not only the deterministic costs: a search's trials skip
    # them where its goals read none (a trial's repeated timed calls); the candidate is timed before it is
    # registered (study/finals.py time_candidate)
    timed_cost: bool = True
    # the network built to train where its recipe was made concrete (a trial's: study/objective.py); else built
    # by train_in_run. Never reused: a built network trains once
    built: builder_fit.Examined | None = None
    chance_alpha: float = stats.CHANCE_ALPHA  # the level of the run's chance test (a study's: its promote_alpha)
    # the learning curves drawn as plots/learning_curves.png; a search's trials draw none: the UI draws their
    # curves from the per-epoch metrics, across trials, and the figure was a tenth of a trial's own work
    figure: bool = True
    # a Keras-flavor model beside the classifier; a search's trials log the classifier alone, which loads as a
    # Keras model too (model_logging.log_classifier): their model_uri is the classifier's
    keras_model: bool = True


def train_in_run(ds: D.Dataset, p: NetworkParams, hooks: Hooks = Hooks()) -> RunResult:
    """Train the network ``p`` describes (its builder's, model.networks.build: a built-in family's or a user's)
    on ``ds``, checked before (the commands and study.setup check a recipe once, before any run), and log
    everything into the active run: parameters, data, curves, the model as it answers, its cost, and
    (``hooks.evaluate_test``) its test scores. The network is built once: here, or where a trial's draw made it
    concrete (``hooks.built``)."""
    s = splits(ds, p)
    run_id, teacher = active_run_id(), hooks.teacher
    targets = teacher.targets(s.x_train, s.y_train) if teacher else None  # before the fresh session
    # its builder's values and fit settings made explicit (as they were, if all given)
    built = hooks.built or builder_fit.prepared(p, ds.info)
    model, precision = built.model, built.precision
    if (built.params.val_fraction, built.params.split_by(), built.params.train_samples) != (
            p.val_fraction, p.split_by(), p.train_samples):  # a builder that defines the split's values itself
        s = splits(ds, built.params)
        targets = teacher.targets(s.x_train, s.y_train) if teacher else None
    p, note = with_epochs(built.params, len(s.y_train))  # not given: made concrete before they are logged
    if note and hooks.echo:
        print(f"{hooks.echo} {note}", flush=True)
    mlflow.set_tags({**networks.summary_tags(p), **hooks.tags, **(teacher.tags() if teacher else {})})
    # what trains: a model compiled by its builder says its own optimizer, not the recipe's unused one
    # the recipe version: what reads this run later upgrades it to its own recipe (params/migrations.py)
    tracking.log_params({**builder_fit.logged(p, model, built.defined), **hooks.params, "family": p.FAMILY,
                         migrations.VERSION_PARAM: migrations.VERSION,
                         **({DISTILL_WEIGHT: teacher.weight} if teacher else {})})
    lineage.log_builder(p)
    log_data_facts(ds)
    digests = lineage.log_split_inputs(ds.source, s)
    lineage.log_code_version()
    mlflow.log_params({"model_parameters": model.count_params(), "precision_used": precision})
    logger = tracking.EpochLogger(run_id)
    callbacks = [logger, *([hooks.prune] if hooks.prune else []), *([F.EpochPrinter(hooks.echo)] if hooks.echo else [])]
    try:  # the one call: the builder's own fit where it has one (keras-tuner's contract), else the recipe's
        fitted, returned = built.fit(s, p, callbacks, targets=targets)
    except F.DivergedError as e:
        mlflow.set_tag("failure", str(e))
        raise
    if not networks.is_portable(model):  # logged: float32 and Keras' own layers, whatever trained it
        model = networks.portable_copy(p, ds.info, model)
    model = builder_fit.without_compile(model)
    # from here on (validation score, test score, logged model) as it answers: flips, shifts averaged
    model = as_served(model, p, ds.info)
    scoring = time.perf_counter()
    val_metrics, chance = validated(model, s.x_val, s.y_val)  # of the model that is logged
    val_score_s = time.perf_counter() - scoring  # with fit, what a trial's time is for; the rest is the platform's
    at_chance = log_chance(chance, hooks.echo, hooks.chance_alpha)
    mlflow.log_metrics({
        BEST_VAL_ACC: max(fitted.history.get(VAL_ACC, [0.0])),
        EPOCHS_RUN: fitted.epochs_run,
        "train_wall_s": fitted.wall_s,
        "val_score_s": val_score_s,
        "train_images_per_s": fitted.images_per_s,
        **{f"fit_returned_{k}": v for k, v in returned.items()},  # what a HyperModel's fit returned
    })
    if hooks.figure:
        tracking.log_figure(plots.learning_curves(logger.history, title=run_name(p)), "plots/learning_curves.png")
    result = RunResult(run_id, {**val_metrics, EPOCHS_RUN: fitted.epochs_run, "train_wall_s": fitted.wall_s},
                       history=logger.history, at_chance=at_chance)
    if hooks.prune is not None and hooks.prune.pruned:
        result.pruned = True
        # no model: on the run
        tracking.log_model_metrics(run_id, val_metrics, digest=digests["validation"], dataset=ds.info.name)
        return result
    step = fitted.epochs_run  # past the last epoch's step: see model_logging.log_keras_model
    keras_ref, classifier_ref = log_models(model, s.x_val, ds.info, step=step, keras_model=hooks.keras_model)
    result.model_uri, result.classifier_uri = keras_ref.uri, classifier_ref.uri
    mlflow.set_tags({"model_uri": result.model_uri, "classifier_uri": result.classifier_uri})
    # on the run and its models
    both = list(dict.fromkeys([keras_ref.model_id, classifier_ref.model_id]))
    tracking.log_model_metrics(run_id, val_metrics, digest=digests["validation"], dataset=ds.info.name,
                               model_ids=both)
    result.metrics.update(log_cost(run_id, model, hooks.echo, timed=hooks.timed_cost, model_ids=both))
    if hooks.evaluate_test:
        probs = predict_proba(model, s.x_test)
        result.metrics.update(log_test_evaluation(run_id, s, probs, run_name(p)))
    return result


def log_cost(run_id: str, model: keras.Model, echo: str = "", *, timed: bool = True,
             model_ids: list[str] | None = None) -> dict[str, float]:
    """What the logged ``model`` costs to serve (the flip average runs its network twice, an ensemble
    every member), logged on the run and its models as ``cost_*`` metrics and returned so: with ``timed``, its
    times per image too, measured once per architecture in a process; without, its deterministic costs."""
    metrics = cost.measure_once(model).metrics() if timed else cost.as_metrics(cost.static(model))
    tracking.log_model_metrics(run_id, metrics, model_ids=model_ids)
    uncounted = cost.uncounted_layers(model)
    if uncounted:  # a user's network may hold layers whose arithmetic is not counted
        tracking.record(run_id, {}, {"cost_uncounted_layers": ",".join(uncounted)})
    if echo:
        left = f" (not counted: {', '.join(uncounted)})" if uncounted else ""
        print(f"{echo} {cost_line(metrics)}{left}", flush=True)
    return metrics


def cost_line(metrics: dict[str, float]) -> str:
    """What the logged model costs to serve (its ``cost_*`` metrics), on one console line."""
    line = (f"serving cost: {metrics['cost_mmacs_per_image']:.1f} M multiply-accumulates/image, "
            f"{int(metrics['cost_params']):,} parameters, {metrics['cost_size_mb']:.2f} MB")
    if "cost_ms_per_image_b1" not in metrics:  # not timed (Hooks.timed_cost)
        return line
    return (f"{line}; {metrics['cost_ms_per_image_b1']:.2f} ms/image at batch 1, "
            f"{metrics['cost_ms_per_image_b256']:.3f} at batch {cost.BATCH} (this machine)")


def baseline_run(ds: D.Dataset, p: BaselineParams, *, experiment: str | None = None,
                 system_metrics: bool | None = None) -> RunResult:
    """Majority class and a logistic regression on standardised pixels: the floor."""
    from mlflow.models import infer_signature
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    s = splits(ds, p)

    def flat(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1).astype("float32")

    tracking.use_experiment(experiment, "fmnist-baseline")
    with _start("baseline logreg", {"family": "baseline", "arch": "logreg+majority"}, system_metrics) as run:
        mlflow.set_tags({"family": "baseline", "arch": "logreg+majority"})
        tracking.log_params({**p.flat(), "experiment": experiment or "", "family": "baseline"})
        log_data_facts(ds)
        digests = lineage.log_split_inputs(ds.source, s)
        lineage.log_code_version()
        majority = DummyClassifier(strategy="most_frequent").fit(flat(s.x_train), s.y_train)
        majority_scores = {
            "majority_val_accuracy": float(majority.score(flat(s.x_val), s.y_val)),
            "majority_test_accuracy": float(majority.score(flat(s.x_test), s.y_test)),
        }
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=p.C, max_iter=p.max_iter))
        t0 = time.perf_counter()
        clf.fit(flat(s.x_train), s.y_train)
        wall = time.perf_counter() - t0
        val_probs = clf.predict_proba(flat(s.x_val))
        val = scores(s.y_val, val_probs, prefix="val_final_")
        # models first: MLflow would copy every run metric already logged at step 0 onto both (the
        # system/ samples it has taken by then are copied all the same: MLflow's own doing)
        example = flat(s.x_val[:3])
        sig = infer_signature(example, clf.predict_proba(example))
        stated = pip_requirements(*SKLEARN_PACKAGES)
        info = mlflow.sklearn.log_model(clf, name="model", signature=sig, input_example=example,
                                        pyfunc_predict_fn="predict_proba", pip_requirements=stated)
        majority_info = mlflow.sklearn.log_model(majority, name="majority_model", signature=sig, input_example=example,
                                                 pyfunc_predict_fn="predict_proba", pip_requirements=stated)
        mlflow.set_tags({"model_uri": info.model_uri, "majority_model_uri": majority_info.model_uri})
        run_id = run.info.run_id
        tracking.log_model_metrics(run_id, {BEST_VAL_ACC: val[VAL_FINAL_ACC], "train_wall_s": wall,
                                            "train_images_per_s": len(s.y_train) / wall}, model_ids=[])
        tracking.log_model_metrics(run_id, majority_scores, model_ids=[majority_info.model_id])
        tracking.log_model_metrics(run_id, val, digest=digests["validation"], dataset=ds.info.name,
                                   model_ids=[info.model_id])
        log_chance(stats.chance(s.y_val, val_probs.argmax(axis=1)), "[baseline]")  # a floor at chance says so too
        probs = clf.predict_proba(flat(s.x_test))
        metrics = log_test_evaluation(run_id, s, probs, "logistic regression",
                                      model_ids=[info.model_id])
        return RunResult(run.info.run_id, {**val, **metrics}, model_uri=info.model_uri)
