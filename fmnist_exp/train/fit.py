"""Training a Keras model on the splits: seeding, the schedule, callbacks and `fit`.

No MLflow here: tracking comes in as Keras callbacks from the caller (train.tracking).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from .. import stats
from ..console import duration
from ..data import DatasetInfo, Splits
from ..metrics import TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS
from ..model.hyperparameters import Draw, HyperParameters
from ..model.networks import built
from ..params import FitParams, NetworkParams, with_epochs
from .inputs import datasets
from .precision import precision_policy, resolve_precision, warn_if_slow


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
        shown = "  ".join(f"{k} {logs[k]:.4f}" for k in (TRAIN_LOSS, VAL_ACC) if k in logs)
        print(f"{self.prefix} epoch {epoch + 1}/{total}  {shown}  {self.durations[-1]:.1f} s  ETA {duration(eta)}",
              flush=True)


def seed_everything(seed: int) -> None:
    keras.utils.set_random_seed(seed)  # python, numpy and the backend in one call


def fresh_built(p: NetworkParams, info: DatasetInfo, *, fused: bool = True, draw: Draw | None = None
                ) -> tuple[keras.Model, HyperParameters, str]:
    """The network ``p`` describes for ``info``'s images (model.networks.build: its builder, a trial's ``draw``
    suggesting what it defines), from a clean Keras session, its initial weights drawn from the seeded RNGs (not
    from what ran before), built under the precision it will train in; returns the model, the ``hp`` its builder
    read and that precision's name. ``fused``: batch norm by TensorFlow's fused kernel where the builder asks
    (model.layers.FusedBatchNormalization); the logged model is a copy with Keras' own (networks.portable_copy)."""
    keras.utils.clear_session()  # collects: cheap where study/objective.py freeze_survivors froze what outlives a trial
    precision = resolve_precision(p.precision)
    warn_if_slow(precision)
    seed_everything(p.seed)
    with precision_policy(precision):
        model, hp = built(p, info, fused=fused, draw=draw)
    return model, hp, precision


def fresh_model(p: NetworkParams, info: DatasetInfo, *, fused: bool = True) -> tuple[keras.Model, str]:
    """:func:`fresh_built`'s model and precision."""
    model, _, precision = fresh_built(p, info, fused=fused)
    return model, precision


def learning_rate(p: FitParams, steps_per_epoch: int):
    """The optimizer's learning rate: a cosine decay from ``learning_rate`` to zero over all epochs, after
    ``warmup_epochs`` of linear warm-up from zero."""
    lr = p.learning_rate
    assert p.epochs is not None, "epochs made concrete first (params.with_epochs)"
    total = max(1, p.epochs * steps_per_epoch)
    warmup = min(int(round(p.warmup_epochs * steps_per_epoch)), total - 1)
    if not warmup:
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=total)
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=total - warmup, warmup_target=lr,
                                                  warmup_steps=warmup)


# Training steps per call of the compiled train function while `fit` runs under TensorFlow: the
# same steps, fewer trips through Python and the callbacks (BENCHMARKS.md, "Training speed on a
# CPU"; weights bit-identical to one step per call, tested).
# Batch-level callbacks (TerminateOnNaN) see every 8th step, and Ctrl-C or SIGTERM take effect when
# a group of steps returns; epoch-level callbacks (logging, pruning, early stopping) are unchanged.
STEPS_PER_EXECUTION = 8


def default_steps_per_execution() -> int:
    """What `fit` uses: STEPS_PER_EXECUTION under TensorFlow; 1 under other backends (Keras'
    PyTorch trainer refuses more, and JAX's loops over the steps in Python, unmeasured)."""
    return STEPS_PER_EXECUTION if keras.backend.backend() == "tensorflow" else 1


def optimizer(p: FitParams, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    return keras.optimizers.Adam(learning_rate=learning_rate(p, steps_per_epoch))


# The share of its starting statistics (mean 0, variance 1) a batch-norm layer may still hold after one epoch
# (``bn_settle``). With momentum 0.9 and the 6 steps an epoch of 720 images takes, it held 53% after the first
# epoch and 4% after the fifth: validation read a network normalised by numbers it never computed, sat at
# chance while the training loss fell, and early stopping kept the first epoch's weights (BENCHMARKS.md,
# 'Your own data'). The bound passes 0.9 (the cnn family's) at 66 steps an epoch and Keras' default 0.99 at 688.
SETTLED = 1e-3


@contextlib.contextmanager
def settled_batch_norm(model: keras.Model, steps_per_epoch: int, on: bool = True) -> Iterator[None]:
    """While training (the train function is traced within): each batch-norm layer of ``model``, nested ones
    included, at most at the momentum that leaves SETTLED of its starting statistics after ``steps_per_epoch``
    steps; their own momenta back afterwards, so the trained model saves what its builder gave it."""
    bound = SETTLED ** (1 / max(1, steps_per_epoch))
    layers = [x for x in model._flatten_layers(include_self=False) if isinstance(x, keras.layers.BatchNormalization)]
    own = [x.momentum for x in layers]
    if on:
        for layer in layers:
            layer.momentum = min(layer.momentum, bound)
        model.train_function = None  # traced anew with these momenta (a second fit may bring another bound)
    try:
        yield
    finally:
        for layer, momentum in zip(layers, own, strict=True):
            layer.momentum = momentum
        if on:
            model.train_function = None


def compile_model(model: keras.Model, p: FitParams, steps_per_epoch: int, *, steps_per_execution: int = 1,
                  from_logits: bool = False) -> None:
    model.compile(
        optimizer=optimizer(p, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=p.label_smoothing, from_logits=from_logits),
        metrics=[TRAIN_ACC],
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


class EarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' early stopping, but an epoch whose validation accuracy is not above chance (not above the largest
    class's share of the validation labels ``y_val`` by a one-sided exact binomial test at 0.05) while the training
    loss still falls does not count against patience: the network is learning and validation cannot see it yet
    (batch-norm statistics that have not settled read chance: BENCHMARKS.md, 'Your own data'), so patience counts
    from the first epoch it can. Above chance it is Keras' own, decision for decision."""

    def __init__(self, *, y_val: np.ndarray | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.n_val = 0 if y_val is None else len(y_val)
        self.share = float(np.bincount(y_val).max() / len(y_val)) if self.n_val and y_val is not None else 1.0
        self.lowest_loss = math.inf

    def at_chance(self, accuracy: float) -> bool:
        return self.n_val > 0 and stats.chance_of(int(round(accuracy * self.n_val)), self.n_val,
                                                  self.share).at_chance(stats.CHANCE_ALPHA)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        loss, stopping_before = logs.get(TRAIN_LOSS), self.model.stop_training
        falling = loss is not None and loss < self.lowest_loss
        self.lowest_loss = min(self.lowest_loss, loss if loss is not None else math.inf)
        super().on_epoch_end(epoch, logs)
        if falling and VAL_ACC in logs and self.at_chance(logs[VAL_ACC]):
            self.wait = 0  # an epoch validation cannot see yet does not count against patience
            if self.model.stop_training and not stopping_before:
                self.model.stop_training, self.stopped_epoch = False, 0


def standard_callbacks(p: FitParams, y_val: np.ndarray | None = None) -> list[keras.callbacks.Callback]:
    """The recipe's callbacks; ``y_val``: the validation labels, against whose chance early stopping does not end a
    run whose training loss still falls (:class:`EarlyStopping`)."""
    mode = "min" if p.monitor == VAL_LOSS else "max"
    cbs: list[keras.callbacks.Callback] = [keras.callbacks.TerminateOnNaN()]
    if p.early_stopping_patience:
        cbs.append(EarlyStopping(monitor=p.monitor, mode=mode, patience=p.early_stopping_patience,
                                 restore_best_weights=True, y_val=y_val))
    return cbs


def fit(model: keras.Model, s: Splits, p: FitParams, callbacks=(), *,
        steps_per_execution: int | None = None, targets: np.ndarray | None = None) -> FitResult:
    """Compile and fit; early stopping restores the best weights. Raises DivergedError on NaN.
    The caller scores the model it keeps (see train.job.train_in_run). ``steps_per_execution``
    (default: :func:`default_steps_per_execution`) changes how the steps are called, not which steps run
    (benchmarks pin 1 for rows measured before). ``targets``: class probabilities the training
    images are fitted to instead of their labels (distillation: train.distill)."""
    p = with_epochs(p, len(s.x_train))[0]  # a caller's recipe with none given (a run has made them concrete)
    assert p.epochs is not None
    # the training's time (train_wall_s) from here: its input pipeline and compile are training, as
    # Keras' own fit(x, y) builds its pipeline inside (a tenth of a second of a digits trial)
    t0 = time.perf_counter()
    seed_everything(p.seed)
    train, val = datasets(s, p, targets)
    steps = math.ceil(len(s.x_train) / p.batch_size)
    compile_model(model, p, steps_per_epoch=steps,
                  steps_per_execution=steps_per_execution or default_steps_per_execution())
    try:
        with settled_batch_norm(model, steps, on=p.bn_settle):
            hist = model.fit(
                train, validation_data=val, epochs=p.epochs, verbose=0, shuffle=False,  # the datasets shuffle
                callbacks=[*standard_callbacks(p, s.y_val), *callbacks],
            )
    finally:
        one_step_per_call(model)
    wall = time.perf_counter() - t0
    return fit_result(hist.history, len(s.x_train), wall, f"; lower learning_rate (was {p.learning_rate}) or raise l2")


def fit_result(history: dict, images: int, wall: float, advice: str = "") -> FitResult:
    """What a `fit` of ``images`` training images per epoch did, from its History's ``history``; raises
    DivergedError (with ``advice``) where the loss became NaN or infinite."""
    history = {k: [float(v) for v in vals] for k, vals in history.items()}
    epochs_run = len(history.get(TRAIN_LOSS, []))
    bad = [i for i, v in enumerate(history.get(TRAIN_LOSS, [])) if not math.isfinite(v)]
    if bad:
        raise DivergedError(f"training diverged: the loss became NaN/inf in epoch {bad[0]}{advice}")
    return FitResult(history, epochs_run, wall, epochs_run * images / max(wall, 1e-9))
