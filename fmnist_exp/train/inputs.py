"""Batches for `fit`: a tf.data pipeline under TensorFlow, numpy batches under any other backend.

:func:`make_dataset` builds the tf.data pipeline, which needs TensorFlow installed; the GPU
machines this project is lent may carry JAX and PyTorch but no TensorFlow. :class:`ArrayBatches`
feeds ``model.fit`` the same batches from numpy alone: float32 pixels, one-hot labels, a fresh
seeded order each epoch and the augmenter applied per batch. Its shuffle order is numpy's, not
tf.data's, so a JAX run and a TensorFlow run of the same seed see the images in different orders.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import keras
import numpy as np

from ..data import Splits
from ..model.augment import build_augmenter
from ..params import FitParams

if TYPE_CHECKING:
    import tensorflow as tf

def pipeline_options() -> tf.data.Options:
    """Fixed tf.data parallelism. With autotuning on, epochs on 2 cores stalled at random (the
    same epoch at two speeds for the same CPU seconds, see
    BENCHMARKS.md 'Input pipeline, oneDNN, XLA and threads'): its threads compete with the
    training step for the cores. A cast and a prefetch need no tuning."""
    import tensorflow as tf

    opts = tf.data.Options()
    opts.autotune.enabled = False
    return opts


def make_dataset(x, y, num_classes: int, batch_size: int, shuffle_seed: int | None = None,
                 augmenter: keras.Layer | None = None):
    """uint8 arrays -> batched (float32 pixels, one-hot labels of ``num_classes``), shuffled each epoch with
    ``shuffle_seed`` (None: in order); augmentation runs per batch.

    One-hot labels let the loss smooth them (``label_smoothing``); accuracy reads them as usual.
    ``y`` may be class probabilities instead (n x classes, e.g. a teacher's for distillation): they are the targets.
    """
    import tensorflow as tf

    probabilities = y.ndim == 2
    ds = tf.data.Dataset.from_tensor_slices((x, y.astype("float32") if probabilities else y.astype("int32")))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    target = (lambda b: b) if probabilities else (lambda b: tf.one_hot(b, num_classes))
    ds = ds.batch(batch_size).map(lambda a, b: (tf.cast(a, tf.float32), target(b)))
    if augmenter is not None:
        ds = ds.map(lambda a, b: (augmenter(a, training=True), b))
    return ds.prefetch(2).with_options(pipeline_options())


def datasets(s: Splits, p: FitParams, targets: np.ndarray | None = None):
    """The training and validation batches: tf.data under TensorFlow (make_dataset), numpy
    batches (ArrayBatches, below) under any other backend, where TensorFlow may be absent.
    ``targets``: what the training images are fitted to instead of their one-hot labels
    (validation keeps its labels)."""
    augmenter = build_augmenter(p, s.info) if p.augment else None
    k = s.info.num_classes
    if keras.backend.backend() == "tensorflow":
        return (make_dataset(s.x_train, s.y_train if targets is None else targets, k, p.batch_size, p.seed, augmenter),
                make_dataset(s.x_val, s.y_val, k, 1024))
    return (ArrayBatches(s.x_train, s.y_train, num_classes=k, batch_size=p.batch_size, seed=p.seed,
                         augmenter=augmenter, targets=targets),
            ArrayBatches(s.x_val, s.y_val, num_classes=k, batch_size=1024))



class ArrayBatches(keras.utils.PyDataset):
    """uint8 images ``x`` and integer labels ``y`` as batches of (float32 pixels, one-hot labels of ``num_classes``,
    or rows of ``targets`` where given).

    ``seed`` None keeps the given order (validation); otherwise epoch ``e`` is a permutation drawn
    from ``numpy.random.default_rng([seed, e])``, so a run reshuffles every epoch and a rerun with
    the same seed repeats its orders. ``augmenter`` runs on each batch with ``training=True``.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, *, num_classes: int, batch_size: int, seed: int | None = None,
                 augmenter: keras.Layer | None = None, targets: np.ndarray | None = None):
        super().__init__()  # one worker, in the training thread: the augmenter's RNG state is not shared
        self.x, self.y, self.batch_size, self.seed, self.augmenter = x, y, batch_size, seed, augmenter
        self.targets = np.eye(num_classes, dtype="float32")[y] if targets is None else targets.astype("float32")
        self.epoch = 0
        self.order = self._order()

    def _order(self) -> np.ndarray | None:
        if self.seed is None:
            return None
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.x))

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, i: int):
        rows = slice(i * self.batch_size, (i + 1) * self.batch_size)
        index = rows if self.order is None else self.order[rows]
        images = self.x[index].astype("float32")
        if self.augmenter is not None:
            images = self.augmenter(images, training=True)
        return images, self.targets[index]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()
