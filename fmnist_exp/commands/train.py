"""`baseline`, `mlp`, `cnn`: one tracked training run of one family.

    python -m fmnist_exp cnn --epochs 10 --filters 32,64,128
"""

from __future__ import annotations

import json

from .. import data
from ..params import BaselineParams, TrainArgs


def main(args: TrainArgs) -> int:
    """Train, log, and print the run's id, model URI and metrics as one JSON line."""
    ds = data.load(args.params.data_dir)  # a missing dataset is said before TensorFlow is imported
    from ..train import job

    if isinstance(args.params, BaselineParams):
        result = job.baseline_run(args.params, experiment=args.experiment, ds=ds, system_metrics=args.system_metrics)
    else:
        result = job.train_run(args.params, experiment=args.experiment, ds=ds, system_metrics=args.system_metrics)
    shown = {k: round(v, 4) for k, v in result.metrics.items() if not k.startswith("test_accuracy_class")}
    print(json.dumps({"run_id": result.run_id, "model_uri": result.model_uri, **shown}))
    return 0
