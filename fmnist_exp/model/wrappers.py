"""Models made of trained models: flip- and shift-averaged answers and the average of an ensemble's
members.

All hold built-in Keras layers only, so the saved model loads without this package, and all
multiply the inference cost (2x for the flip average, 5x or 10x with shifts, k x for k members).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from ..data import DatasetInfo
from ..params import NetworkParams


def _mirror(info: DatasetInfo):
    """A function that mirrors images left to right: a fixed 0/1 matrix on the width axis. A grayscale
    image (n, h, w) has its width last; a colour one (n, h, w, c) is turned so that the width is last,
    mirrored and turned back, so that the channels are never mixed."""
    width = info.shape[1]
    mirror = layers.Dense(width, use_bias=False, trainable=False, name="mirror")
    if info.channels == 1:
        mirror.build((None, *info.array_shape))
        mirror.set_weights([np.eye(width, dtype="float32")[::-1]])
        return mirror
    h, w, c = info.shape
    mirror.build((None, h, c, w))
    mirror.set_weights([np.eye(width, dtype="float32")[::-1]])
    to_last, back = layers.Permute((1, 3, 2), name="width_last"), layers.Permute((1, 3, 2), name="width_back")
    return lambda x: back(mirror(to_last(x)))


def with_flip_average(model: keras.Model, info: DatasetInfo) -> keras.Model:
    """``model`` answering with the mean of its class probabilities for each image and for its
    mirror image (test-time augmentation; it fits models trained with horizontal flips). The
    mirror is a fixed 0/1 matrix on the width axis."""
    inp = keras.Input(shape=info.array_shape, dtype="float32", name="pixels")
    mirror = _mirror(info)
    out = layers.Average(name="flip_average", dtype="float32")([model(inp), model(mirror(inp))])
    return keras.Model(inp, out, name=f"{model.name}_flip_average")


# (down, right) moves of the multi-crop answer: the image as it is, then one step each way
SHIFTS = ((0, 0), (0, 1), (0, -1), (1, 0), (-1, 0))


def _shifted(image, info: DatasetInfo, dy: int, dx: int):
    """``image`` (n, height, width[, channels]) moved ``dy`` pixels down and ``dx`` right; the pixels it
    leaves are 0 (the background), as the training shifts fill them."""
    if not dy and not dx:
        return image
    h = layers.Reshape(info.shape)(image)
    h = layers.ZeroPadding2D(((max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0))))(h)
    h = layers.Cropping2D(((max(-dy, 0), max(dy, 0)), (max(-dx, 0), max(dx, 0))))(h)
    return layers.Reshape(info.array_shape)(h)


def with_shift_average(model: keras.Model, info: DatasetInfo, pixels: int, *, flip: bool) -> keras.Model:
    """``model`` answering with the mean of its class probabilities for each image moved ``pixels``
    left, right, up and down as well as left in place (5 passes), each also mirrored when ``flip``
    (10 passes): multi-crop test-time augmentation, for networks trained with such shifts."""
    inp = keras.Input(shape=info.array_shape, dtype="float32", name="pixels")
    views = [_shifted(inp, info, dy * pixels, dx * pixels) for dy, dx in SHIFTS]
    if flip:
        mirror = _mirror(info)
        views += [mirror(v) for v in views]
    out = layers.Average(name="shift_average", dtype="float32")([model(v) for v in views])
    return keras.Model(inp, out, name=f"{model.name}_shift_average")


def as_served(model: keras.Model, p: NetworkParams, info: DatasetInfo) -> keras.Model:
    """The trained network wrapped as the parameters ``p`` (tta_flip, tta_shift) say it answers."""
    if p.tta_shift:
        return with_shift_average(model, info, p.tta_shift, flip=p.tta_flip)
    return with_flip_average(model, info) if p.tta_flip else model


def average(members: list[keras.Model], info: DatasetInfo) -> keras.Model:
    """One model answering the mean of ``members``' class probabilities (renames the members:
    Keras needs distinct names side by side, and members of one recipe share theirs)."""
    inp = keras.Input(shape=info.array_shape, dtype="float32", name="pixels")
    for i, m in enumerate(members):
        m.name = f"member_{i}"
    out = layers.Average(name="ensemble_average", dtype="float32")([m(inp) for m in members])
    return keras.Model(inp, out, name=f"ensemble_of_{len(members)}")
