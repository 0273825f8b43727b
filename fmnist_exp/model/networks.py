"""Network builders: pure functions from typed parameters to an uncompiled Keras model.

:func:`build` is the one call that makes any network, the built-in families' and a user's
(model/builder.py: ``build(hp, input_shape, num_classes)``) alike.

Every network takes raw pixels 0-255 in its dataset's layout (DatasetInfo.array_shape: (n, height,
width) for grayscale, (n, height, width, channels) for colour); scaling to 0-1 is the first layer,
so a saved model needs no preprocessing. Builders never see Optuna or MLflow.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import keras
from keras import layers, regularizers

from ..data import DatasetInfo
from ..params import CnnParams, ConfigError, CustomParams, MlpParams, NetworkParams, parse_int_list, replaced
from ..params import network as resolve_network
from ..params.table import CNN_FILTERS
from . import builder as user
from .hyperparameters import Draw, HyperParameters
from .layers import FusedBatchNormalization, training_build


def _inputs(info: DatasetInfo, shape: tuple[int, ...] | None = None):
    inp = keras.Input(shape=shape or info.array_shape, dtype="float32", name="pixels")
    return inp, layers.Rescaling(1.0 / 255, name="scale_0_1")(inp)


def _head(h, num_classes: int, *, dense_units: int, dropout: float, l2: float, activation: str = "relu"):
    reg = regularizers.L2(l2) if l2 else None
    if dense_units:
        h = layers.Dropout(dropout)(h) if dropout else h
        h = layers.Dense(dense_units, activation=activation, kernel_regularizer=reg)(h)
    h = layers.Dropout(dropout)(h) if dropout else h
    # float32 softmax even under a mixed-precision policy: float16 probabilities round to 0/1
    return layers.Dense(num_classes, activation="softmax", kernel_regularizer=reg, name="probs", dtype="float32")(h)


def build_mlp(p: MlpParams, info: DatasetInfo, *, shape: tuple[int, ...] | None = None) -> keras.Model:
    """Dense layers of ``hidden_units`` widths with dropout and L2 between them; on images of ``shape`` (not given:
    ``info``'s array layout)."""
    inp, h = _inputs(info, shape)
    h = layers.Flatten()(h)
    reg = regularizers.L2(p.l2) if p.l2 else None
    for i, units in enumerate(p.hidden_units):
        if i and p.dropout:
            h = layers.Dropout(p.dropout)(h)
        h = layers.Dense(units, activation=p.activation, kernel_regularizer=reg)(h)
    out = _head(h, info.num_classes, dense_units=0, dropout=p.dropout, l2=p.l2)
    return keras.Model(inp, out, name="mlp_" + "-".join(map(str, p.hidden_units)))


def build_cnn(p: CnnParams, info: DatasetInfo, *, fused: bool = False, shape: tuple[int, ...] | None = None
              ) -> keras.Model:
    """Blocks of ``convs_per_block`` x (conv3x3 (+BN) + ReLU), then a 2x2 max-pool; then a
    dense layer and the softmax.

    One convolution per block (the default) keeps the 28x28 stage cheap: the first block holds
    most of the pixels, so the channels grow only after each pooling halves the image. Two per
    block (VGG style) cost ~4x the FLOPs and buy accuracy only with long, augmented training.
    ``pool_first`` pools right after a block's last convolution, so batch norm and ReLU touch a
    quarter of the values (max-pooling commutes with ReLU; BN sees pooled statistics).
    """
    filters = p.filters if p.filters is not None else default_widths(info)
    check_fits(replace(p, filters=filters), info)
    batch_norm = FusedBatchNormalization if fused else layers.BatchNormalization
    inp, h = _inputs(info, shape)
    h = layers.Reshape(info.shape)(h)
    reg = regularizers.L2(p.l2) if p.l2 else None
    n = p.convs_per_block
    for f in filters:
        for i in range(n):
            h = layers.Conv2D(f, 3, padding="same", use_bias=not p.batch_norm, kernel_regularizer=reg)(h)
            if p.pool_first and i == n - 1:
                h = layers.MaxPooling2D()(h)
            if p.batch_norm:
                h = batch_norm(momentum=0.9)(h)  # stats settle within ~30 steps, not ~300
            h = layers.ReLU()(h)
        if not p.pool_first:
            h = layers.MaxPooling2D()(h)
    h = layers.Flatten()(h)
    out = _head(h, info.num_classes, dense_units=p.dense_units, dropout=p.dropout, l2=p.l2)
    return keras.Model(inp, out, name="cnn_" + "-".join(map(str, filters)))


def blocks_that_fit(info: DatasetInfo) -> int:
    """How many 2x2 poolings the image survives with at least one pixel left (28x28: 4; 8x8: 3)."""
    side, blocks = min(info.shape[:2]), 0
    while side // 2 >= 1:
        side, blocks = side // 2, blocks + 1
    return blocks


def too_deep(p: NetworkParams, info: DatasetInfo) -> str | None:
    """Why a network's pooling would shrink ``info``'s images below one pixel, saying what fits; None if it fits."""
    if isinstance(p, CnnParams) and p.filters and len(p.filters) > (fit := blocks_that_fit(info)):
        h, w, _ = info.shape
        return (f"filters={_widths(p.filters)}: {len(p.filters)} blocks, each halving the image, would shrink the "
                f"{h}x{w} images of {info.name} below one pixel; {fit} fit: give at most {fit} widths, e.g. "
                f"filters={_widths(p.filters[:fit])}")
    return None


def training_given(p: NetworkParams) -> tuple[dict[str, Any], set[str]]:
    """The platform's training parameters of ``p`` by name, and those it sets (not the family's defaults): what a
    builder's keras-tuner definition of one of these names answers, or refuses (model/hyperparameters.py)."""
    values, defaults = p.training_values(), resolve_network(p.FAMILY, p.naming()).training_values()
    return values, {k for k, v in values.items() if v != defaults[k]}


def check_fits(p: NetworkParams, info: DatasetInfo) -> None:
    if (why := too_deep(p, info)) is not None:
        raise ConfigError(why)


def check_recipe(p: NetworkParams, info: DatasetInfo) -> None:
    """Refuse, before any training, what ``info``'s data does not allow, every reason at once: a network
    its images are too small for, answers averaged with a mirror image where a mirror changes the label."""
    reasons = [why] if (why := too_deep(p, info)) else []
    if p.tta_flip and not info.flips:
        reasons.append(f"tta_flip=true: in {info.name}, a mirror image may not keep its label (the dataset says "
                       "flips: false), so answers may not be averaged with one: set tta_flip to false, or use a "
                       "study without it (e.g. study=digits or study=images); if mirror images do keep their "
                       "labels, say flips: true in the folder's dataset.yaml")
    if reasons:
        raise ConfigError("; and ".join(reasons))


def default_widths(info: DatasetInfo) -> tuple[int, ...]:
    """The cnn family's widths (CNN_FILTERS) cut to the blocks ``info``'s images fit."""
    return tuple(parse_int_list(CNN_FILTERS))[:blocks_that_fit(info)]


def fit_to_data(p: NetworkParams, info: DatasetInfo) -> tuple[NetworkParams, str | None]:
    """``p`` made concrete for ``info``'s images and checked (:func:`check_recipe`): a cnn whose filters
    were not given gets the family's widths that fit, with a sentence when they were cut (else None).
    Every command does this before its run starts, so that the run logs the widths it trains."""
    note = None
    if isinstance(p, CnnParams) and p.filters is None:
        widths, full = default_widths(info), parse_int_list(CNN_FILTERS)
        if len(widths) < len(full):
            h, w, _ = info.shape
            note = (f"the {h}x{w} images of {info.name} fit {len(widths)} pooling blocks, not the default's "
                    f"{len(full)}: training filters={_widths(widths)}")
        p = replaced(p, filters=_widths(widths))
    check_recipe(p, info)
    return p, note


def build(p: NetworkParams, info: DatasetInfo, *, fused: bool = False) -> keras.Model:
    """:func:`built`'s model."""
    return built(p, info, fused=fused)[0]


def built(p: NetworkParams, info: DatasetInfo, *, fused: bool = False, draw: Draw | None = None
          ) -> tuple[keras.Model, HyperParameters]:
    """The network ``p`` describes for ``info``'s images, made by its builder (``p.builder``: a built-in family's in
    model/builtin.py, else the user's) from its own values (``p.hp_values()``; a trial's ``draw`` suggests those it
    defines and ``p`` does not give), inside the platform's model (model/builder.py build); and the ``hp`` it read.
    ``fused`` (training only): batch norm by TensorFlow's fused kernel where the builder asks (layers.fused_wanted)."""
    with training_build(fused):
        return user.build(user.load(p.builder), p.hp_values(), info, draw, *training_given(p))


def portable_copy(p: NetworkParams, info: DatasetInfo, trained: keras.Model) -> keras.Model:
    """``trained`` as the model to log: float32 and Keras' own layers only, whatever precision and layers trained
    it; the same layers from their configurations (no second call of the builder; a layer that cannot be made so,
    e.g. a subclassed model of a user's without a configuration: ``p``'s network built again) and the same weights
    (mixed-precision variables are float32 already, FusedBatchNormalization holds Keras' variables)."""
    def portable(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if "dtype" in config:
            config["dtype"] = "float32"
        kind = layers.BatchNormalization if isinstance(layer, FusedBatchNormalization) else type(layer)
        return kind.from_config(config)

    try:
        copy = keras.models.clone_model(trained, clone_function=portable, recursive=True)
    except Exception:  # noqa: BLE001  (any layer the configuration route cannot copy)
        copy = None
    if copy is None or not is_portable(copy):  # e.g. a wrapper layer that rebuilds its inner one from its own config
        copy = build(p, info)
    copy.set_weights(trained.get_weights())
    return copy


def is_portable(model: keras.Model) -> bool:
    """float32 and Keras' own layers throughout, wrapped layers (TimeDistributed, Bidirectional, ...) included."""
    return not any(isinstance(layer, FusedBatchNormalization) or layer.dtype_policy.name != "float32"
                   for layer in model._flatten_layers(include_self=True))


def summary_tags(p: NetworkParams) -> dict[str, str]:
    """Short tags that say what ran, for run names and the UI's columns."""
    if isinstance(p, CustomParams):
        module, _, function = p.model.strip().rpartition(":")
        name = f"{module.removesuffix('.py').replace('/', '.').rpartition('.')[2]}.{function}"  # residual.build
        shown = " ".join(f"{k}={v}" for k, v in p.hp_values().items())
        return {"family": "custom", "arch": f"{name} {shown}".strip()[:250]}
    if isinstance(p, MlpParams):
        return {"family": "mlp", "arch": f"mlp {_widths(p.hidden_units)} {p.activation}"}
    bn = " bn" if p.batch_norm else ""
    depth = f" x{p.convs_per_block}" if p.convs_per_block != 1 else ""
    return {"family": "cnn", "arch": f"cnn {_widths(p.filters)}{depth} d{p.dense_units}{bn}"}


def _widths(widths: tuple[int, ...] | None) -> str:
    return ",".join(map(str, widths)) if widths is not None else "default"
