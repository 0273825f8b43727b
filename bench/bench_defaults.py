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

    import mlflow

    from fmnist_exp import data
    from fmnist_exp import params as P
    from fmnist_exp.metrics import EPOCHS_RUN, TEST_ACC
    from fmnist_exp.model.networks import fit_to_data
    from fmnist_exp.train import job

    load_s = median_time(lambda: data.load(), repeats=5)
    ds = data.load()
    out = {"machine": machine(), "data": {"source": ds.source, "load_s_median_of_5": round(load_s, 3)}, "runs": {}}
    with scratch_tracking(), stdout_to_stderr():  # the runs' progress lines; stdout is the JSON alone
        for family in args.families.split(","):
            p = P.family(family)
            if not isinstance(p, P.BaselineParams):
                p = fit_to_data(p, ds.info)[0]  # the widths the run trains and logs
            res = job.baseline_run(ds, p) if isinstance(p, P.BaselineParams) else job.train_run(ds, p)
            m = mlflow.get_run(res.run_id).data.metrics
            epochs = int(m.get(EPOCHS_RUN, 1))
            out["runs"][family] = {
                "test_accuracy": round(m[TEST_ACC], 4),
                "epochs_run": epochs,
                "train_wall_s": round(m["train_wall_s"], 1),
                "s_per_epoch": round(m["train_wall_s"] / epochs, 1) if family != "baseline" else None,
                "train_images_per_s": round(m["train_images_per_s"]),
                "params": {k: v for k, v in p.flat().items() if k != "data_dir"},
            }
            print(f"# {family}: {out['runs'][family]['test_accuracy']}", file=sys.stderr, flush=True)
    emit(out)


if __name__ == "__main__":
    main()
