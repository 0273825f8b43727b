"""Does the main job pay? One default `mlflow run . -e cnn` and one default `mlflow run .`
(the `tune` study), side by side in one invocation, through the real `mlflow run` CLI.

    python bench/bench_study_pays.py [--order cnn,tune] [--study cnn] [--cnn_commit 861b7d0] [--keep DIR]

Reports each command's wall time end to end (process start to exit), their ratio (the main job's
budget: the study within 4x of one default `cnn` run of a fixed commit; BENCHMARKS.md, "The main job"), the default
run's test accuracy, and what the study reports about itself: champion test accuracy, the
reference's, the paired difference with its 95% bootstrap interval and the exact McNemar p-value,
and where its time went (each nested run's start and length: trials, the final retrain and the
reference beside it). Both runs write into one MLflow store and Optuna storage, thrown away unless ``--keep``.
``--cnn_commit`` runs the `cnn` side from that commit's own tree (extracted with `git archive`): the
main job's budget is stated against one `mlflow run . -e cnn` of a fixed commit, measured the same day.
``--keep`` writes the store into a new folder that stays, so two invocations' champions can be
compared on the same test images afterwards.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, emit, machine, mlflow_run, scratch_tracking  # noqa: E402


def extract(commit: str, into: Path) -> Path:
    """``commit``'s tree (what `mlflow run` needs of it) in ``into``."""
    into.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--order", default="cnn,tune", help="which command runs first")
    ap.add_argument("--study", default="", help="study for the tune side ('' = the default, experiments/cnn.yaml)")
    ap.add_argument("--cnn_commit", default="", help="run the cnn side from this commit's tree ('' = this one)")
    ap.add_argument("--keep", default="", help="a new folder to keep the store in ('' = a throwaway one)")
    args = ap.parse_args()

    import mlflow

    out: dict[str, Any] = {"machine": machine(), "started": time.strftime("%H:%M"), "walls_s": {},
                           "cnn_commit": args.cnn_commit or "this tree",
                           "store": str(Path(args.keep).resolve()) if args.keep else None}
    with scratch_tracking(args.keep) as uri:  # the store's folder is the working directory meanwhile
        tmp = os.getcwd()
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
               f"{os.environ.get('PATH', '')}"}
        old = extract(args.cnn_commit, Path(tmp) / "cnn_commit") if args.cnn_commit else REPO
        for entry in args.order.split(","):
            params = {"study": args.study} if entry == "tune" and args.study else {}
            project = old if entry == "cnn" else REPO  # its package first on the path, before the installed one
            out["walls_s"][entry], _ = mlflow_run(entry, params, tmp, {**env, "PYTHONPATH": str(project)}, project)
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
        cnn = next(r for r in runs if r.data.tags.get("family") == "cnn" and "optuna_study" not in r.data.tags
                   and "mlflow.parentRunId" not in r.data.tags)
        parent = next(r for r in runs if r.data.tags.get("mlflow.runName", "").startswith("tune "))
        # where the study's time went: each nested run's start and length, seconds from the parent's start
        kids = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                      key=lambda r: r.info.start_time)
        out["study_phases_s"] = {r.info.run_name: [round((r.info.start_time - parent.info.start_time) / 1000),
                                                   round((r.info.end_time - r.info.start_time) / 1000)]
                                 for r in kids}
        out["study_parent_s"] = round((parent.info.end_time - parent.info.start_time) / 1000)
    out["ratio_tune_to_cnn"] = round(out["walls_s"]["tune"] / out["walls_s"]["cnn"], 2)
    out["walls_s"] = {k: round(v, 1) for k, v in out["walls_s"].items()}
    out["cnn_test_accuracy"] = round(cnn.data.metrics["test_accuracy"], 4)
    out["cnn_train_wall_s"] = round(cnn.data.metrics["train_wall_s"], 1)
    m, tags = parent.data.metrics, parent.data.tags
    out["study"] = {k: round(v, 5) for k, v in sorted(m.items())
                    if k.startswith(("best_", "gain", "reference", "champion", "gate_", "final_seeds", "n_"))}
    out["study_tags"] = {k: v for k, v in sorted(tags.items()) if k.startswith(("registration", "gain", "gate_",
                                                                                   "reference", "registered"))}
    emit(out)


if __name__ == "__main__":
    main()
