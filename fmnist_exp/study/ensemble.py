"""An ensemble of a study's final retrains: the average of k seeds' class probabilities, logged.

``final: {seeds: k, ensemble: true}`` in a study file registers this average instead of the
seed with the best validation accuracy. It is one Keras model (model.wrappers.average: the
members side by side, each with its own flip averaging when the recipe has it), so logging,
serving, the promotion gate and ``reproduce`` treat it like any other model; it answers at k
times the inference cost of one member.

The members' validation splits differ (the split is seeded), so each member trained on images
another one held out. The ensemble's validation accuracy is therefore measured on the
validation images that no member trained on (with 2 seeds and 10% validation, about 1% of the
training set: ~600 images), next to each member's accuracy on the same images: evidence for
the average from validation alone. The test split stays for the gate and the final report.
"""

from __future__ import annotations

import keras
import mlflow
import numpy as np

from .. import data as D
from ..model.networks import summary_tags
from ..model.wrappers import average
from ..params import NetworkParams
from ..train import lineage, tracking
from ..train.evaluate import evaluate, log_chance, log_test_evaluation, predict_proba, validated
from ..train.job import RunResult, log_cost, log_data_facts
from ..train.model_logging import log_models
from ..train.runs import active_run_id

MEMBERS_TAG = lineage.MEMBERS_TAG


def held_out_by_all(ds: D.Dataset, val_fraction: float, split_seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The validation images (and labels) that none of the members trained on, given the seed each
    drew its split with (DataParams.split_by): all of the split where they share one, else what
    their own splits share."""
    if len(set(split_seeds)) == 1:  # in the split's own order: the members' validation data, digest alike
        _, val = D.split_indices(ds.y_train, val_fraction=val_fraction, seed=split_seeds[0])
        return ds.x_train[val], ds.y_train[val]
    common: set[int] | None = None
    for seed in split_seeds:
        _, val = D.split_indices(ds.y_train, val_fraction=val_fraction, seed=seed)
        common = set(val.tolist()) if common is None else common & set(val.tolist())
    idx = np.array(sorted(common or ()), dtype=np.int64)
    return ds.x_train[idx], ds.y_train[idx]


def log_in_run(p: NetworkParams, members: list[keras.Model], seeds: list[int], ds: D.Dataset, *,
               split_seeds: list[int], member_run_ids: list[str], evaluate_test: bool = False,
               echo: str = "") -> tuple[RunResult, keras.Model]:
    """Average ``members`` (trained with ``p`` and one seed each) and log the ensemble into the
    active run: parameters (``ensemble_seeds`` instead of ``seed``), data facts, code version,
    both models (Keras and servable classifier), validation accuracy on the images no member
    trained on, and each member's on the same images."""
    run_id = active_run_id()
    arch = summary_tags(p)
    mlflow.set_tags({**arch, "arch": f"{arch['arch']} x{len(members)} ensemble",
                     MEMBERS_TAG: ",".join(member_run_ids)})
    tracking.log_params({**{k: v for k, v in p.flat().items() if k != "seed"}, "family": p.FAMILY,
                         "ensemble_seeds": ",".join(map(str, seeds)), "ensemble_size": len(members)})
    log_data_facts(ds)
    lineage.log_code_version()
    x_val, y_val = held_out_by_all(ds, p.val_fraction, split_seeds)
    # what the ensemble was validated and will be tested on; each member's run has its own three splits
    digests = lineage.log_inputs(lineage.datasets(ds.source, {"validation": (x_val, y_val),
                                                              "test": (ds.x_test, ds.y_test)}, ds.info.name))
    member_acc = [evaluate(m, x_val, y_val, prefix="")["accuracy"] for m in members]
    model = average(members, ds.info)
    val, chance = validated(model, x_val, y_val)
    log_chance(chance, echo)
    keras_ref, classifier_ref = log_models(model, x_val, ds.info)
    mlflow.set_tags({"model_uri": keras_ref.uri, "classifier_uri": classifier_ref.uri})
    tracking.log_model_metrics(run_id, {**val, "val_final_images": float(len(y_val))},
                               digest=digests["validation"], dataset=ds.info.name)
    mlflow.log_metrics({f"val_final_accuracy_member_{i}": a for i, a in enumerate(member_acc)})
    if echo:
        each = ", ".join(f"seed {s} {a:.4f}" for s, a in zip(seeds, member_acc, strict=True))
        print(f"{echo} ensemble of {len(members)}: validation accuracy {val['val_final_accuracy']:.4f} on the "
              f"{len(y_val)} validation images no member trained on ({each})", flush=True)
    result = RunResult(run_id, {**val, **log_cost(run_id, model, echo)}, keras_ref.uri, classifier_ref.uri)
    if evaluate_test:
        probs = predict_proba(model, ds.x_test)
        result.metrics.update(log_test_evaluation(run_id, ds, probs, f"{arch['arch']} ensemble"))
    return result, model
