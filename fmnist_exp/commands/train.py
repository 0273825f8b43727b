"""`baseline`, `mlp`, `cnn`, `custom`: one tracked training run of one family, on any dataset (``--data``).

    python -m fmnist_exp cnn --epochs 10 --filters 32,64,128
    python -m fmnist_exp cnn --data digits
    python -m fmnist_exp custom --model examples/residual.py:build --hp '{width: 32, blocks: 2}'
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, cast

from .. import data
from ..params import BaselineParams, NetworkParams, TrainArgs

if TYPE_CHECKING:
    from ..train.job import RunResult


def _dataset(args: TrainArgs) -> data.Dataset:
    """The run's images, checked and their loader's notes said, before TensorFlow is imported."""
    p = args.params
    ds = data.load_dataset(p.data, p.data_dir)
    data.check_split(ds, p.val_fraction)
    for said in ds.notes:
        print(f"[data] {said}", flush=True)
    return ds


def _said(result: RunResult) -> int:
    """The run's id, model URI and metrics as one JSON line."""
    shown = {k: round(v, 4) for k, v in result.metrics.items() if not k.startswith("test_accuracy_class")}
    chance = {"at_chance": True} if result.at_chance else {}  # it learned nothing: its console said so above
    print(json.dumps({"run_id": result.run_id, "model_uri": result.model_uri, **chance, **shown}))
    return 0


def main(args: TrainArgs) -> int:
    """`mlp`, `cnn`, `custom`: train the network, log, and print the run's id, model URI and metrics in JSON."""
    ds = _dataset(args)
    from ..model.networks import fit_to_data
    from ..train import job
    from ..train.builder_fit import check_builder

    # the command's name chose a network family (cli._command); before any run, what the data does not allow is refused
    net, note = fit_to_data(cast(NetworkParams, args.params), ds.info)
    if note:
        print(f"[{net.FAMILY}] {note}", flush=True)
    check_builder([net], ds.info)  # a user's network: loads, builds for these images, reads its hp
    return _said(job.train_run(ds, net, experiment=args.experiment, system_metrics=args.system_metrics))


def main_baseline(args: TrainArgs) -> int:
    """`baseline`: the majority class and a logistic regression, no network (train.job.baseline_run); printed alike."""
    ds = _dataset(args)
    from ..train import job

    p = cast(BaselineParams, args.params)  # the command's name chose (cli._command)
    return _said(job.baseline_run(ds, p, experiment=args.experiment, system_metrics=args.system_metrics))
