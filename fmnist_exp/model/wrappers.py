"""Models made of trained models: flip- and shift-averaged answers and the average of an ensemble's
members.

All hold built-in Keras layers only, so the saved model loads without this package, and all
multiply the inference cost (2x for the flip average, 5x or 10x with shifts, k x for k members).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from ..data import IMAGE_SHAPE
from ..params import NetworkParams


def _mirror() -> layers.Dense:
    """A layer that mirrors an image left to right: a fixed 0/1 matrix on the width axis."""
    width = IMAGE_SHAPE[1]
    mirror = layers.Dense(width, use_bias=False, trainable=False, name="mirror")
    mirror.build((None, *IMAGE_SHAPE))
    mirror.set_weights([np.eye(width, dtype="float32")[::-1]])
    return mirror


def with_flip_average(model: keras.Model) -> keras.Model:
    """``model`` answering with the mean of its class probabilities for each image and for its
    mirror image (test-time augmentation; it fits models trained with horizontal flips). The
    mirror is a fixed 0/1 matrix on the width axis."""
    inp = keras.Input(shape=IMAGE_SHAPE, dtype="float32", name="pixels")
    mirror = _mirror()
    out = layers.Average(name="flip_average", dtype="float32")([model(inp), model(mirror(inp))])
    return keras.Model(inp, out, name=f"{model.name}_flip_average")


# (down, right) moves of the multi-crop answer: the image as it is, then one step each way
SHIFTS = ((0, 0), (0, 1), (0, -1), (1, 0), (-1, 0))


def _shifted(image, dy: int, dx: int):
    """``image`` (n, 28, 28) moved ``dy`` pixels down and ``dx`` right; the pixels it leaves are 0
    (the background), as the training shifts fill them."""
    if not dy and not dx:
        return image
    h = layers.Reshape((*IMAGE_SHAPE, 1))(image)
    h = layers.ZeroPadding2D(((max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0))))(h)
    h = layers.Cropping2D(((max(-dy, 0), max(dy, 0)), (max(-dx, 0), max(dx, 0))))(h)
    return layers.Reshape(IMAGE_SHAPE)(h)


def with_shift_average(model: keras.Model, pixels: int, *, flip: bool) -> keras.Model:
    """``model`` answering with the mean of its class probabilities for each image moved ``pixels``
    left, right, up and down as well as left in place (5 passes), each also mirrored when ``flip``
    (10 passes): multi-crop test-time augmentation, for networks trained with such shifts."""
    inp = keras.Input(shape=IMAGE_SHAPE, dtype="float32", name="pixels")
    views = [_shifted(inp, dy * pixels, dx * pixels) for dy, dx in SHIFTS]
    if flip:
        mirror = _mirror()
        views += [mirror(v) for v in views]
    out = layers.Average(name="shift_average", dtype="float32")([model(v) for v in views])
    return keras.Model(inp, out, name=f"{model.name}_shift_average")


def as_served(model: keras.Model, p: NetworkParams) -> keras.Model:
    """The trained network wrapped as the parameters ``p`` (tta_flip, tta_shift) say it answers."""
    if p.tta_shift:
        return with_shift_average(model, p.tta_shift, flip=p.tta_flip)
    return with_flip_average(model) if p.tta_flip else model


def average(members: list[keras.Model]) -> keras.Model:
    """One model answering the mean of ``members``' class probabilities (renames the members:
    Keras needs distinct names side by side, and members of one recipe share theirs)."""
    inp = keras.Input(shape=IMAGE_SHAPE, dtype="float32", name="pixels")
    for i, m in enumerate(members):
        m.name = f"member_{i}"
    out = layers.Average(name="ensemble_average", dtype="float32")([m(inp) for m in members])
    return keras.Model(inp, out, name=f"ensemble_of_{len(members)}")
