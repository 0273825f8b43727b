"""What tracking costs, and the default `cnn` run's time to accuracy (BENCHMARKS.md, "Single runs: baseline,
MLP and CNN", tracking overhead).

    python bench/bench_overhead.py [--epochs 0] [--repeats 1]
    python bench/bench_overhead.py --trials digits,keras_tuner [--n_trials 4]

Both sides train the default CNN (all its default epochs unless --epochs) on the full training
split with the same seed, evaluate the validation split every epoch and score the test split
once. The plain side is Keras alone; the tracked side is what `mlflow run . -e cnn` runs:
parameters, per-epoch metrics, three plots, the Keras model and the servable classifier.
Runs alternate (plain, tracked, ...) and medians are compared. Each side also reports its
training wall time and test accuracy.

With --trials, a study trial instead: where its time goes beyond `fit` (trial_profile.py), for each
study file named, on the digits (``--data fashion-mnist``: on Fashion-MNIST, the default study's own data).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine, scratch_tracking, stdout_to_stderr  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=0, help="0 = the cnn default")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--trials", default="", help="study files (names in experiments/), comma-separated: "
                    "profile their trials on the digits instead")
    ap.add_argument("--n_trials", type=int, default=4)
    ap.add_argument("--data", default="digits", help="with --trials: the data (fashion-mnist: the study's own)")
    ap.add_argument("--plain_only", action="store_true", help="with --trials: the wall-clock pass alone")
    args = ap.parse_args()
    if args.trials:
        from trial_profile import profile_trials

        with stdout_to_stderr():
            studies = [profile_trials(study, args.n_trials, data=args.data, profile=not args.plain_only)
                       for study in args.trials.split(",")]
        emit({"machine": machine(), "studies": studies})
        return

    import keras

    from fmnist_exp import data
    from fmnist_exp import params as P
    from fmnist_exp.metrics import EPOCHS_RUN, TEST_ACC
    from fmnist_exp.model.networks import build, fit_to_data
    from fmnist_exp.train import fit as F
    from fmnist_exp.train import job
    from fmnist_exp.train.evaluate import evaluate, predict_proba, scores

    ds = data.load()
    p = fit_to_data(P.network("cnn", {"epochs": args.epochs} if args.epochs else {}), ds.info)[0]  # widths as logged
    splits = data.split(ds, val_fraction=p.val_fraction, seed=p.seed)
    p = P.with_epochs(p, len(splits.y_train))[0]  # as a run makes them concrete (and logs them)

    def plain():
        keras.utils.clear_session()
        model = build(p, ds.info)
        fit = F.fit(model, splits, p)
        evaluate(model, splits.x_val, splits.y_val, prefix="val_final_")  # as the tracked run does
        test = scores(splits.y_test, predict_proba(model, splits.x_test), prefix="test_")
        return fit.wall_s, fit.epochs_run, test[TEST_ACC]

    def tracked():
        with stdout_to_stderr():  # the run's progress lines; stdout is the JSON alone
            r = job.train_run(ds, p)
        return r.metrics["train_wall_s"], r.metrics[EPOCHS_RUN], r.metrics[TEST_ACC]

    times = {"plain": [], "tracked": []}
    runs = {"plain": [], "tracked": []}
    with scratch_tracking():
        for _ in range(args.repeats):
            for name, fn in (("plain", plain), ("tracked", tracked)):
                t0 = time.perf_counter()
                train_s, epochs_run, acc = fn()
                times[name].append(time.perf_counter() - t0)
                runs[name].append({"train_wall_s": round(train_s, 1), "epochs_run": epochs_run,
                                   "test_accuracy": round(acc, 4)})
                print(f"# {name}: {times[name][-1]:.1f}s, test {acc:.4f}", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    emit({"machine": machine(), "params": p.flat(), "runs": runs,
          "plain_s": [round(t, 1) for t in times["plain"]], "tracked_s": [round(t, 1) for t in times["tracked"]],
          "plain_median_s": round(med["plain"], 1), "tracked_median_s": round(med["tracked"], 1),
          "overhead_ratio": round(med["tracked"] / med["plain"], 3),
          "overhead_s": round(med["tracked"] - med["plain"], 1)})


if __name__ == "__main__":
    main()
