"""The default recipe on small datasets against the recipe before a mend (by default ``bn_settle`` false): does
the network learn what a few hundred images allow, and does the mend leave what it cannot change alone?

    python bench/bench_small_data.py [--seeds 1,2,3,4,5,6] [--data patches,scenes,digits]
    python bench/bench_small_data.py --before "{epochs: 9}"     # the epochs that follow the images, against 9

Each dataset is trained by the default network of ``--family`` (its defaults, ``--data`` and ``--seed`` only;
no MLflow: train.fit as every run calls it) once per seed with ``--before``'s values (how runs before the mend
trained) and with ``--after``'s (default: none, today's defaults), side by side in one process, the two sides
alternated. Reported per dataset: each side's test
accuracy per seed, the number of seeds at chance (an exact binomial test of right answers against the
majority class's share, one-sided, p >= 0.05), and the two sides paired on the same test images over all
seeds (difference, exact McNemar p, b/c).

``patches``: 32x32 colour JPEG patches of scikit-learn's two sample photographs, 400 training and 100 test
images per photograph (tests/test_own_data.py photo_patches, seed 3). ``scenes``: bench_own_data.py's four
classes (the top and bottom half of each photograph, 300 each, held out by digest). ``digits``: scikit-learn's
8x8 digits.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "tests")]


def make(name: str, root: Path) -> str:
    if name == "digits":
        return "digits"
    from sklearn.datasets import load_sample_images

    if name == "scenes":
        from bench_own_data import scenes

        return str(scenes(root / "scenes"))
    from test_own_data import photo_patches

    return str(photo_patches(root / "patches", load_sample_images().images))


def train(data: str, family: str, seed: int, side: str, values: dict) -> dict:
    from scipy.stats import binomtest

    from fmnist_exp import params as P
    from fmnist_exp.data import load_dataset, split
    from fmnist_exp.model import networks
    from fmnist_exp.train import fit as F
    from fmnist_exp.train.evaluate import predict_proba

    ds = load_dataset(data)
    p, _ = networks.fit_to_data(P.network(family, {**values, "data": data, "seed": seed}), ds.info)
    s = split(ds, val_fraction=p.val_fraction, seed=p.split_by(), train_samples=p.train_samples)
    p = P.with_epochs(p, len(s.y_train))[0]  # as a run makes them concrete
    model, _ = F.fresh_model(p, ds.info)
    result = F.fit(model, s, p)
    right = predict_proba(model, s.x_test).argmax(1) == s.y_test
    majority = np.bincount(s.y_train).max() / len(s.y_train)
    return {"seed": seed, "side": side, "test_acc": float(right.mean()), "epochs": p.epochs,
            "epochs_run": result.epochs_run,
            "steps_per_epoch": -(-len(s.x_train) // p.batch_size), "fit_s": round(result.wall_s, 1),
            "at_chance": bool(binomtest(int(right.sum()), len(right), majority, alternative="greater").pvalue >= 0.05),
            "right": right}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1,2,3,4,5,6")
    ap.add_argument("--data", default="patches,scenes,digits")
    ap.add_argument("--family", default="cnn")
    ap.add_argument("--before", default="{bn_settle: false}", help="the recipe before: values over the defaults")
    ap.add_argument("--after", default="{}", help="the recipe after (default: the defaults)")
    args = ap.parse_args()
    from fmnist_exp import stats
    from fmnist_exp.params.table import load_yaml

    sides = {"before": load_yaml(args.before) or {}, "after": load_yaml(args.after) or {}}

    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.data.split(","):
            data, t0 = make(name, Path(tmp)), time.time()
            rows = []
            for i, seed in enumerate(seeds):  # alternated: which side goes first changes by seed
                for which in (("before", "after") if i % 2 == 0 else ("after", "before")):
                    rows.append(train(data, args.family, seed, which, sides[which]))
            side = {b: sorted((r for r in rows if r["side"] == b), key=lambda r: r["seed"]) for b in sides}
            right = {b: np.concatenate([r["right"] for r in side[b]]) for b in side}
            after, before = right["after"], right["before"]
            b_only, c_only = int((after & ~before).sum()), int((before & ~after).sum())
            print(json.dumps({
                "data": name, "family": args.family, "steps_per_epoch": rows[0]["steps_per_epoch"],
                **{b: {"values": sides[b], "test_acc": [round(r["test_acc"], 4) for r in side[b]],
                       "mean": round(float(right[b].mean()), 4), "at_chance": sum(r["at_chance"] for r in side[b]),
                       "epochs": side[b][0]["epochs"], "epochs_run": [r["epochs_run"] for r in side[b]],
                       "fit_s": [r["fit_s"] for r in side[b]]} for b in side},
                "paired": {"diff_points": round(100 * float(right["after"].mean() - right["before"].mean()), 2),
                           "mcnemar_p": stats.mcnemar_exact(b_only, c_only), "b_c": [b_only, c_only]},
                "seeds": seeds, "wall_s": round(time.time() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
