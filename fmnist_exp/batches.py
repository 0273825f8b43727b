"""The input pipeline for Keras backends other than TensorFlow (JAX, PyTorch).

train.make_dataset builds a tf.data pipeline, which needs TensorFlow installed; the GPU
machines this project is lent carry JAX and PyTorch but no TensorFlow. ``ArrayBatches`` feeds
``model.fit`` the same batches from numpy alone: float32 pixels, one-hot labels, a fresh
seeded order each epoch and the augmenter applied per batch. Its shuffle order is numpy's, not
tf.data's, so a JAX run and a TensorFlow run of the same seed see the images in different orders.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from .data import NUM_CLASSES

_ONE_HOT = np.eye(NUM_CLASSES, dtype="float32")


class ArrayBatches(keras.utils.PyDataset):
    """uint8 images ``x`` and integer labels ``y`` as batches of (float32 pixels, one-hot labels).

    ``seed`` None keeps the given order (validation); otherwise epoch ``e`` is a permutation drawn
    from ``numpy.random.default_rng([seed, e])``, so a run reshuffles every epoch and a rerun with
    the same seed repeats its orders. ``augmenter`` runs on each batch with ``training=True``.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, *, batch_size: int, seed: int | None = None,
                 augmenter: keras.Layer | None = None):
        super().__init__()  # one worker, in the training thread: the augmenter's RNG state is not shared
        self.x, self.y, self.batch_size, self.seed, self.augmenter = x, y, batch_size, seed, augmenter
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
        return images, _ONE_HOT[self.y[index]]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()
