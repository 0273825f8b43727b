"""`baseline`, `mlp`, `cnn`, `custom`: one tracked training run of one family, on any dataset (``--data``).

    python -m fmnist_exp cnn --epochs 10 --filters 32,64,128
    python -m fmnist_exp cnn --data digits
    python -m fmnist_exp custom --model examples/residual.py:build --hp '{width: 32, blocks: 2}'
"""

from __future__ import annotations

import json

from .. import data
from ..params import BaselineParams, TrainArgs


def main(args: TrainArgs) -> int:
    """Train, log, and print the run's id, model URI and metrics as one JSON line."""
    p = args.params
    ds = data.load_dataset(p.data, p.data_dir)  # bad data is said before TensorFlow is imported
    data.check_split(ds, p.val_fraction)
    for said in ds.notes:
        print(f"[data] {said}", flush=True)
    from ..train import job

    if isinstance(p, BaselineParams):
        result = job.baseline_run(ds, p, experiment=args.experiment, system_metrics=args.system_metrics)
    else:
        from ..model.networks import fit_to_data
        from ..train.builder_fit import check_builder

        net, note = fit_to_data(p, ds.info)  # before any run: what the data does not allow is refused
        if note:
            print(f"[{net.FAMILY}] {note}", flush=True)
        check_builder([net], ds.info)  # a user's network: loads, builds for these images, reads its hp
        result = job.train_run(ds, net, experiment=args.experiment, system_metrics=args.system_metrics)
    shown = {k: round(v, 4) for k, v in result.metrics.items() if not k.startswith("test_accuracy_class")}
    chance = {"at_chance": True} if result.at_chance else {}  # it learned nothing: its console said so above
    print(json.dumps({"run_id": result.run_id, "model_uri": result.model_uri, **chance, **shown}))
    return 0
