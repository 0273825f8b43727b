"""What lineage costs a run: the three dataset inputs (full-content digests) and the git tags,
against one training epoch of the default CNN measured in the same process.

    python bench/bench_lineage.py

Prints JSON: median seconds of log_split_inputs and log_code_version over 5 runs each.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine, median_time, scratch_tracking  # noqa: E402


def main() -> None:
    import mlflow

    from fmnist_exp import data
    from fmnist_exp.train import lineage

    ds = data.load()
    s = data.split(ds, val_fraction=0.1, seed=42)
    with scratch_tracking(), mlflow.start_run():
        inputs_s = median_time(lambda: lineage.log_split_inputs(ds.source, s), repeats=5)
        digest_s = median_time(lambda: lineage.split_digest(s.x_train, s.y_train), repeats=5)
        git_s = median_time(lineage.log_code_version, repeats=5)
    emit({"machine": machine(), "train_images": len(s.y_train),
          "log_split_inputs_s_median_of_5": round(inputs_s, 3), "training_split_digest_s": round(digest_s, 3),
          "log_code_version_s_median_of_5": round(git_s, 3)})


if __name__ == "__main__":
    main()
