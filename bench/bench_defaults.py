"""Data load time, and each family's default run: seconds per epoch and test accuracy.

    python bench/bench_defaults.py [--families baseline,mlp,cnn]

Each run is a real tracked run (into a throwaway MLflow store) with the code defaults.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine, median_time, scratch_tracking, stdout_to_stderr  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--families", default="baseline,mlp,cnn")
    args = ap.parse_args()

    from fmnist_exp import config as C
    from fmnist_exp import data, experiment

    load_s = median_time(lambda: data.load(), repeats=5)
    ds = data.load()
    out = {"machine": machine(), "data": {"source": ds.source, "load_s_median_of_5": round(load_s, 3)}, "runs": {}}
    with scratch_tracking(), stdout_to_stderr():  # the runs' progress lines; stdout is the JSON alone
        for family in args.families.split(","):
            p = C.defaults(family)
            res = (experiment.baseline_run(p, ds=ds) if family == "baseline"
                   else experiment.train_run(family, p, ds=ds))
            import mlflow

            m = mlflow.get_run(res.run_id).data.metrics
            epochs = int(m.get("epochs_run", 1))
            out["runs"][family] = {
                "test_accuracy": round(m["test_accuracy"], 4),
                "epochs_run": epochs,
                "train_wall_s": round(m["train_wall_s"], 1),
                "s_per_epoch": round(m["train_wall_s"] / epochs, 1) if family != "baseline" else None,
                "train_images_per_s": round(m["train_images_per_s"]),
                "params": {k: v for k, v in p.items() if k != "data_dir"},
            }
            print(f"# {family}: {out['runs'][family]['test_accuracy']}", file=sys.stderr, flush=True)
    emit(out)


if __name__ == "__main__":
    main()
