"""What tracking costs: a tracked `cnn` run against the same Keras fit with no MLflow at all.

    python bench/bench_overhead.py [--epochs 2] [--repeats 2]

Both sides train the default CNN on the full training split with the same seed, evaluate the
validation split every epoch and predict the test split once. The tracked side adds what every
run does: parameters, per-epoch metrics, three plots, the Keras model and the servable
classifier. Runs alternate (plain, tracked, plain, tracked) and medians are compared.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine, scratch_tracking  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import keras

    from fmnist_exp import config as C
    from fmnist_exp import data, experiment, models, train

    ds = data.load()
    p = C.resolve("cnn", {"epochs": args.epochs})
    splits = data.split(ds, val_fraction=p["val_fraction"], seed=p["seed"])

    def plain():
        keras.utils.clear_session()
        model = models.build("cnn", p)
        train.fit(model, splits, p)
        train.predict_proba(model, splits.x_test)

    def tracked():
        experiment.train_run("cnn", p, ds=ds)

    times = {"plain": [], "tracked": []}
    with scratch_tracking():
        for _ in range(args.repeats):
            for name, fn in (("plain", plain), ("tracked", tracked)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
                print(f"# {name}: {times[name][-1]:.1f}s", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    emit({"machine": machine(), "epochs": args.epochs, "repeats": args.repeats,
          "plain_s": [round(t, 1) for t in times["plain"]], "tracked_s": [round(t, 1) for t in times["tracked"]],
          "plain_median_s": round(med["plain"], 1), "tracked_median_s": round(med["tracked"], 1),
          "overhead_ratio": round(med["tracked"] / med["plain"], 3),
          "overhead_s": round(med["tracked"] - med["plain"], 1)})


if __name__ == "__main__":
    main()
