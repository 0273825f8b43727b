"""One tracked training run, from parameters to a logged model.

``train_run`` is what the ``mlp`` and ``cnn`` entry points call, and what each tuning trial
calls (nested, without touching the test split). ``baseline_run`` logs the floor every
later model must beat.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import mlflow
import numpy as np

from . import config as C
from . import data as D
from . import lineage, tracking
from .data import CLASS_NAMES


@dataclass
class RunResult:
    run_id: str
    metrics: dict[str, float]
    model_uri: str = ""
    classifier_uri: str = ""
    history: dict[str, list[float]] = field(default_factory=dict)
    pruned: bool = False


def load_splits(p: dict, ds: D.Dataset | None = None) -> tuple[D.Dataset, D.Splits]:
    ds = ds or D.load(p["data_dir"] or None)
    return ds, D.split(ds, val_fraction=p["val_fraction"], seed=p["seed"], train_samples=p["train_samples"])


def run_name(family: str, p: dict) -> str:
    from .models import summary_tags

    return summary_tags(family, p)["arch"] if family != "baseline" else "baseline logreg"


def log_test_evaluation(run_id: str, x_test: np.ndarray, y_test: np.ndarray, probs: np.ndarray,
                        title: str = "", model_ids: list[str] | None = None) -> dict:
    """Test metrics (accuracy, loss, macro-F1, per class) on ``run_id`` and its models (default:
    all it logged), and the two test plots on the run."""
    from mlflow.tracking import MlflowClient

    from . import plots
    from .train import per_class_accuracy, scores

    client = MlflowClient()
    metrics = scores(y_test, probs, prefix="test_")
    pred = probs.argmax(axis=1)
    for c, acc in enumerate(per_class_accuracy(y_test, pred)):
        metrics[f"test_accuracy_class_{c}"] = float(acc)
    tracking.log_model_metrics(run_id, metrics, digest=lineage.split_digest(x_test, y_test), model_ids=model_ids)
    client.log_dict(run_id, {str(c): n for c, n in enumerate(CLASS_NAMES)}, "class_names.json")
    for fig, path in (
        (plots.confusion_matrix(y_test, pred, title=f"{title}: test confusion matrix"), "plots/confusion_matrix.png"),
        (plots.misclassified_grid(x_test, y_test, probs), "plots/misclassified.png"),
    ):
        client.log_figure(run_id, fig, path)
        plots.close(fig)
    return metrics


def _start(name: str, nested: bool, tags: dict):
    # Under `mlflow run`, MLFLOW_RUN_ID is set and start_run() resumes that run.
    return tracking.run_that_ends(run_name=name, nested=nested, tags=tags, log_system_metrics=False)


def train_run(family: str, p: dict, *, ds: D.Dataset | None = None, **kwargs) -> RunResult:
    """Train ``family`` with resolved params ``p`` in a new (or `mlflow run`'s) MLflow run, in
    experiment fmnist-<family> unless ``p["experiment"]`` or $MLFLOW_EXPERIMENT_NAME says otherwise."""
    from .models import summary_tags

    tracking.use_experiment(p.get("experiment", ""), f"fmnist-{family}")
    with _start(run_name(family, p), False, summary_tags(family, p)):
        return train_in_run(family, p, ds=ds, echo=f"[{family}]", **kwargs)


def train_in_run(
    family: str,
    p: dict,
    *,
    ds: D.Dataset | None = None,
    evaluate_test: bool = True,
    extra_tags: dict | None = None,
    prune_check=None,
    echo: str = "",
) -> RunResult:
    """Train and log everything into the active run.

    ``prune_check`` (tuning only) is a callback with a ``pruned`` attribute; when it stopped
    training, the result says so and no model is logged. ``echo`` (e.g. "[cnn]") prints one
    console line per epoch with that prefix; trials leave it empty (one line per trial instead).
    """
    from . import models, plots, train

    ds, s = load_splits(p, ds)
    run_id = mlflow.active_run().info.run_id
    mlflow.set_tags({**models.summary_tags(family, p), **(extra_tags or {})})
    tracking.log_params({**p, "family": family})
    tracking.log_params(ds.describe())
    digests = lineage.log_split_inputs(ds.source, s)
    lineage.log_code_version()
    model, precision = train.fresh_model(family, p)
    mlflow.log_params({"model_parameters": model.count_params(), "precision_used": precision})
    logger = tracking.EpochLogger(run_id)
    callbacks = [logger, *([prune_check] if prune_check else []), *([train.EpochPrinter(echo)] if echo else [])]
    try:
        fit = train.fit(model, s, p, callbacks=callbacks)
    except train.DivergedError as e:
        mlflow.set_tag("failure", str(e))
        raise
    if not models.is_portable(model):  # logged: float32 and Keras' own layers, whatever trained it
        model = models.portable_copy(family, p, model)
    if p["tta_flip"]:  # from here on (validation score, test score, logged model) image + mirror image
        model = models.with_flip_average(model)
    val_metrics = train.evaluate(model, s.x_val, s.y_val, prefix="val_final_")  # of the model that is logged
    mlflow.log_metrics({
        C.BEST_VAL_ACC: max(fit.history.get(C.VAL_ACC, [0.0])),
        "epochs_run": fit.epochs_run,
        "train_wall_s": fit.wall_s,
        "train_images_per_s": fit.images_per_s,
    })
    tracking.log_figure(plots.learning_curves(logger.history, title=run_name(family, p)), "plots/learning_curves.png")
    result = RunResult(run_id, {**val_metrics, "epochs_run": fit.epochs_run, "train_wall_s": fit.wall_s},
                       history=logger.history)
    if prune_check is not None and prune_check.pruned:
        result.pruned = True
        tracking.log_model_metrics(run_id, val_metrics, digest=digests["validation"])  # no model: on the run
        return result
    from .serving import log_classifier

    step = fit.epochs_run  # past the last epoch's step: see tracking.log_keras_model
    keras_ref = tracking.log_keras_model(model, s.x_val, step=step)
    classifier_ref = log_classifier(model, s.x_val, step=step)
    result.model_uri, result.classifier_uri = keras_ref.uri, classifier_ref.uri
    mlflow.set_tags({"model_uri": result.model_uri, "classifier_uri": result.classifier_uri})
    tracking.log_model_metrics(run_id, val_metrics, digest=digests["validation"])  # on the run and both models
    if evaluate_test:
        probs = train.predict_proba(model, s.x_test)
        result.metrics.update(log_test_evaluation(run_id, s.x_test, s.y_test, probs, run_name(family, p)))
    return result


def baseline_run(p: dict, *, ds: D.Dataset | None = None) -> RunResult:
    """Majority class and a logistic regression on standardised pixels: the floor."""
    from mlflow.models import infer_signature
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ds, s = load_splits(p, ds)
    flat = lambda x: x.reshape(len(x), -1).astype("float32")  # noqa: E731
    tracking.use_experiment(p.get("experiment", ""), "fmnist-baseline")
    with _start("baseline logreg", False, {"family": "baseline", "arch": "logreg+majority"}) as run:
        mlflow.set_tags({"family": "baseline", "arch": "logreg+majority"})
        tracking.log_params({**p, "family": "baseline"})
        tracking.log_params(ds.describe())
        digests = lineage.log_split_inputs(ds.source, s)
        lineage.log_code_version()
        majority = DummyClassifier(strategy="most_frequent").fit(flat(s.x_train), s.y_train)
        majority_scores = {
            "majority_val_accuracy": float(majority.score(flat(s.x_val), s.y_val)),
            "majority_test_accuracy": float(majority.score(flat(s.x_test), s.y_test)),
        }
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=p["C"], max_iter=p["max_iter"]))
        t0 = time.perf_counter()
        clf.fit(flat(s.x_train), s.y_train)
        wall = time.perf_counter() - t0
        from .train import scores

        val = scores(s.y_val, clf.predict_proba(flat(s.x_val)), prefix="val_final_")
        # models first: MLflow would copy every run metric already logged at step 0 onto both
        example = flat(s.x_val[:3])
        sig = infer_signature(example, clf.predict_proba(example))
        info = mlflow.sklearn.log_model(clf, name="model", signature=sig, input_example=example,
                                        pyfunc_predict_fn="predict_proba")
        majority_info = mlflow.sklearn.log_model(majority, name="majority_model", signature=sig,
                                                 input_example=example, pyfunc_predict_fn="predict_proba")
        mlflow.set_tags({"model_uri": info.model_uri, "majority_model_uri": majority_info.model_uri})
        run_id = run.info.run_id
        tracking.log_model_metrics(run_id, {C.BEST_VAL_ACC: val["val_final_accuracy"], "train_wall_s": wall,
                                            "train_images_per_s": len(s.y_train) / wall}, model_ids=[])
        tracking.log_model_metrics(run_id, majority_scores, model_ids=[majority_info.model_id])
        tracking.log_model_metrics(run_id, val, digest=digests["validation"], model_ids=[info.model_id])
        probs = clf.predict_proba(flat(s.x_test))
        metrics = log_test_evaluation(run_id, s.x_test, s.y_test, probs, "logistic regression",
                                      model_ids=[info.model_id])
        return RunResult(run.info.run_id, {**val, **metrics}, model_uri=info.model_uri)
