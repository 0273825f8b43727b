"""Models made of trained models: flip-averaged answers and the average of an ensemble's members.

Both hold built-in Keras layers only, so the saved model loads without this package, and both
multiply the inference cost (2x for the flip average, k x for k members).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from ..data import IMAGE_SHAPE


def with_flip_average(model: keras.Model) -> keras.Model:
    """``model`` answering with the mean of its class probabilities for each image and for its
    mirror image (test-time augmentation; it fits models trained with horizontal flips). The
    mirror is a fixed 0/1 matrix on the width axis."""
    inp = keras.Input(shape=IMAGE_SHAPE, dtype="float32", name="pixels")
    width = IMAGE_SHAPE[1]
    mirror = layers.Dense(width, use_bias=False, trainable=False, name="mirror")
    mirror.build((None, *IMAGE_SHAPE))
    mirror.set_weights([np.eye(width, dtype="float32")[::-1]])
    out = layers.Average(name="flip_average", dtype="float32")([model(inp), model(mirror(inp))])
    return keras.Model(inp, out, name=f"{model.name}_flip_average")


def average(members: list[keras.Model]) -> keras.Model:
    """One model answering the mean of ``members``' class probabilities (renames the members:
    Keras needs distinct names side by side, and members of one recipe share theirs)."""
    inp = keras.Input(shape=IMAGE_SHAPE, dtype="float32", name="pixels")
    for i, m in enumerate(members):
        m.name = f"member_{i}"
    out = layers.Average(name="ensemble_average", dtype="float32")([m(inp) for m in members])
    return keras.Model(inp, out, name=f"ensemble_of_{len(members)}")
