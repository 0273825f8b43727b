"""Model builders are pure functions of plain parameters; scaling lives inside the model."""

from __future__ import annotations

import numpy as np

from fmnist_exp import config as C
from fmnist_exp import models


def test_builders_take_raw_pixels_and_output_probabilities(dataset):
    x = dataset.x_test[:4].astype("float32")
    for family in ("mlp", "cnn"):
        m = models.build(family, C.defaults(family))
        assert m.input_shape == (None, 28, 28)
        probs = np.asarray(m(x, training=False))
        assert probs.shape == (4, 10)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
        assert m.layers[1].name == "scale_0_1"


def test_builders_follow_parameters():
    p = C.resolve("mlp", {"hidden_units": "64,32,16", "dropout": 0.0, "l2": 0.0})
    m = models.build_mlp(p)
    dense = [layer.units for layer in m.layers if layer.__class__.__name__ == "Dense"]
    assert dense == [64, 32, 16, 10]
    p = C.resolve("cnn", {"filters": "8,16", "dense_units": 0, "batch_norm": False})
    m = models.build_cnn(p)
    convs = [layer.filters for layer in m.layers if layer.__class__.__name__ == "Conv2D"]
    assert convs == [8, 16]
    assert not any(layer.__class__.__name__ == "BatchNormalization" for layer in m.layers)
