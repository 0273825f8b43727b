"""Network builders: pure functions from typed parameters to an uncompiled Keras model.

Every network takes raw pixels 0-255 of shape (n, 28, 28); scaling to 0-1 is the first
layer, so a saved model needs no preprocessing. Builders never see Optuna or MLflow.
"""

from __future__ import annotations

import keras
from keras import layers, regularizers

from ..data import IMAGE_SHAPE, NUM_CLASSES
from ..params import CnnParams, MlpParams, NetworkParams
from .layers import FusedBatchNormalization


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


def build_mlp(p: MlpParams) -> keras.Model:
    """Dense layers of ``hidden_units`` widths with dropout and L2 between them."""
    inp, h = _inputs()
    h = layers.Flatten()(h)
    reg = regularizers.L2(p.l2) if p.l2 else None
    for i, units in enumerate(p.hidden_units):
        if i and p.dropout:
            h = layers.Dropout(p.dropout)(h)
        h = layers.Dense(units, activation=p.activation, kernel_regularizer=reg)(h)
    out = _head(h, dense_units=0, dropout=p.dropout, l2=p.l2)
    return keras.Model(inp, out, name="mlp_" + "-".join(map(str, p.hidden_units)))


def build_cnn(p: CnnParams, *, fused: bool = False) -> keras.Model:
    """Blocks of ``convs_per_block`` x (conv3x3 (+BN) + ReLU), then a 2x2 max-pool; then a
    dense layer and the softmax.

    One convolution per block (the default) keeps the 28x28 stage cheap: the first block holds
    most of the pixels, so the channels grow only after each pooling halves the image. Two per
    block (VGG style) cost ~4x the FLOPs and buy accuracy only with long, augmented training.
    ``pool_first`` pools right after a block's last convolution, so batch norm and ReLU touch a
    quarter of the values (max-pooling commutes with ReLU; BN sees pooled statistics).
    ``residual`` adds each block's input to its last convolution's output before that ReLU: an
    identity shortcut where the width stays, else a 1x1 projection (with one convolution per block
    and growing widths, every block projects). With ``pool_first`` the shortcut is pooled before it
    joins, so the two branches are pooled apart: another network than pooling their sum, not only a
    cheaper one.
    """
    batch_norm = FusedBatchNormalization if fused else layers.BatchNormalization
    inp, h = _inputs()
    h = layers.Reshape((*IMAGE_SHAPE, 1))(h)
    reg = regularizers.L2(p.l2) if p.l2 else None
    n = p.convs_per_block
    for f in p.filters:
        block_in = h
        for i in range(n):
            h = layers.Conv2D(f, 3, padding="same", use_bias=not p.batch_norm, kernel_regularizer=reg)(h)
            if p.pool_first and i == n - 1:
                h = layers.MaxPooling2D()(h)
            if p.batch_norm:
                h = batch_norm(momentum=0.9)(h)  # stats settle within ~30 steps, not ~300
            if not (p.residual and i == n - 1):
                h = layers.ReLU()(h)
        if p.residual:
            s = layers.MaxPooling2D()(block_in) if p.pool_first else block_in
            if s.shape[-1] != f:
                s = layers.Conv2D(f, 1, use_bias=not p.batch_norm, kernel_regularizer=reg)(s)
                s = batch_norm(momentum=0.9)(s) if p.batch_norm else s
            h = layers.ReLU()(layers.Add()([h, s]))
        if not p.pool_first:
            h = layers.MaxPooling2D()(h)
    h = layers.Flatten()(h)
    out = _head(h, dense_units=p.dense_units, dropout=p.dropout, l2=p.l2)
    return keras.Model(inp, out, name="cnn_" + "-".join(map(str, p.filters)))


def build(p: NetworkParams, *, fused: bool = False) -> keras.Model:
    """The network ``p`` describes; ``fused`` (training only) uses FusedBatchNormalization."""
    return build_cnn(p, fused=fused) if isinstance(p, CnnParams) else build_mlp(p)


def portable_copy(p: NetworkParams, trained: keras.Model) -> keras.Model:
    """``trained`` as the model to log: float32 and built from Keras' own layers only, whatever
    precision and layers trained it (same weights: mixed-precision variables are float32 already,
    FusedBatchNormalization holds Keras' variables)."""
    copy = build(p)
    copy.set_weights(trained.get_weights())
    return copy


def is_portable(model: keras.Model) -> bool:
    return model.dtype_policy.name == "float32" and not any(
        isinstance(layer, FusedBatchNormalization) for layer in model.layers)


def summary_tags(p: NetworkParams) -> dict[str, str]:
    """Short tags that say what ran, for run names and the UI's columns."""
    if isinstance(p, MlpParams):
        return {"family": "mlp", "arch": f"mlp {_widths(p.hidden_units)} {p.activation}"}
    bn = " bn" if p.batch_norm else ""
    depth = f" x{p.convs_per_block}" if p.convs_per_block != 1 else ""
    res = " res" if p.residual else ""
    return {"family": "cnn", "arch": f"cnn {_widths(p.filters)}{depth}{res} d{p.dense_units}{bn}"}


def _widths(widths: tuple[int, ...]) -> str:
    return ",".join(map(str, widths))
