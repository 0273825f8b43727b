"""Training and evaluation of a Keras model on the splits: input pipeline, schedule, metrics.

No MLflow here: tracking comes in as Keras callbacks from the caller (see tracking.py).
"""

from __future__ import annotations

import functools
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np

from . import config as C
from .console import duration
from .data import NUM_CLASSES, Splits
from .models import build, build_augmenter

if TYPE_CHECKING:
    import tensorflow as tf

# TensorFlow is imported only by the tf.data input pipeline below, and only under the TensorFlow
# backend: under JAX or PyTorch, fit reads batches.ArrayBatches, so training needs no TensorFlow.


class DivergedError(RuntimeError):
    """Training produced a NaN or infinite loss."""


@dataclass
class FitResult:
    history: dict[str, list[float]]
    epochs_run: int
    wall_s: float
    images_per_s: float


class EpochPrinter(keras.callbacks.Callback):
    """One console line per epoch, instead of Keras' progress bar (fit runs with verbose=0):
    ``[cnn] epoch 3/8  loss 0.4123  val_accuracy 0.8712  35.2 s  ETA 2.9 min``. The ETA is the
    mean epoch time so far times the epochs left; early stopping may end sooner."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix
        self.durations: list[float] = []
        self._t0 = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.durations.append(time.perf_counter() - self._t0)
        logs = logs or {}
        total = self.params.get("epochs") or epoch + 1
        eta = sum(self.durations) / len(self.durations) * (total - epoch - 1)
        shown = "  ".join(f"{k} {logs[k]:.4f}" for k in (C.TRAIN_LOSS, C.VAL_ACC) if k in logs)
        print(f"{self.prefix} epoch {epoch + 1}/{total}  {shown}  {self.durations[-1]:.1f} s  ETA {duration(eta)}",
              flush=True)


def seed_everything(seed: int) -> None:
    keras.utils.set_random_seed(seed)  # python, numpy and the backend in one call


def resolve_precision(choice: str) -> str:
    """``auto``: the fastest precision that keeps the accuracy here. mixed_float16 where a GPU is
    visible (tensor cores); mixed_bfloat16 under TensorFlow on a CPU with bfloat16 instructions
    (oneDNN runs convolutions and matrix products in bfloat16: with fused batch norm the default
    cnn trains 1.6x faster than in float32 on AMX-BF16, Intel Sapphire Rapids and later, and 1.4x
    on AVX512-BF16 without AMX, AMD Zen 4; BENCHMARKS.md issue 14); float32 on other CPUs and
    backends, where neither has been measured to pay. XLA follows Keras' own ``auto``: on for
    GPUs, off on CPU."""
    if choice != "auto":
        return choice
    if gpu_visible():
        return "mixed_float16"
    native = keras.backend.backend() == "tensorflow" and bool(cpu_has_bfloat16())
    return "mixed_bfloat16" if native else "float32"


@functools.cache  # the hardware does not change within a process
def _cpu_flags() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def cpu_has_bfloat16() -> bool | None:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16); None where it
    cannot be told (no /proc/cpuinfo)."""
    flags = _cpu_flags()
    return None if flags is None else ("avx512_bf16" in flags or "amx_bf16" in flags)


def warn_if_slow(precision: str) -> None:
    """mixed_bfloat16 without bfloat16 hardware is emulated and slower than float32: say so, once."""
    if precision == "mixed_bfloat16" and cpu_has_bfloat16() is False and not gpu_visible():
        _warn_bfloat16_emulated()


@functools.cache  # once per process
def _warn_bfloat16_emulated() -> None:
    print("[fmnist] warning: precision=mixed_bfloat16 on a CPU without bfloat16 instructions (AVX512-BF16 or "
          "AMX) is emulated and slower than float32; pass precision=float32 (or auto) here", file=sys.stderr,
          flush=True)


def gpu_visible() -> bool:
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


@contextmanager
def precision_policy(name: str):
    """Build layers under Keras' dtype policy ``name``; the global policy is restored after."""
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(old)


def fresh_model(family: str, p: dict, *, fused: bool = True) -> tuple[keras.Model, str]:
    """``family``'s network for params ``p`` from a clean Keras session, its initial weights drawn
    from the seeded RNGs (not from what ran before), built under the precision it will train in;
    returns the model and that precision's name. ``fused``: batch norm by TensorFlow's fused
    kernel (models.FusedBatchNormalization); the logged model is rebuilt without it."""
    keras.utils.clear_session()
    precision = resolve_precision(p["precision"])
    warn_if_slow(precision)
    seed_everything(p["seed"])
    with precision_policy(precision):
        return build(family, p, fused=fused), precision


def pipeline_options() -> tf.data.Options:
    """Fixed tf.data parallelism. With autotuning on, epochs on 2 cores stalled at random
    (6.4 s or 10.2 s for the same epoch, same CPU seconds): its threads compete with the
    training step for the cores. A cast and a prefetch need no tuning."""
    import tensorflow as tf

    opts = tf.data.Options()
    opts.autotune.enabled = False
    return opts


def make_dataset(x, y, *, batch_size: int, shuffle: bool, seed: int, augmenter: keras.Layer | None = None):
    """uint8 arrays -> batched (float32 pixels, one-hot labels); augmentation runs per batch.

    One-hot labels let the loss smooth them (``label_smoothing``); accuracy reads them as usual.
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y.astype("int32")))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda a, b: (tf.cast(a, tf.float32), tf.one_hot(b, NUM_CLASSES)))
    if augmenter is not None:
        ds = ds.map(lambda a, b: (augmenter(a, training=True), b))
    return ds.prefetch(2).with_options(pipeline_options())


def datasets(s: Splits, p: dict):
    """The training and validation batches: tf.data under TensorFlow (make_dataset), numpy
    batches (batches.ArrayBatches) under any other backend, where TensorFlow may be absent."""
    augmenter = build_augmenter(p) if p["augment"] else None
    if keras.backend.backend() == "tensorflow":
        return (make_dataset(s.x_train, s.y_train, batch_size=p["batch_size"], shuffle=True, seed=p["seed"],
                             augmenter=augmenter),
                make_dataset(s.x_val, s.y_val, batch_size=1024, shuffle=False, seed=p["seed"]))
    from .batches import ArrayBatches

    return (ArrayBatches(s.x_train, s.y_train, batch_size=p["batch_size"], seed=p["seed"], augmenter=augmenter),
            ArrayBatches(s.x_val, s.y_val, batch_size=1024))


def learning_rate(p: dict, steps_per_epoch: int):
    """Adam's learning rate: constant (plateau reduces it from a callback) or a cosine decay
    to zero over all epochs, after ``warmup_epochs`` of linear warm-up from zero."""
    lr = p["learning_rate"]
    if p["lr_schedule"] != "cosine":
        return lr
    total = max(1, p["epochs"] * steps_per_epoch)
    warmup = min(int(round(p["warmup_epochs"] * steps_per_epoch)), total - 1)
    if not warmup:
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=total)
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=total - warmup, warmup_target=lr,
                                                  warmup_steps=warmup)


# Training steps per call of the compiled train function while `fit` runs under TensorFlow: the
# same steps, fewer trips through Python and the callbacks (1.09x per epoch of the default cnn on a
# 2-core CPU, bench_throughput's avx2 rows; weights bit-identical to one step per call, tested).
# Batch-level callbacks (TerminateOnNaN) see every 8th step, and Ctrl-C or SIGTERM take effect when
# a group of steps returns; epoch-level callbacks (logging, pruning, early stopping) are unchanged.
STEPS_PER_EXECUTION = 8


def default_steps_per_execution() -> int:
    """What `fit` uses: STEPS_PER_EXECUTION under TensorFlow; 1 under other backends (Keras'
    PyTorch trainer refuses more, and JAX's loops over the steps in Python, unmeasured)."""
    return STEPS_PER_EXECUTION if keras.backend.backend() == "tensorflow" else 1


def compile_model(model: keras.Model, p: dict, steps_per_epoch: int, *, steps_per_execution: int = 1) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate(p, steps_per_epoch)),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=p["label_smoothing"]),
        metrics=[C.TRAIN_ACC],
        steps_per_execution=steps_per_execution,
    )


def one_step_per_call(model: keras.Model) -> None:
    """After `fit`: predict and evaluate one batch per call again, and save the model so. Keras
    saves `steps_per_execution` in the compile config, so a model loaded for serving would
    otherwise predict in groups of 8 batches, a training setting it has no use for."""
    model.steps_per_execution = 1
    model.train_function = model.test_function = model.predict_function = None
    config = getattr(model, "_compile_config", None)
    if config is not None and "steps_per_execution" in config.config:
        config.config["steps_per_execution"] = 1


def standard_callbacks(p: dict) -> list[keras.callbacks.Callback]:
    mode = "min" if p["monitor"] == C.VAL_LOSS else "max"
    cbs: list[keras.callbacks.Callback] = [keras.callbacks.TerminateOnNaN()]
    if p["early_stopping_patience"]:
        cbs.append(
            keras.callbacks.EarlyStopping(
                monitor=p["monitor"], mode=mode, patience=p["early_stopping_patience"], restore_best_weights=True
            )
        )
    if p["lr_schedule"] == "plateau":
        cbs.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=p["monitor"], mode=mode, factor=p["lr_factor"], patience=p["lr_patience"], min_lr=1e-6
            )
        )
    return cbs


def fit(model: keras.Model, s: Splits, p: dict, callbacks=(), *,
        steps_per_execution: int | None = None) -> FitResult:
    """Compile and fit; early stopping restores the best weights. Raises DivergedError on NaN.
    The caller scores the model it keeps (see experiment.train_in_run). ``steps_per_execution``
    (default: :func:`default_steps_per_execution`) changes how the steps are called, not which steps run
    (benchmarks pin 1 for rows measured before)."""
    seed_everything(p["seed"])
    train, val = datasets(s, p)
    compile_model(model, p, steps_per_epoch=math.ceil(len(s.x_train) / p["batch_size"]),
                  steps_per_execution=steps_per_execution or default_steps_per_execution())
    t0 = time.perf_counter()
    try:
        hist = model.fit(
            train, validation_data=val, epochs=p["epochs"], verbose=0, shuffle=False,  # the datasets shuffle
            callbacks=[*standard_callbacks(p), *callbacks],
        )
    finally:
        one_step_per_call(model)
    wall = time.perf_counter() - t0
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    epochs_run = len(history.get(C.TRAIN_LOSS, []))
    bad = [i for i, v in enumerate(history.get(C.TRAIN_LOSS, [])) if not math.isfinite(v)]
    if bad:
        raise DivergedError(
            f"training diverged: the loss became NaN/inf in epoch {bad[0]}; "
            f"lower learning_rate (was {p['learning_rate']}) or raise l2"
        )
    return FitResult(history, epochs_run, wall, epochs_run * len(s.x_train) / max(wall, 1e-9))


def predict_proba(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return model.predict(x.astype("float32"), batch_size=1024, verbose=0)


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray, *, prefix: str) -> dict[str, float]:
    probs = predict_proba(model, x)
    return scores(y, probs, prefix=prefix)


def scores(y: np.ndarray, probs: np.ndarray, *, prefix: str) -> dict[str, float]:
    """Accuracy, cross-entropy loss and macro-F1 of class probabilities."""
    from sklearn.metrics import f1_score

    pred = probs.argmax(axis=1)
    eps = 1e-7
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], eps, 1.0))))
    return {
        f"{prefix}accuracy": float((pred == y).mean()),
        f"{prefix}loss": loss,
        f"{prefix}macro_f1": float(f1_score(y, pred, average="macro", labels=list(range(NUM_CLASSES)))),
    }


def per_class_accuracy(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    return np.array([(pred[y == c] == c).mean() if np.any(y == c) else np.nan for c in range(NUM_CLASSES)])
