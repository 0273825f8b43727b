"""Your own network beside the default study, end to end on Fashion-MNIST through the real `mlflow run`.

    python bench/bench_own_network.py [--study residual] [--keep DIR]

One invocation, one MLflow store: `mlflow run . -P study=residual -P model_name=residual-classifier` (the
builder of examples/residual.py, its width and depth searched beside the learning rate), then
`mlflow run . -P study=cnn` (the default study), each timed from process start to exit. Reported for each:
its champion's test accuracy with its 95% interval (Wilson), its serving cost (multiply-accumulates per
image), its study's own gain over the plain recipe (the reference, as the study measured it); and the two
champions against each other, paired on the same test images (difference with a bootstrap 95% interval,
exact McNemar p, b/c).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_own_data import wilson  # noqa: E402
from common import REPO, emit, machine, mlflow_run, scratch_tracking  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--study", default="residual", help="the study of your own network (a name in experiments/)")
    ap.add_argument("--keep", default="", help="a new folder to keep the store in ('' = a throwaway one)")
    args = ap.parse_args()

    import mlflow

    from fmnist_exp import data as D
    from fmnist_exp import stats
    from fmnist_exp.train.evaluate import classifier_answers

    out: dict[str, Any] = {"machine": machine(), "started": time.strftime("%H:%M"), "study": args.study}
    studies = {args.study: "residual-classifier", "cnn": "fmnist-classifier"}
    answers = {}
    with scratch_tracking(args.keep) as uri:
        tmp = os.getcwd()
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        ds = D.load_dataset("fashion-mnist")
        for study, name in studies.items():
            wall = mlflow_run("main", {"study": study, "model_name": name}, tmp, env)[0]
            runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                      filter_string=f"tags.mlflow.runName = 'tune {study}'")
            parent = runs[0]
            version = mlflow.MlflowClient().get_model_version_by_alias(name, "champion")
            chosen = mlflow.get_run(version.run_id)
            answers[study] = classifier_answers(f"models:/{name}@champion", ds.x_test)["label"].to_numpy()
            right = int((answers[study] == ds.y_test).sum())
            low, high = wilson(right, len(ds.y_test))
            m = parent.data.metrics
            out[study] = {"wall_s": round(wall, 1), "champion": f"{name}@champion (v{version.version})",
                          "arch": chosen.data.tags.get("arch", ""),
                          "test_accuracy": round(right / len(ds.y_test), 4), "ci95": [round(low, 4), round(high, 4)],
                          "mmacs_per_image": round(chosen.data.metrics.get("cost_mmacs_per_image", float("nan")), 2),
                          "gain_over_plain_recipe": parent.data.tags.get("gain", "not measured"),
                          "reference_test_accuracy": round(m.get("gain_reference_test_accuracy", float("nan")), 4)}
    cmp = stats.compare(ds.y_test, answers[args.study], answers["cnn"])
    out[f"{args.study}_minus_default_study"] = cmp.describe()
    emit(out)


if __name__ == "__main__":
    main()
