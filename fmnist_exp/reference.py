"""What a study bought: its candidate against a reference on the same test images.

The reference (study-file key ``reference``, see space.py) is the family's default recipe, a
named configuration, an already-measured run, or off. A trained reference gets the candidate's
budget (``final``'s epochs and train_samples, else the trials') and seed, in a nested run
``reference``; a resumed study reuses a FINISHED one with the same recipe. The gain is the
paired difference in test accuracy with its bootstrap 95% interval and exact McNemar p-value
(stats.py), on the parent run as ``gain_*`` metrics and in the summary.
"""

from __future__ import annotations

import hashlib
import json

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from . import config as C
from . import data as D
from . import experiment, registry, space, stats


def recipe(spec: space.StudySpec, base: dict) -> dict:
    """The reference's parameters: the family defaults (``fixed`` not applied) or the named ones,
    with the candidate's budget and seed."""
    budget = {**base, **spec.final}
    return C.resolve(spec.family, {**spec.reference.params, **{k: budget[k] for k in space.REFERENCE_BUDGET}})


def check_run(spec: space.StudySpec) -> None:
    """A ``{run_id: ...}`` reference must exist and carry a logged model; said before the search."""
    if spec.reference.kind != "run":
        return
    try:
        run = mlflow.MlflowClient().get_run(spec.reference.run_id)
    except MlflowException:
        raise C.ConfigError(f"{spec.path}: reference run {spec.reference.run_id!r} is not in the tracking store "
                            f"{mlflow.get_tracking_uri()}; give the id of a finished mlp or cnn run") from None
    tags = run.data.tags
    if not (tags.get("model_uri") and tags.get("classifier_uri")):  # e.g. a baseline run: no Keras model
        raise C.ConfigError(f"{spec.path}: reference run {spec.reference.run_id!r} has no logged Keras model "
                            "(model_uri and classifier_uri tags); give the id of a finished mlp or cnn run")


def _trained(spec: space.StudySpec, base: dict, ds: D.Dataset, study_name: str) -> tuple[str, np.ndarray]:
    """(run id, test labels) of the study's reference run, trained now unless a resumed study has it."""
    p = recipe(spec, base)
    key = hashlib.sha256(json.dumps({"family": spec.family, **p}, sort_keys=True).encode()).hexdigest()[:16]
    tags = {"optuna_study": study_name, "study_reference": "true", "reference_key": key}
    done = mlflow.search_runs(
        filter_string=f"tags.optuna_study = '{study_name}' and tags.study_reference = 'true' "
                      f"and tags.reference_key = '{key}' and attributes.status = 'FINISHED'", output_format="list")
    done = [r for r in done if r.data.tags.get("classifier_uri")]
    if done:
        run_id, classifier_uri = done[0].info.run_id, done[0].data.tags["classifier_uri"]
    else:
        print(f"[tune] reference: training {spec.reference.describe()} with epochs={p['epochs']} "
              f"train_samples={p['train_samples']} seed={p['seed']}", flush=True)
        with mlflow.start_run(run_name="reference", nested=True, tags=tags) as run:
            res = experiment.train_in_run(spec.family, p, ds=ds, evaluate_test=False, extra_tags=tags,
                                          echo="[tune] reference")
        run_id, classifier_uri = run.info.run_id, res.classifier_uri
    labels, _ = registry.score_on_test(run_id, classifier_uri, ds, "reference")
    return run_id, labels


def _measured(run_id: str, ds: D.Dataset) -> np.ndarray:
    """Test labels of an existing run's classifier (the path the candidate is scored through);
    nothing is trained or logged."""
    uri = mlflow.MlflowClient().get_run(run_id).data.tags["classifier_uri"]
    return registry.classifier_answers(uri, ds.x_test)["label"].to_numpy()


def report(spec: space.StudySpec, base: dict, ds: D.Dataset, study_name: str, candidate: registry.Candidate,
           parent_run_id: str) -> dict:
    """Compare the (already scored) candidate with the reference; log and return the gain fields."""
    ref = spec.reference
    if ref.kind == "off":
        registry.record(parent_run_id, {}, {"gain_reference": "off"})
        return {"reference": "off"}
    if ref.kind == "run":
        run_id, labels = ref.run_id, _measured(ref.run_id, ds)
    else:
        run_id, labels = _trained(spec, base, ds, study_name)
    cmp = stats.compare(ds.y_test, candidate.test_labels, labels)
    fields = cmp.fields("gain_", "candidate", "reference")
    out = {"reference": ref.describe(), "reference_run_id": run_id, **fields, "gain": cmp.describe()}
    registry.record(parent_run_id, fields, {"gain_reference": ref.describe(), "gain_reference_run_id": run_id,
                                            "gain": cmp.describe()})
    print(f"[tune] gain over {ref.describe()} (run {run_id}): {cmp.describe()}", flush=True)
    return out
