"""FusedBatchNormalization: batch norm by TensorFlow's fused kernel, for training only (:func:`training_build`)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import keras
from keras import layers


@keras.saving.register_keras_serializable(package="fmnist_exp")  # a training model saved as is still loads
class FusedBatchNormalization(layers.BatchNormalization):
    """Keras' BatchNormalization computed by TensorFlow's fused kernel: one op forward and one
    backward (oneDNN on a CPU) instead of Keras 3's ~10 elementwise and reduction ops with
    float32 casts. Same variables, same moving-average update, same answers up to rounding,
    and a faster epoch, most of all under bfloat16 (BENCHMARKS.md, "Training speed on a CPU").

    For training only: ``build(..., fused=True)``. The logged model is rebuilt with Keras' own
    layer from the trained one's configuration and given these weights (``networks.portable_copy``), so it loads
    without this package.
    Under another backend, with a mask or on another axis it is Keras' layer.
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


_FUSED = contextvars.ContextVar("fused_batch_norm", default=False)


@contextlib.contextmanager
def training_build(fused: bool) -> Iterator[None]:
    """While a network is built to train (``fused``): a builder that asks :func:`fused_wanted` builds its batch norm
    as FusedBatchNormalization (the built-in ones, model/builtin.py); the logged copy is built outside it."""
    token = _FUSED.set(fused)
    try:
        yield
    finally:
        _FUSED.reset(token)


def fused_wanted() -> bool:
    return _FUSED.get()
