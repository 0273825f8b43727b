"""What each network of a registered seed ensemble adds: its members scored again, one by one and as the
average of the first k, each average paired with the one before it and the whole with the best-validated
member, on the validation images no member trained on (all of one shared split) and on the test images.

    python bench/bench_ensemble_size.py --store DIR [--model fmnist-classifier@champion]

DIR is a store kept by ``bench_tune.py --keep DIR`` (or any folder holding an ``mlflow.db``); the members are
the runs the registered version's source run names (tag ``ensemble_members``), in seed order. Inference only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="a folder with the study's mlflow.db")
    ap.add_argument("--model", default="fmnist-classifier@champion", help="NAME@ALIAS or NAME/VERSION")
    a = ap.parse_args()

    import mlflow
    import numpy as np
    from mlflow.tracking import MlflowClient

    from fmnist_exp import data as D
    from fmnist_exp import params as P
    from fmnist_exp.commands.reproduce import recorded_data
    from fmnist_exp.stats import compare
    from fmnist_exp.study.ensemble import MEMBERS_TAG, held_out_by_all
    from fmnist_exp.train.evaluate import predict_proba

    mlflow.set_tracking_uri(f"sqlite:///{Path(a.store).resolve()}/mlflow.db")
    client = MlflowClient()
    name, _, which = a.model.replace("/", "@").partition("@")
    version = client.get_model_version_by_alias(name, which) if not which.isdigit() else \
        client.get_model_version(name, which)
    members = [client.get_run(rid) for rid in client.get_run(version.run_id).data.tags[MEMBERS_TAG].split(",")]
    trained = [P.trained(m.data.params["family"], m.data.params) for m in members]  # as reproduce reads them
    seeds, split_seeds = [p.seed for p in trained], [p.split_by() for p in trained]
    ds = D.load_dataset(recorded_data(members[0].data.params), None)
    x_val, y_val = held_out_by_all(ds, trained[0].val_fraction, split_seeds)
    parts = {"val": (x_val, y_val), "test": (ds.x_test, ds.y_test)}
    probs = []
    for m in members:
        model = mlflow.keras.load_model(m.data.tags["model_uri"])
        probs.append({part: predict_proba(model, x) for part, (x, _) in parts.items()})
        print(f"scored {m.info.run_name}", file=sys.stderr, flush=True)

    def accuracy(p: np.ndarray, y: np.ndarray) -> float:
        return round(100 * float((p.argmax(1) == y).mean()), 2)

    best = int(np.argmax([accuracy(p["val"], y_val) for p in probs]))
    out: dict = {"machine": machine(), "model": a.model, "version": version.version, "seeds": seeds,
                 "split_seeds": split_seeds, "best_validation_seed": seeds[best]}
    for part, (_, y) in parts.items():
        averages = [sum(p[part] for p in probs[:k]) / k for k in range(1, len(probs) + 1)]
        out[part] = {
            "images": len(y),
            "each": {str(s): accuracy(p[part], y) for s, p in zip(seeds, probs, strict=True)},
            "average of the first k": {str(k + 1): accuracy(avg, y) for k, avg in enumerate(averages)},
            "k against k - 1": {str(k + 1): compare(y, averages[k].argmax(1), averages[k - 1].argmax(1)).describe()
                                for k in range(1, len(averages))},
            "all against the best-validated seed": compare(y, averages[-1].argmax(1),
                                                           probs[best][part].argmax(1)).describe()}
    emit(out)


if __name__ == "__main__":
    main()
