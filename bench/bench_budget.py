"""The budget study pays? `experiments/cnn_budget.yaml` run as `mlflow run . -P study=cnn_budget` runs
it, then two points of its front retrained as its final retrain is, scored on test and costed side by
side with the plain `cnn` recipe, in one invocation:

    python bench/bench_budget.py [--quarter 2.535] [--rounds 5] [--keep DIR]

(a) the most accurate point (by validation accuracy) at no more than a quarter of the plain recipe's
multiply-accumulates per image, retrained here, and (b) the model the study registered (its most
accurate point). Both against the study's reference (the plain `cnn` recipe as `mlflow run . -e cnn`
trains it, on the same test images: difference, 95% CI, McNemar p). The costs of the plain recipe,
(a) and (b) are measured round by round (fmnist_exp.model.cost), medians over rounds. Validation
chooses; test only reports.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine, scratch_tracking, stdout_to_stderr  # noqa: E402

PLAIN_MMACS = 10.139392  # the plain `cnn` recipe (tests/test_cost.py counts it)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="cnn_budget")
    ap.add_argument("--quarter", type=float, default=PLAIN_MMACS / 4, help="(a)'s bound, M MACs per image")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--keep", default="", help="a new folder to keep the MLflow store and study in")
    a = ap.parse_args()

    import mlflow
    import numpy as np
    import optuna

    from fmnist_exp import params as P
    from fmnist_exp import stats
    from fmnist_exp.commands import tune
    from fmnist_exp.model import cost, networks
    from fmnist_exp.study import front
    from fmnist_exp.study.setup import prepare
    from fmnist_exp.train import job
    from fmnist_exp.train.evaluate import classifier_answers

    with scratch_tracking(a.keep), stdout_to_stderr():
        t0 = time.perf_counter()
        summary = tune.run(P.tune_args({"study": a.study})).flat()
        study_s = time.perf_counter() - t0
        setup = prepare(P.tune_args({"study": a.study}), must_exist=True)
        study = optuna.load_study(study_name=setup.study_name, storage=setup.optuna_storage)
        points = front.points(study, setup.spec.goals)
        small = [p for p in points if p.costs["mmacs_per_image"] <= a.quarter]
        if not small:
            raise SystemExit(f"no complete trial at or under {a.quarter} M MACs per image")
        pick = max(small, key=lambda p: (p.objectives["val_accuracy"], -p.trial))
        config = study.trials[pick.trial].user_attrs["config"]
        t1 = time.perf_counter()
        retrained = job.train_run(setup.ds, setup.final_params(config, setup.args.seed),
                                  experiment=f"fmnist-study-{setup.study_name}")
        small_s = time.perf_counter() - t1
        y = setup.ds.y_test
        answers = lambda uri: classifier_answers(uri, setup.ds.x_test)["label"].to_numpy()  # noqa: E731
        reference_run = summary["reference_run_id"]
        ref_uri = mlflow.get_run(reference_run).data.tags["classifier_uri"]
        registered_uri = f"models:/{summary['model_name']}/{summary['registered_version']}"
        labels = {"plain cnn (reference)": answers(ref_uri), "(a) small": answers(retrained.classifier_uri),
                  "(b) registered": answers(registered_uri)}
        models = {"plain cnn (reference)": networks.build(P.network("cnn"), setup.ds.info),
                  "(a) small": mlflow.keras.load_model(retrained.model_uri),
                  "(b) registered": mlflow.keras.load_model(
                      mlflow.get_run(summary["best_run_id"]).data.tags["model_uri"])}
        rounds: dict[str, list[cost.Cost]] = {k: [] for k in models}
        for r in range(a.rounds):
            for name, model in models.items():
                rounds[name].append(cost.measure(model, seed=r))

    def row(name: str) -> dict:
        c = rounds[name]
        out = {"test_accuracy": round(float(np.mean(labels[name] == y)), 4), "params": c[0].params,
               "size_mb": round(c[0].size_mb, 3), "mmacs_per_image": round(c[0].mmacs_per_image, 3),
               "ms_per_image_b1": round(statistics.median(x.ms_per_image_b1 for x in c), 3),
               "ms_per_image_b256": round(statistics.median(x.ms_per_image_b256 for x in c), 4),
               "b1_ratio_to_plain": round(statistics.median(
                   x.ms_per_image_b1 / p.ms_per_image_b1 for x, p in zip(c, rounds["plain cnn (reference)"],
                                                                          strict=True)), 2)}
        if name != "plain cnn (reference)":
            cmp = stats.compare(y, labels[name], labels["plain cnn (reference)"])
            out.update(vs_plain=cmp.describe(), diff=round(cmp.diff, 4), ci=[round(cmp.ci_low, 4),
                                                                             round(cmp.ci_high, 4)],
                       p=cmp.p_value, b=cmp.b, c=cmp.c)
        return out

    emit({"machine": machine(), "load_avg": os.getloadavg(), "study": a.study, "study_wall_s": round(study_s, 1),
          "small_retrain_wall_s": round(small_s, 1), "front": front.table(points, setup.spec.goals).to_dict("records"),
          "small_trial": pick.trial, "small_config": config, "registered_trial": summary["best_trial"],
          "registered_val_accuracy": summary["best_val_accuracy"], "rounds": a.rounds,
          "rows": {name: row(name) for name in models}})


if __name__ == "__main__":
    main()
