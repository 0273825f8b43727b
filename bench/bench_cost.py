"""What a model costs to serve, side by side in one invocation: the plain `cnn` recipe, the model a
study file registers (its fixed architecture, flip-averaged answers, an ensemble of its final seeds),
and any logged Keras model.

    python bench/bench_cost.py [--studies cnn,cnn_long] [--model NAME=URI ...] [--rounds 5]

Parameters, weights' size and multiply-accumulates per image do not depend on training, so the
study files' architectures are built untrained (the study's searched values at the study file's
first enqueued point); the times are fmnist_exp.model.cost's (warm in-process calls at batch 1 and
256, median and IQR), measured for every model in each round, one after the other, and reported as
the median over rounds with each model's ratio to the plain `cnn` recipe measured in the same round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine  # noqa: E402

RUN_ONLY = ("epochs", "train_samples", "seed")


def study_model(name: str):
    """The servable model study ``name`` registers, untrained: its architecture, flip average, ensemble."""
    from fmnist_exp import params as P
    from fmnist_exp.data import FASHION_MNIST
    from fmnist_exp.model import networks
    from fmnist_exp.model.wrappers import as_served, average
    from fmnist_exp.study.spec import load

    spec = load(name, None)
    point = (spec.enqueue or [{}])[0]
    student = spec.final.student  # a distilled study registers its student (spec.check: empty without distill)
    values = {k: v for k, v in {**spec.fixed, **point, **spec.final.params, **student}.items() if k not in RUN_ONLY}
    p = networks.fit_to_data(P.network(spec.family, values), FASHION_MNIST)[0]  # the widths it trains, as logged

    def one():
        net = networks.build(p, FASHION_MNIST)
        return as_served(net, p, FASHION_MNIST)

    averaged = spec.final.ensemble and not spec.final.distill  # a distilled study registers one network
    model = average([one() for _ in range(spec.final.seeds)], FASHION_MNIST) if averaged else one()
    return model, networks.summary_tags(p)['arch'] + (
        ", tta_flip" if p.tta_flip else "") + (f", tta_shift {p.tta_shift}" if p.tta_shift else "") + (
        f", ensemble of {spec.final.seeds}" if averaged else "") + (", distilled" if spec.final.distill else "") + (
        "".join(f", student {k}={v}" for k, v in sorted(student.items())))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", default="cnn,cnn_long", help="study files whose registered model to cost")
    ap.add_argument("--model", action="append", default=[], help="NAME=URI of a logged Keras model (repeatable)")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()

    import mlflow

    from fmnist_exp import params as P
    from fmnist_exp.data import FASHION_MNIST
    from fmnist_exp.model import cost, networks

    models = {"cnn (plain recipe)": (networks.build(P.network("cnn"), FASHION_MNIST), "cnn defaults")}
    for name in filter(None, a.studies.split(",")):
        models[f"study {name}"] = study_model(name)
    for spec in a.model:
        label, uri = spec.split("=", 1)
        models[label] = (mlflow.keras.load_model(uri), uri)
    rounds: dict[str, list[cost.Cost]] = {k: [] for k in models}
    for r in range(a.rounds):
        for label, (model, _) in models.items():
            rounds[label].append(cost.measure(model, seed=r))
            print(f"round {r}: {label}: {rounds[label][-1]}", file=sys.stderr, flush=True)

    def median(label: str, field: str) -> float:
        return statistics.median(getattr(c, field) for c in rounds[label])

    def ratio(label: str, field: str) -> float:
        base = "cnn (plain recipe)"
        return statistics.median(getattr(c, field) / getattr(b, field) for c, b in zip(rounds[label], rounds[base],
                                                                                        strict=True))

    rows = []
    for label, (_, what) in models.items():
        first = rounds[label][0]
        rows.append({"model": label, "what": what, "params": first.params, "size_mb": round(first.size_mb, 3),
                     "mmacs_per_image": round(first.mmacs_per_image, 3),
                     "ms_per_image_b1": round(median(label, "ms_per_image_b1"), 3),
                     "ms_per_image_b1_iqr": round(median(label, "ms_per_image_b1_iqr"), 3),
                     "ms_per_image_b256": round(median(label, "ms_per_image_b256"), 4),
                     "ms_per_image_b256_iqr": round(median(label, "ms_per_image_b256_iqr"), 4),
                     "b1_ratio_to_cnn": round(ratio(label, "ms_per_image_b1"), 2),
                     "b256_ratio_to_cnn": round(ratio(label, "ms_per_image_b256"), 2)})
    emit({"machine": machine(), "load_avg": os.getloadavg(), "rounds": a.rounds, "batch": cost.BATCH, "rows": rows})


if __name__ == "__main__":
    main()
