"""GPU figures: the default `cnn` and the long study's final recipe, trained on the GPU Keras sees.

    KERAS_BACKEND=jax python bench/bench_gpu.py [--runs default_mixed,default_fp32,long] [--data_dir D]

Uses the project's own parameter defaults, model builders, augmentation layers, learning-rate
schedule, loss and scoring (`fmnist_exp.params`, `.model`, `.train.fit`, `.train.evaluate`); only the input
pipeline differs:
arrays go to `fit()` and augmentation runs as the first layers of the training graph, instead of
tf.data, so the script runs on any Keras 3 backend. The GPU machines lent to this project carry
JAX and PyTorch and no network, and TensorFlow's CUDA wheels (~3 GB) cannot be carried there.

Prints one JSON object at the end (stdout); each run's result also goes to stderr as it ends. Test
accuracy is scored after every epoch (outside the timed training) to give time-to-accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from common import machine  # noqa: E402


def long_recipe() -> dict:
    """experiments/cnn_long.yaml's fixed parameters + its enqueued point + its final budget (one seed)."""
    import yaml

    spec = yaml.safe_load((ROOT / "experiments" / "cnn_long.yaml").read_text())
    # seeds and ensemble: how the study retrains and what it registers, not parameters of one run
    final = {k: v for k, v in spec["final"].items() if k not in ("seeds", "ensemble")}
    return {**spec["fixed"], **spec["enqueue"][0], **final}


RUNS = {
    "default_mixed": lambda: {"precision": "mixed_float16"},
    "default_fp32": lambda: {"precision": "float32"},
    "long": lambda: {**long_recipe(), "precision": "auto"},
}


class EpochClock:
    """Per-epoch training seconds, and test/val accuracy scored after each epoch (not timed)."""

    def __init__(self, model, splits):
        import keras

        from fmnist_exp.train.evaluate import predict_proba

        clock = self

        class _CB(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                clock.t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                clock.epoch_s.append(time.perf_counter() - clock.t0)
                for name, x, y in (("test", splits.x_test, splits.y_test), ("val", splits.x_val, splits.y_val)):
                    acc = float((predict_proba(model, x).argmax(1) == y).mean())
                    clock.acc.setdefault(name, []).append(round(acc, 4))
                print(f"[gpu] epoch {epoch + 1}: {clock.epoch_s[-1]:.1f} s, test {clock.acc['test'][-1]:.4f}",
                      file=sys.stderr, flush=True)

        self.t0 = 0.0
        self.epoch_s: list[float] = []
        self.acc: dict[str, list[float]] = {}
        self.callback = _CB()


def one(name: str, overrides: dict, splits_for) -> dict:
    import keras

    from fmnist_exp import params as P
    from fmnist_exp.model.augment import build_augmenter
    from fmnist_exp.model.networks import build, fit_to_data
    from fmnist_exp.train.evaluate import predict_proba, scores
    from fmnist_exp.train.fit import compile_model, seed_everything
    from fmnist_exp.train.precision import precision_policy, resolve_precision

    p = P.network("cnn", overrides)
    s = splits_for(p)
    p = fit_to_data(p, s.info)[0]  # filters not given: the default widths, as the runs log them
    p = P.with_epochs(p, len(s.y_train))[0]  # epochs not given: as a run makes them concrete
    precision = resolve_precision(p.precision)
    seed_everything(p.seed)
    with precision_policy(precision):
        model = build(p, s.info)
        inp = keras.Input(shape=s.x_train.shape[1:], dtype="float32")
        h = build_augmenter(p, s.info)(inp) if p.augment else inp
        trainer = keras.Model(inp, model(h))
    steps = -(-len(s.x_train) // p.batch_size)
    compile_model(trainer, p, steps_per_epoch=steps)
    clock = EpochClock(model, s)
    y1h = np.eye(s.info.num_classes, dtype="float32")[s.y_train]
    t0 = time.perf_counter()
    trainer.fit(s.x_train.astype("float32"), y1h, batch_size=p.batch_size, epochs=p.epochs, shuffle=True,
                verbose=0, callbacks=[clock.callback])
    wall = time.perf_counter() - t0
    test = scores(s.y_test, predict_proba(model, s.x_test), prefix="test_")
    train_s = sum(clock.epoch_s)
    steady = float(np.median(clock.epoch_s[1:])) if len(clock.epoch_s) > 1 else clock.epoch_s[0]
    cum = np.cumsum(clock.epoch_s)
    first_93 = next((i for i, a in enumerate(clock.acc["test"]) if a >= 0.93), None)
    flat = p.flat()  # widths as "32,64,128,256", as the runs log them
    return {
        "run": name, "precision": precision, "backend": keras.backend.backend(),
        "params": {k: flat[k] for k in ("filters", "convs_per_block", "pool_first", "dense_units", "dropout", "l2",
                                        "learning_rate", "batch_size", "epochs", "augment", "label_smoothing",
                                        "warmup_epochs", "train_samples")},
        "train_images": len(s.x_train), "model_params": int(model.count_params()),
        "test_accuracy": round(test["test_accuracy"], 4), "test_macro_f1": round(test["test_macro_f1"], 4),
        "train_s": round(train_s, 1), "fit_wall_s": round(wall, 1), "first_epoch_s": round(clock.epoch_s[0], 2),
        "steady_epoch_s": round(steady, 2), "steady_images_per_s": round(len(s.x_train) / steady),
        "s_to_93_test": round(float(cum[first_93]), 1) if first_93 is not None else None,
        "epoch_to_93_test": first_93 + 1 if first_93 is not None else None,
        "test_acc_per_epoch": clock.acc["test"], "val_acc_per_epoch": clock.acc["val"],
    }


def device_name() -> str:
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return str(jax.devices()[0].device_kind)
    if keras.backend.backend() == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus else "cpu"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma list of {', '.join(RUNS)}")
    ap.add_argument("--data_dir", default=None)
    ap.add_argument("--smoke", action="store_true", help="2 epochs on 2,000 images: checks the script, not a figure")
    args = ap.parse_args()
    names = [r for r in args.runs.split(",") if r]
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        ap.error(f"unknown runs {unknown}; choose from {sorted(RUNS)}")

    from fmnist_exp import data

    ds = data.load(args.data_dir)

    def splits_for(p):
        return data.split(ds, val_fraction=p.val_fraction, seed=p.seed, train_samples=p.train_samples)

    results = []
    for name in names:
        overrides = {**RUNS[name](), **({"epochs": 2, "train_samples": 2000} if args.smoke else {})}
        r = one(name, overrides, splits_for)
        print(json.dumps(r), file=sys.stderr, flush=True)  # each run as it ends, in case a later one is cut off
        results.append(r)
    print(json.dumps({"machine": {**machine(), "device": device_name()}, "data_source": ds.source,
                      "runs": results}, indent=2))


if __name__ == "__main__":
    main()
