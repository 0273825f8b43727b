"""Model builders: pure functions from plain parameters to an uncompiled Keras model.

Every network takes raw pixels 0-255 of shape (n, 28, 28); scaling to 0-1 is the first
layer, so a saved model needs no preprocessing. Builders never see Optuna or MLflow.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, regularizers

from .config import parse_int_list
from .data import IMAGE_SHAPE, NUM_CLASSES


def _inputs():
    inp = keras.Input(shape=IMAGE_SHAPE, dtype="float32", name="pixels")
    return inp, layers.Rescaling(1.0 / 255, name="scale_0_1")(inp)


def _head(h, *, dense_units: int, dropout: float, l2: float, activation: str = "relu"):
    reg = regularizers.L2(l2) if l2 else None
    if dense_units:
        h = layers.Dropout(dropout)(h) if dropout else h
        h = layers.Dense(dense_units, activation=activation, kernel_regularizer=reg)(h)
    h = layers.Dropout(dropout)(h) if dropout else h
    # float32 softmax even under a mixed-precision policy: float16 probabilities round to 0/1
    return layers.Dense(NUM_CLASSES, activation="softmax", kernel_regularizer=reg, name="probs", dtype="float32")(h)


def build_mlp(p: dict) -> keras.Model:
    """Dense layers of ``hidden_units`` widths with dropout and L2 between them."""
    inp, h = _inputs()
    h = layers.Flatten()(h)
    reg = regularizers.L2(p["l2"]) if p["l2"] else None
    widths = parse_int_list(p["hidden_units"])
    for i, units in enumerate(widths):
        if i and p["dropout"]:
            h = layers.Dropout(p["dropout"])(h)
        h = layers.Dense(units, activation=p["activation"], kernel_regularizer=reg)(h)
    out = _head(h, dense_units=0, dropout=p["dropout"], l2=p["l2"])
    return keras.Model(inp, out, name="mlp_" + "-".join(map(str, widths)))


@keras.saving.register_keras_serializable(package="fmnist_exp")  # a training model saved as is still loads
class FusedBatchNormalization(layers.BatchNormalization):
    """Keras' BatchNormalization computed by TensorFlow's fused kernel: one op forward and one
    backward (oneDNN on a CPU) instead of Keras 3's ~10 elementwise and reduction ops with
    float32 casts. Same variables, same moving-average update, same answers up to rounding; on
    this project's CPU it makes the issue-6 network's epoch 1.41x faster in float32, and with
    bfloat16 2.14x where bfloat16 alone gave 1.10x (BENCHMARKS.md, issue 14).

    For training only: ``build(..., fused=True)``. The logged model is rebuilt with Keras' own
    layer and given these weights (``portable_copy``), so it loads without this package. Under
    another backend, with a mask or on another axis it is Keras' layer.
    """

    def call(self, inputs, training=None, mask=None):
        last = self.axis in (-1, len(inputs.shape) - 1)  # Keras keeps the axis as given (-1)
        if keras.backend.backend() != "tensorflow" or mask is not None or not last:
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        f32 = lambda v: tf.cast(v, tf.float32)  # noqa: E731  (the kernel takes float32 statistics)
        gamma = f32(self.gamma) if self.scale else tf.ones(inputs.shape[-1])
        beta = f32(self.beta) if self.center else tf.zeros(inputs.shape[-1])
        if training and self.trainable:
            empty = tf.constant([], tf.float32)
            y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
                x=inputs, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=self.epsilon,
                data_format="NHWC", is_training=True)
            n = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], tf.float32)
            variance = variance * (n - 1.0) / n  # the kernel returns Bessel-corrected; Keras' layer does not
            m = self.momentum
            self.moving_mean.assign(self.moving_mean * m + tf.stop_gradient(mean) * (1.0 - m))
            self.moving_variance.assign(self.moving_variance * m + tf.stop_gradient(variance) * (1.0 - m))
        else:
            y, *_ = tf.raw_ops.FusedBatchNormV3(
                x=inputs, scale=gamma, offset=beta, mean=f32(self.moving_mean), variance=f32(self.moving_variance),
                epsilon=self.epsilon, data_format="NHWC", is_training=False)
        return y


def build_cnn(p: dict, *, fused: bool = False) -> keras.Model:
    """Blocks of ``convs_per_block`` x (conv3x3 (+BN) + ReLU), then a 2x2 max-pool; then a
    dense layer and the softmax.

    One convolution per block (the default) keeps the 28x28 stage cheap: the first block holds
    most of the pixels, so the channels grow only after each pooling halves the image. Two per
    block (VGG style) cost ~4x the FLOPs and buy accuracy only with long, augmented training.
    ``pool_first`` pools right after a block's last convolution, so batch norm and ReLU touch a
    quarter of the values (max-pooling commutes with ReLU; BN sees pooled statistics).
    """
    batch_norm = FusedBatchNormalization if fused else layers.BatchNormalization
    inp, h = _inputs()
    h = layers.Reshape((*IMAGE_SHAPE, 1))(h)
    reg = regularizers.L2(p["l2"]) if p["l2"] else None
    filters = parse_int_list(p["filters"])
    n = p["convs_per_block"]
    for f in filters:
        for i in range(n):
            h = layers.Conv2D(f, 3, padding="same", use_bias=not p["batch_norm"], kernel_regularizer=reg)(h)
            if p["pool_first"] and i == n - 1:
                h = layers.MaxPooling2D()(h)
            if p["batch_norm"]:
                h = batch_norm(momentum=0.9)(h)  # stats settle within ~30 steps, not ~300
            h = layers.ReLU()(h)
        if not p["pool_first"]:
            h = layers.MaxPooling2D()(h)
    h = layers.Flatten()(h)
    out = _head(h, dense_units=p["dense_units"], dropout=p["dropout"], l2=p["l2"])
    return keras.Model(inp, out, name="cnn_" + "-".join(map(str, filters)))


BUILDERS = {"mlp": build_mlp, "cnn": build_cnn}


def build(family: str, params: dict, *, fused: bool = False) -> keras.Model:
    """``family``'s network; ``fused`` (training only) uses FusedBatchNormalization."""
    return build_cnn(params, fused=fused) if family == "cnn" else BUILDERS[family](params)


def portable_copy(family: str, params: dict, trained: keras.Model) -> keras.Model:
    """``trained`` as the model to log: float32 and built from Keras' own layers only, whatever
    precision and layers trained it (same weights: mixed-precision variables are float32 already,
    FusedBatchNormalization holds Keras' variables)."""
    copy = build(family, params)
    copy.set_weights(trained.get_weights())
    return copy


def is_portable(model: keras.Model) -> bool:
    return model.dtype_policy.name == "float32" and not any(
        isinstance(layer, FusedBatchNormalization) for layer in model.layers)


def with_flip_average(model: keras.Model) -> keras.Model:
    """``model`` answering with the mean of its class probabilities for each image and for its
    mirror image (test-time augmentation, twice the inference cost; it fits models trained with
    horizontal flips). The mirror is a fixed 0/1 matrix on the width axis, so the saved model holds
    built-in layers only and loads without this package."""
    inp = keras.Input(shape=IMAGE_SHAPE, dtype="float32", name="pixels")
    width = IMAGE_SHAPE[1]
    mirror = layers.Dense(width, use_bias=False, trainable=False, name="mirror")
    mirror.build((None, *IMAGE_SHAPE))
    mirror.set_weights([np.eye(width, dtype="float32")[::-1]])
    out = layers.Average(name="flip_average", dtype="float32")([model(inp), model(mirror(inp))])
    return keras.Model(inp, out, name=f"{model.name}_flip_average")


def build_augmenter(p: dict) -> keras.Sequential:
    """Random horizontal flips, then shifts, rotations and zoom of at most ``aug_shift``,
    ``aug_rotate`` and ``aug_zoom``, then random erasing with probability ``aug_erase``
    (train-time only; a 0 leaves that transform out). Shifts
    take the nearest pixel, so a shifted image stays as sharp as the test images; rotation and
    zoom resample bilinearly."""
    seed = p["seed"]
    geometric = [
        layers.RandomTranslation(p["aug_shift"], p["aug_shift"], fill_mode="constant",
                                 interpolation="nearest", seed=seed)
        if p["aug_shift"] else None,
        layers.RandomRotation(p["aug_rotate"], fill_mode="constant", seed=seed) if p["aug_rotate"] else None,
        layers.RandomZoom(p["aug_zoom"], fill_mode="constant", seed=seed) if p["aug_zoom"] else None,
        # after the geometry, on the (1-channel) image; the tuple fixes the probability at aug_erase
        layers.RandomErasing((p["aug_erase"], p["aug_erase"]), scale=(0.02, 0.25), fill_value=0.0,
                             value_range=(0, 255), seed=seed) if p["aug_erase"] else None,
    ]
    return keras.Sequential(
        [
            layers.Reshape((*IMAGE_SHAPE, 1)),
            layers.RandomFlip("horizontal", seed=seed),
            *[layer for layer in geometric if layer is not None],
            layers.Reshape(IMAGE_SHAPE),
        ],
        name="augment",
    )


def summary_tags(family: str, params: dict) -> dict:
    """Short tags that say what ran, for run names and the UI's columns."""
    if family == "mlp":
        return {"family": "mlp", "arch": f"mlp {params['hidden_units']} {params['activation']}"}
    bn = " bn" if params["batch_norm"] else ""
    depth = f" x{params['convs_per_block']}" if params["convs_per_block"] != 1 else ""
    return {"family": "cnn", "arch": f"cnn {params['filters']}{depth} d{params['dense_units']}{bn}"}
