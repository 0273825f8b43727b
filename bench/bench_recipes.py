"""Accuracy per epoch of CNN recipes (and a few MLP rows, `family`): what the default `cnn` recipe was
chosen from, and what made it cheaper on a CPU (BENCHMARKS.md, "Recipes: what each choice bought" and
"Training speed on a CPU").

    python bench/bench_recipes.py                      # every recipe below, two processes at a time
    python bench/bench_recipes.py --only baseline_8ep,four_blocks_8ep --parallel 1

Each recipe trains on the full training split (no early stopping), records validation accuracy
after every epoch and test accuracy once at the end. Accuracy per epoch does not depend on how
busy the machine is, so recipes run two at a time to halve the wall time; their wall times are
therefore not speeds (bench_throughput.py and bench_overhead.py measure those).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from common import emit, machine  # noqa: E402

# The rows up to the cpu2x ones were measured before fused batch norm, before `auto` meant bfloat16,
# before the cnn defaults pooled first and trained 9 epochs, and with one training step per call;
# BEFORE pins how they trained then, so that they rerun as measured.
BEFORE = {"precision": "float32", "fused_batch_norm": False, "pool_first": False, "epochs": 8,
          "steps_per_execution": 1}
PREVIOUS = {**BEFORE, "filters": "32,64,128", "label_smoothing": 0.0}  # the default before four blocks
FOUR = {**BEFORE, "filters": "32,64,128,256"}
RECIPES = {
    "baseline_8ep": {**PREVIOUS, "epochs": 8},
    "label_smoothing_8ep": {**PREVIOUS, "label_smoothing": 0.1, "epochs": 8},
    "ls_batch64_8ep": {**PREVIOUS, "label_smoothing": 0.1, "batch_size": 64, "epochs": 8},
    "ls_lr4e-3_warmup1_8ep": {**PREVIOUS, "label_smoothing": 0.1, "learning_rate": 0.004, "warmup_epochs": 1,
                              "epochs": 8},
    "four_blocks_8ep (the new default)": {**FOUR, "epochs": 8},
    "four_blocks_8ep_seed7": {**FOUR, "epochs": 8, "seed": 7},
    "four_blocks_dense256_8ep": {**FOUR, "dense_units": 256, "epochs": 8},
    "two_convs_16_32_64_8ep": {**BEFORE, "filters": "16,32,64", "convs_per_block": 2, "epochs": 8},
    "four_blocks_pool_first_10ep": {**FOUR, "pool_first": True, "epochs": 10},
    "16_64_128_256_pool_first_10ep": {**BEFORE, "filters": "16,64,128,256", "pool_first": True, "epochs": 10},
}
# Half the training time of the before recipe (8 epochs) at >= 93.0% test; run with --parallel 1, so that
# wall_s is a speed:
# python bench/bench_recipes.py --only "$(python bench/bench_recipes.py --list half)" --parallel 1
# FLIPS_NOW: the flips and flip-averaged answers of the default study's fixed recipe before it added 1-pixel shifts
FLIPS_NOW = {"augment": True, "aug_shift": 0.0, "aug_rotate": 0.0, "aug_zoom": 0.0, "tta_flip": True}
FLIPS_TTA = {**BEFORE, **FLIPS_NOW}
HALF = {
    "half:default_8ep (today's cnn)": BEFORE,
    "half:default_4ep": {**BEFORE, "epochs": 4},
    "half:flips_tta_4ep": {**FLIPS_TTA, "epochs": 4},
    "half:flips_tta_batch256_lr4e-3_4ep": {**FLIPS_TTA, "epochs": 4, "batch_size": 256, "learning_rate": 0.004},
}
# After fused batch norm (model.layers.FusedBatchNormalization) and `auto` = bfloat16 on AMX CPUs (the
# labels date from before `auto` also meant bfloat16 on AVX512-BF16 CPUs; kept, results and BENCHMARKS.md
# carry them); one at a time, so that wall_s is a speed:
# python bench/bench_recipes.py --only "$(python bench/bench_recipes.py --list cpu2x)" --parallel 1
ONE_STEP = {"steps_per_execution": 1}  # how the cpu2x rows trained (one step per call)
CPU2X = {
    "cpu2x:before (float32 + Keras batch norm)": BEFORE,
    "cpu2x:float32 + fused batch norm (a CPU without AMX)": {**ONE_STEP, "precision": "float32",
                                                             "pool_first": False, "epochs": 8},
    "cpu2x:auto (bfloat16 on AMX) + fused batch norm": {**ONE_STEP, "pool_first": False, "epochs": 8},
    "cpu2x:auto + fused batch norm (seed 7)": {**ONE_STEP, "pool_first": False, "epochs": 8, "seed": 7},
    "cpu2x:defaults now (auto + fused batch norm + pool_first; 9 epochs)": ONE_STEP,
}
# On a CPU without bfloat16 units (float32 there): today's defaults (8 steps per call), then
# cheaper networks; one at a time with the cpu2x:before row for the ratio
AVX2 = {
    "avx2:defaults now (8 steps per call)": {},
    "avx2:filters 32-64-128 (three blocks)": {"filters": "32,64,128"},
    "avx2:filters 32-64-128 (three blocks; seed 7)": {"filters": "32,64,128", "seed": 7},
    "avx2:filters 24-48-96-192": {"filters": "24,48,96,192"},
}
# On a CPU with AVX512-BF16 but no AMX (AMD Zen 4): today's defaults in float32 (what `auto`
# chose there before) and in bfloat16; one at a time with the cpu2x:before row for the ratio
BF16 = {"precision": "mixed_bfloat16"}
AVX512BF16 = {
    "avx512bf16:defaults in float32": {"precision": "float32"},
    "avx512bf16:defaults in bfloat16": BF16,
    "avx512bf16:defaults in bfloat16 (seed 7)": {**BF16, "seed": 7},
    "avx512bf16:bfloat16 8 epochs": {**BF16, "epochs": 8},
    "avx512bf16:bfloat16 8 epochs (seed 7)": {**BF16, "epochs": 8, "seed": 7},
    "avx512bf16:bfloat16 filters 32-64-128": {**BF16, "filters": "32,64,128"},
    "avx512bf16:bfloat16 filters 32-64-128 (seed 7)": {**BF16, "filters": "32,64,128", "seed": 7},
    "avx512bf16:mlp defaults in float32": {"family": "mlp", "precision": "float32"},
    "avx512bf16:mlp defaults in bfloat16": {"family": "mlp", **BF16},
}
# Today's defaults on whatever CPU runs them (`auto` picks the precision), for the ratio to cpu2x:before in
# one invocation on any machine: python bench/bench_recipes.py --only "cpu2x:before (float32 + Keras batch
# norm),$(python bench/bench_recipes.py --list now:)" --parallel 1
NOW = {
    "now:defaults": {},
    "now:defaults (seed 7)": {"seed": 7},
    "now:defaults in float32": {"precision": "float32"},
    "now:defaults (seed 11)": {"seed": 11},
    "now:12 epochs": {"epochs": 12},
    "now:12 epochs (seed 7)": {"epochs": 12, "seed": 7},
    "now:flips + flip-averaged answers": FLIPS_NOW,
    "now:flips + flip-averaged answers (seed 7)": {**FLIPS_NOW, "seed": 7},
    "now:flips + flip-averaged answers; 12 epochs": {**FLIPS_NOW, "epochs": 12},
    "now:flips + flip-averaged answers; 12 epochs (seed 7)": {**FLIPS_NOW, "epochs": 12, "seed": 7},
}
# The main job's levers: what a final retrain of the default study buys at about its budget, each
# one change from the study's recipe before (flips only, 12 epochs) at its enqueued point, `auto`
# precision; every row also reports answers averaged over 1-pixel shifts on top of the flips, and
# --probs keeps each row's answers for pairing and seed averages (--pair):
# python bench/bench_recipes.py --only "$(python bench/bench_recipes.py --list lever:)" --probs bench/out/levers
STUDY = {**FLIPS_NOW, "dropout": 0.3, "l2": 1e-4, "learning_rate": 0.002, "dense_units": 128}
LEVERS = {
    "lever:12 epochs (the final retrain before)": {**STUDY, "epochs": 12},
    "lever:12 epochs (seed 7)": {**STUDY, "epochs": 12, "seed": 7},
    "lever:20 epochs": {**STUDY, "epochs": 20},
    "lever:20 epochs (seed 7)": {**STUDY, "epochs": 20, "seed": 7},
    "lever:20 epochs; shifts of 1 pixel": {**STUDY, "epochs": 20, "aug_shift": 0.04},
    # weight averaging (ema) and SGD left the package; their rows run at 55dbc2b
    "lever:12 epochs; filters 48-96-192-384": {**STUDY, "epochs": 12, "filters": "48,96,192,384"},
    # shifts of one pixel paid at 20 epochs: how short a schedule keeps it, and two seeds averaged
    # (the final retrain's second seed is 43)
    "lever:12 epochs; shifts of 1 pixel": {**STUDY, "epochs": 12, "aug_shift": 0.04},
    "lever:12 epochs; shifts of 1 pixel (seed 43)": {**STUDY, "epochs": 12, "aug_shift": 0.04, "seed": 43},
    "lever:20 epochs; shifts of 1 pixel (seed 43)": {**STUDY, "epochs": 20, "aug_shift": 0.04, "seed": 43},
    "lever:20 epochs; shifts of 2 pixels": {**STUDY, "epochs": 20, "aug_shift": 0.08},
    # capacity where convolutions are cheap (7x7 and 3x3), on the kept recipe
    "lever:20 epochs; shifts of 1 pixel; filters 32-64-192-384": {**STUDY, "epochs": 20, "aug_shift": 0.04,
                                                                   "filters": "32,64,192,384"},
    "lever:20 epochs; shifts of 1 pixel; filters 48-96-192-384": {**STUDY, "epochs": 20, "aug_shift": 0.04,
                                                                   "filters": "48,96,192,384"},
    # the wider network within the main job's 4x: fewer epochs, and a second seed
    "lever:16 epochs; shifts of 1 pixel": {**STUDY, "epochs": 16, "aug_shift": 0.04},
    "lever:16 epochs; shifts of 1 pixel; filters 32-64-192-384": {**STUDY, "epochs": 16, "aug_shift": 0.04,
                                                                   "filters": "32,64,192,384"},
    "lever:16 epochs; shifts of 1 pixel; filters 32-64-192-384 (seed 43)": {
        **STUDY, "epochs": 16, "aug_shift": 0.04, "filters": "32,64,192,384", "seed": 43},
    "lever:20 epochs; shifts of 1 pixel; filters 32-64-192-384 (seed 43)": {
        **STUDY, "epochs": 20, "aug_shift": 0.04, "filters": "32,64,192,384", "seed": 43},
    # what more training images buy, on the same validation images: the learning curve's last step
    # (48,600 of the 54,000) says on validation what training on 59,400 (final val_fraction 0.01) may
    "lever:20 epochs; shifts of 1 pixel; 48600 images": {**STUDY, "epochs": 20, "aug_shift": 0.04,
                                                          "train_samples": 48600},
    "lever:20 epochs; shifts of 1 pixel; 48600 images (seed 43)": {
        **STUDY, "epochs": 20, "aug_shift": 0.04, "train_samples": 48600, "seed": 43},
}
# The long study's final retrain as experiments/cnn_long.yaml of 2026-11-25 trains it (its fixed recipe and the
# point its search picks, trial 2), pinned here so that rows rerun as measured when the file changes, on one
# shared split (seed 42's) for both seeds; each lever row is one change from it. Shifts fill with the
# background and take whole pixels, so aug_shift (k + 0.5) / 28 is the padded random crop of up to k pixels:
# python bench/bench_recipes.py --only "$(python bench/bench_recipes.py --list long:)" --probs bench/out/long
# python bench/bench_recipes.py --probs bench/out/long --levers "long:baseline"   # the table, trains nothing
LONG = {"filters": "32,64,128,256", "convs_per_block": 2, "pool_first": True, "batch_norm": True, "augment": True,
        "aug_shift": 0.08, "aug_rotate": 0.0, "aug_zoom": 0.0, "tta_flip": True, "precision": "mixed_bfloat16",
        "label_smoothing": 0.1, "warmup_epochs": 1, "dropout": 0.24679835610086082,
        "l2": 1.306673923805328e-06, "learning_rate": 0.0033226913649617076, "dense_units": 256, "epochs": 32,
        "split_seed": 42}
# Random erasing as published (aug_erase_shape: published; rows erase 0.5, erase 0.25, erase 0.5 + crops of up to
# 4 pixels) did not pay and left the package: `git checkout 8c16013` runs those rows.
LONG_LEVERS = {
    "long:baseline": {},
    "long:crops of up to 4 pixels": {"aug_shift": 4.5 / 28},
    "long:crops of up to 3 pixels": {"aug_shift": 3.5 / 28},
}
for name, change in LONG_LEVERS.items():  # seed 42, then seed 43 on the same split
    RECIPES[name] = {**LONG, **change, "seed": 42}
    RECIPES[f"{name} (seed 43)"] = {**LONG, **change, "seed": 43}
RECIPES["long:baseline (seed 44)"] = {**LONG, "seed": 44}  # a third network on the same split: what it adds
RECIPES.update(LEVERS)
RECIPES.update(CPU2X)
RECIPES.update(NOW)
RECIPES.update(AVX512BF16)
RECIPES.update(AVX2)
RECIPES.update(HALF)


def one(overrides: dict) -> dict:
    from fmnist_exp import data
    from fmnist_exp import params as P
    from fmnist_exp.metrics import VAL_ACC
    from fmnist_exp.model import networks
    from fmnist_exp.model.wrappers import as_served, with_shift_average
    from fmnist_exp.train import fit as F
    from fmnist_exp.train.evaluate import evaluate, predict_proba, scores

    overrides = dict(overrides)
    family = overrides.pop("family", "cnn")
    fused = overrides.pop("fused_batch_norm", True)  # False: Keras' own BatchNormalization, as before fused
    spe = overrides.pop("steps_per_execution", None)  # 1: as before the avx2 rows; None: as train.fit does
    p = P.network(family, {"early_stopping_patience": 0, **overrides})
    s = data.split(data.load(), val_fraction=p.val_fraction, seed=p.split_by(), train_samples=p.train_samples)
    model, precision = F.fresh_model(p, s.info, fused=fused)  # under the recipe's precision, as `cnn` builds it
    fit = F.fit(model, s, p, steps_per_execution=spe)
    if not networks.is_portable(model):  # as train.job: scored as logged, float32 and Keras' own layers
        model = networks.portable_copy(p, s.info, model)
    net, model = model, as_served(model, p, s.info)  # as train.job: scored as the logged model answers
    val_probs, test_probs = predict_proba(model, s.x_val), predict_proba(model, s.x_test)
    if os.environ.get("BENCH_PROBS"):  # the answers themselves, for paired comparisons and seed averages
        np.savez_compressed(os.environ["BENCH_PROBS"], val=val_probs, test=test_probs, y_val=s.y_val, y_test=s.y_test)
    multi_crop = {}
    if p.tta_flip and not p.tta_shift:  # what answers averaged over 1-pixel shifts too would add (10 passes)
        crops = with_shift_average(net, s.info, 1, flip=True)
        multi_crop = {f"{name}_accuracy_flips_shifts": round(evaluate(crops, x, y, prefix="m_")["m_accuracy"], 4)
                      for name, x, y in (("val", s.x_val, s.y_val), ("test", s.x_test, s.y_test))}
    return {"family": family, "overrides": overrides,
            "val_accuracy_per_epoch": [round(v, 4) for v in fit.history[VAL_ACC]],
            "test_accuracy": round(scores(s.y_test, test_probs, prefix="")["accuracy"], 4),
            "params": model.count_params(),
            "precision_used": precision, "fused_batch_norm": fused and family == "cnn",
            "steps_per_execution": spe or F.default_steps_per_execution(),
            "val_final_accuracy": round(scores(s.y_val, val_probs, prefix="")["accuracy"], 4),
            **multi_crop, "wall_s_shared": round(fit.wall_s)}


def probs_file(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder / (re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") + ".npz")


def pair(folder: Path, names: list[str]) -> dict:
    """Each kept recipe against the first on the same test images, and the mean answer of the rest."""
    from fmnist_exp.stats import compare

    kept = {n: np.load(probs_file(folder, n)) for n in names}
    y = kept[names[0]]["y_test"]
    first = kept[names[0]]["test"].argmax(1)
    out: dict = {"first": names[0]}
    for n in names[1:]:
        c = compare(y, kept[n]["test"].argmax(1), first)
        out[n] = {"test_accuracy": round(float((kept[n]["test"].argmax(1) == y).mean()), 4),
                  "minus_first": c.describe()}
    if len(names) > 2:
        mean = sum(kept[n]["test"] for n in names[1:]) / (len(names) - 1)
        val_mean = sum(kept[n]["val"] for n in names[1:]) / (len(names) - 1)
        c = compare(y, mean.argmax(1), first)
        same_split = all(np.array_equal(kept[n]["y_val"], kept[names[1]]["y_val"]) for n in names[2:])
        out["average of the others"] = {
            # another seed draws another validation split: the average has no validation set then
            "val_accuracy": round(float((val_mean.argmax(1) == kept[names[1]]["y_val"]).mean()), 4)
            if same_split else None,
            "test_accuracy": round(float((mean.argmax(1) == y).mean()), 4),
            "minus_first": c.describe()}
    return out


def levers(folder: Path, baseline: str) -> dict:
    """Each long: lever kept in ``folder`` (both seeds) against ``baseline`` on the same images: the gain in
    accuracy averaged over the two seeds, with one standard error over the images (each image's gain is the
    mean of its two seeds' right-minus-wrong changes, so an image both seeds move counts once), on validation
    (the shared split) and test; and the average of the two seeds' answers (what the long study registers)."""
    from fmnist_exp.stats import compare

    def both(name: str) -> list | None:
        files = [probs_file(folder, name), probs_file(folder, f"{name} (seed 43)")]
        return [np.load(f) for f in files] if all(f.exists() for f in files) else None

    base = both(baseline)
    if base is None:
        raise SystemExit(f"no answers of {baseline!r} for both seeds in {folder}")
    out: dict = {"baseline": baseline}
    for name in LONG_LEVERS:
        runs = both(name)
        if name == baseline or runs is None:
            continue
        row: dict = {}
        for part in ("val", "test"):
            y = base[0][f"y_{part}"]
            assert all(np.array_equal(r[f"y_{part}"], y) for r in runs + base), "the seeds must share one split"
            right = [(r[part].argmax(1) == y).astype(float) for r in runs]
            before = [(r[part].argmax(1) == y).astype(float) for r in base]
            per_image = (right[0] - before[0] + right[1] - before[1]) / 2
            se = per_image.std(ddof=1) / np.sqrt(len(y))
            row[part] = {"seeds": [round(float(a.mean()), 4) for a in right],
                         "baseline_seeds": [round(float(b.mean()), 4) for b in before],
                         "gain_points": round(100 * float(per_image.mean()), 2), "se_points": round(100 * se, 2)}
            mean, mean_before = (runs[0][part] + runs[1][part]) / 2, (base[0][part] + base[1][part]) / 2
            row[part]["average"] = {"accuracy": round(float((mean.argmax(1) == y).mean()), 4),
                                    "baseline": round(float((mean_before.argmax(1) == y).mean()), 4),
                                    "against_baseline": compare(y, mean.argmax(1), mean_before.argmax(1)).describe()}
        row["kept"] = bool(row["val"]["gain_points"] > row["val"]["se_points"])  # wins by more than one standard error
        out[name] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", default="", help="comma-separated recipe names")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--list", default=None, help="print the recipe names starting with this prefix and exit")
    ap.add_argument("--probs", default="", help="folder to keep each recipe's validation and test answers in")
    ap.add_argument("--pair", default="", help="with --probs: compare the kept answers of these recipes (A,B,..) "
                    "paired with the first, and the average of the others (a seed ensemble); trains nothing")
    ap.add_argument("--levers", default="", help="with --probs: every long: lever kept there against this "
                    "baseline row, both seeds, on validation and test; trains nothing")
    args = ap.parse_args()
    if args.levers:
        emit(levers(Path(args.probs), args.levers))
        return
    if args.pair:
        emit(pair(Path(args.probs), args.pair.split(",")))
        return
    if args.list is not None:
        print(",".join(n for n in RECIPES if n.startswith(args.list)))
        return
    if args.one:
        print(json.dumps(one(json.loads(args.one))))
        return
    names = args.only.split(",") if args.only else list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:  # before any training: a misspelt name would otherwise end the run after the first recipes
        ap.error(f"unknown recipes {unknown}; --list '' prints every name")

    def run(name: str) -> tuple[str, dict]:
        env = {**os.environ, "BENCH_PROBS": str(probs_file(Path(args.probs), name))} if args.probs else None
        proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(RECIPES[name])],
                              capture_output=True, text=True, env=env)
        if proc.returncode:
            return name, {"error": proc.stderr[-500:]}
        print(f"# {name}: done", file=sys.stderr, flush=True)
        return name, json.loads(proc.stdout.strip().splitlines()[-1])

    with ThreadPoolExecutor(args.parallel) as pool:
        results = dict(pool.map(run, names))
    emit({"machine": machine(), "parallel": args.parallel, "recipes": results})


if __name__ == "__main__":
    main()
