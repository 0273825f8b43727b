"""Scoring a model on a split: class probabilities, accuracy, loss, macro-F1 and per-class
accuracy; and the test evaluation a run records once (metrics on the run and its models, the
confusion matrix and the most confident mistakes)."""

from __future__ import annotations

import keras
import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from .. import stats
from ..classifier.pyfunc import MAX_BATCH
from ..data import Dataset, Splits
from ..metrics import TEST_ACC
from . import lineage, plots, tracking

# A run's tags: at_chance "true" where its model was not shown to learn anything (stats.chance), at the level
# at_chance_alpha: a study's runs at its promote_alpha, a single run at the gate's default; the gate judges the
# candidate again at the study's (study/finals.py at_chance: a reused or ensemble run may carry another level).
AT_CHANCE, AT_CHANCE_ALPHA = "at_chance", "at_chance_alpha"


def predict_proba(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return model.predict(x.astype("float32"), batch_size=1024, verbose=0)


def validated(model: keras.Model, x: np.ndarray, y: np.ndarray) -> tuple[dict[str, float], stats.Chance]:
    """The validation scores a run logs (``val_final_*``), and its answers against the majority class's share."""
    probs = predict_proba(model, x)
    return scores(y, probs, prefix="val_final_"), stats.chance(y, probs.argmax(axis=1))


def log_chance(c: stats.Chance, echo: str = "", alpha: float = stats.CHANCE_ALPHA) -> bool:
    """Whether the active run's model learned anything, on the run: the test's p-value and the majority class's
    share as metrics, the verdict at ``alpha`` (a study's promote_alpha) as the tag at_chance and that level as
    at_chance_alpha, and where it is at chance a console line saying so (``echo``: its prefix). True: at chance."""
    at = c.at_chance(alpha)
    mlflow.log_metrics({"val_majority_share": c.share, "val_chance_p": c.p_value})
    mlflow.set_tags({AT_CHANCE: str(at).lower(), AT_CHANCE_ALPHA: f"{alpha:g}"})
    if echo and at:
        print(f"{echo} {c.describe(alpha)}", flush=True)
    return at


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray, *, prefix: str) -> dict[str, float]:
    probs = predict_proba(model, x)
    return scores(y, probs, prefix=prefix)


def scores(y: np.ndarray, probs: np.ndarray, *, prefix: str) -> dict[str, float]:
    """Accuracy, cross-entropy loss and macro-F1 of class probabilities (one column per class)."""
    from sklearn.metrics import f1_score

    pred = probs.argmax(axis=1)
    eps = 1e-7
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], eps, 1.0))))
    return {
        f"{prefix}accuracy": float((pred == y).mean()),
        f"{prefix}loss": loss,
        f"{prefix}macro_f1": float(f1_score(y, pred, average="macro", labels=list(range(probs.shape[1])))),
    }


def per_class_accuracy(y: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    return np.array([(pred[y == c] == c).mean() if np.any(y == c) else np.nan for c in range(num_classes)])


def log_test_evaluation(run_id: str, data: Dataset | Splits, probs: np.ndarray, title: str = "",
                        model_ids: list[str] | None = None) -> dict[str, float]:
    """Test metrics (accuracy, loss, macro-F1, per class) of ``probs``, the answers to ``data``'s test images, on
    ``run_id`` and its models (default: all it logged), the class names, and the two test plots on the run."""
    x_test, y_test, info = data.x_test, data.y_test, data.info
    client = MlflowClient()
    metrics = scores(y_test, probs, prefix="test_")
    pred = probs.argmax(axis=1)
    for c, acc in enumerate(per_class_accuracy(y_test, pred, info.num_classes)):
        metrics[f"test_accuracy_class_{c}"] = float(acc)
    tracking.log_model_metrics(run_id, metrics, digest=lineage.split_digest(x_test, y_test), dataset=info.name,
                               model_ids=model_ids)
    client.log_dict(run_id, {str(c): n for c, n in enumerate(info.class_names)}, "class_names.json")
    for fig, path in (
        (plots.confusion_matrix(y_test, pred, info.class_names, title=f"{title}: test confusion matrix"),
         "plots/confusion_matrix.png"),
        (plots.misclassified_grid(x_test, y_test, probs, info.class_names), "plots/misclassified.png"),
    ):
        client.log_figure(run_id, fig, path)
        plots.close(fig)
    return metrics


def classifier_answers(model_uri: str, x: np.ndarray) -> pd.DataFrame:
    """A pyfunc classifier's answers (label, class_name, probabilities) for many images, in
    batches it accepts: the served classifier refuses more than MAX_BATCH images at once."""
    model = mlflow.pyfunc.load_model(model_uri)
    return pd.concat([model.predict(x[i:i + MAX_BATCH]) for i in range(0, len(x), MAX_BATCH)], ignore_index=True)


def score_on_test(run_id: str, classifier_uri: str, ds: Dataset, title: str) -> tuple[np.ndarray, dict]:
    """The test labels a run's classifier answers, and its test metrics. The metrics and plots are
    logged to the run the first time only, so a resumed study does not log them twice."""
    answers = classifier_answers(classifier_uri, ds.x_test)
    logged = MlflowClient().get_run(run_id).data.metrics
    if TEST_ACC in logged:
        metrics = {k: v for k, v in logged.items() if k.startswith("test_")}
    else:
        probs = np.stack([np.asarray(p) for p in answers["probabilities"]])
        metrics = log_test_evaluation(run_id, ds, probs, title)
    return answers["label"].to_numpy(), metrics
