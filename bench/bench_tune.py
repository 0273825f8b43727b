"""The default `tune` (what `mlflow run .` runs), or any study file: wall time, champion test
accuracy, and the epochs pruning saved against n_trials x epochs.

    python bench/bench_tune.py [--family cnn] [--study cnn_long] [--n_trials N] [--keep DIR]

Runs in a throwaway MLflow store and Optuna storage (``--keep DIR``: in DIR, kept).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine, scratch_tracking, stdout_to_stderr  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--family", default="cnn")
    ap.add_argument("--study", default=None, help="a study in experiments/ (default: the family's own)")
    ap.add_argument("--n_trials", type=int, default=None, help="trials to run (default: the study file's budget)")
    ap.add_argument("--keep", default="", help="a new folder to keep the MLflow store and study in")
    args = ap.parse_args()

    from fmnist_exp import params as P
    from fmnist_exp.commands import tune

    with scratch_tracking(args.keep), stdout_to_stderr():  # progress lines to stderr, JSON to stdout
        t0 = time.perf_counter()
        summary = tune.run(P.tune_args({"family": args.family, "study": args.study, "n_trials": args.n_trials}))
        wall = time.perf_counter() - t0
    flat = summary.flat()  # the keys tune prints
    keep = ("n_trials_total", "n_complete", "n_pruned", "n_failed", "epochs_run", "epochs_budget", "best_trial",
            "best_val_accuracy", "test_accuracy", "test_macro_f1", "candidate", "alias", "decision",
            "final_seeds", "final_seeds_val_accuracy", "final_seeds_test_accuracy", "final_seeds_test_accuracy_mean",
            "final_seeds_test_accuracy_std", "final_seed_registered", "ensemble_gain",
            "ensemble_gain_ensemble_test_accuracy", "distilled_vs_ensemble", "distilled_vs_seed",
            "distill_student", "reference", "reference_epochs",
            "gain",
            "gain_candidate_test_accuracy", "gain_reference_test_accuracy")
    out = {"machine": machine(), "family": args.family, "study": args.study or args.family,
           "wall_s": round(wall, 1), "wall_min": round(wall / 60, 1),
           **{k: flat.get(k) for k in keep}}
    if flat.get("epochs_budget"):
        out["epochs_saved_by_pruning"] = flat["epochs_budget"] - flat["epochs_run"]
        out["share_of_epochs_saved"] = round(1 - flat["epochs_run"] / flat["epochs_budget"], 3)
    emit(out)


if __name__ == "__main__":
    main()
