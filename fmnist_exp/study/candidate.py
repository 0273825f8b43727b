"""The model a study proposes for registration, and its answers on the test split (scored once)."""

from __future__ import annotations

from dataclasses import dataclass, field

import mlflow
import numpy as np

from .. import params as P
from ..data import Dataset
from ..metrics import VAL_FINAL_ACC
from ..model import cost
from ..train.evaluate import score_on_test

BEST_TRIAL, FINAL_RETRAIN, ENSEMBLE_OF_FINALS = "best trial", "final retrain", "ensemble of final retrains"
DISTILLED_NETWORK = "network distilled from the ensemble"


@dataclass
class Candidate:
    """The model a study proposes: its run, model URIs, validation accuracy and origin."""

    run_id: str
    model_uri: str  # the Keras model
    classifier_uri: str  # the servable pyfunc around it (scored on the test split, registered)
    val_accuracy: float
    trial_number: int
    origin: str  # BEST_TRIAL, FINAL_RETRAIN, ENSEMBLE_OF_FINALS or DISTILLED_NETWORK
    test_labels: np.ndarray | None = None  # its answers on the test split, once scored
    test_metrics: dict[str, float] = field(default_factory=dict)

    def score(self, ds: Dataset) -> np.ndarray:
        """Score the classifier on the test split, once per process and once per run; its answers."""
        if self.test_labels is None:
            self.test_labels, self.test_metrics = score_on_test(self.run_id, self.classifier_uri, ds, self.origin)
        return self.test_labels


def finished(filter_string: str, trial_number: int, origin: str, val_metric: str = VAL_FINAL_ACC,
             without_tag: str | None = None, recipe: P.FitParams | None = None) -> Candidate | None:
    """A FINISHED run of a resumed study (matching ``filter_string``, without a value for tag
    ``without_tag``, and trained with ``recipe`` where given) that logged its models, as the
    candidate it was (its validation accuracy: ``val_metric``); None when there is none and it must
    be trained. A study file whose final recipe changed since (more epochs, one shared split) thus
    trains again instead of reusing what another recipe trained."""
    done = mlflow.search_runs(filter_string=f"{filter_string} and attributes.status = 'FINISHED'",
                              output_format="list")

    def reusable(r) -> bool:
        return bool(r.data.tags.get("model_uri")) and not (without_tag and r.data.tags.get(without_tag)) and (
            recipe is None or _trained(recipe, r.data.params))

    done = [r for r in done if reusable(r)]
    if not done:
        return None
    r = done[0]
    return Candidate(r.info.run_id, r.data.tags["model_uri"], r.data.tags["classifier_uri"],
                     r.data.metrics[val_metric], trial_number, origin)


def _trained(recipe: P.FitParams, logged: dict[str, str]) -> bool:
    """Whether a run that logged ``logged`` trained ``recipe``, wherever it read the data from (the
    workers of one study may each have their own data or data_dir path to the same images: a study
    holds one dataset, checked by its digest when a worker joins, study.stored.check_study_data)."""
    try:
        trained = P.replaced(P.trained(recipe.FAMILY, logged), data=recipe.data, data_dir=recipe.data_dir)
    except P.ConfigError:  # a value today's checks refuse: not today's recipe
        return False
    return trained.digest() == recipe.digest()


def cost_metrics(run_id: str) -> dict[str, float]:
    """The ``cost_*`` metrics a run logged (train.job, study/ensemble.py), by cost name."""
    metrics = mlflow.MlflowClient().get_run(run_id).data.metrics
    return cost.as_read({k.removeprefix("cost_"): v for k, v in metrics.items() if k.startswith("cost_")})
