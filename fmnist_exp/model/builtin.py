"""The built-in families' networks as builders of the user's kind: ``build(hp, input_shape, num_classes)``.

Named as any builder is, the built-in cnn trains what the ``cnn`` entry point trains with the same values::

    python -m fmnist_exp custom --model fmnist_exp.model.builtin:cnn --hp '{filters: "32,64", dense_units: 64}' \\
        --epochs 9 --label_smoothing 0.1      # = python -m fmnist_exp cnn --filters 32,64 --dense_units 64

``hp`` holds the family's network parameters (cnn: filters, convs_per_block, pool_first, dense_units,
batch_norm, dropout, l2; mlp: hidden_units, activation, dropout, l2), each the family's default where not
given; the training parameters (epochs, learning rate, label smoothing, ...) are the platform's recipe's, as
for any builder, so give the values the family's run logged where they differ (cnn: its epochs, label smoothing
0.1). The network parameters not given are recorded as the builder's (hp.Fixed), so a run keeps them whatever later
defaults are. To copy it into a file of your own, import from ``fmnist_exp.model.networks`` (its imports here are
the package's).
While the platform builds the network to train, batch norm is TensorFlow's fused kernel, as the cnn entry point
trains it (layers.training_build); the logged model has Keras' own layers.
"""

from __future__ import annotations

from typing import Any

import keras

from ..data import DatasetInfo
from ..params import CnnParams, MlpParams
from ..params import network as resolve_network
from ..params.table import FAMILY_PARAMS, FIT_PARAMS
from .layers import fused_wanted
from .networks import build_cnn, build_mlp, fit_to_data


def network_names(family: str) -> list[str]:
    """The family's own network parameters: what its builder reads from ``hp`` (not the training recipe's)."""
    recipe = {p.name for p in FIT_PARAMS}
    return [p.name for p in FAMILY_PARAMS[family] if p.name not in recipe]


def _params(family: str, hp: Any, info: DatasetInfo) -> CnnParams | MlpParams:
    """The family's network parameters: ``hp``'s, else the family's defaults, each one not given defined in ``hp``
    at that value (hp.Fixed) so that the run records what it trained with, whatever later defaults are."""
    given = {name: hp.get(name) for name in network_names(family)}
    p, _ = fit_to_data(resolve_network(family, {k: v for k, v in given.items() if v is not None}), info)
    assert isinstance(p, CnnParams | MlpParams)
    flat = p.flat()
    for name, value in given.items():
        if value is None:
            hp.Fixed(name, flat[name])
    return p


def _info(input_shape: tuple[int, ...], num_classes: int) -> DatasetInfo:
    h, w, c = input_shape
    return DatasetInfo(name="the builder's input_shape", shape=(h, w, c),
                       class_names=tuple(map(str, range(num_classes))))


def cnn(hp: Any, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """The built-in cnn family's network (model/networks.py build_cnn) on images of ``input_shape``."""
    info = _info(input_shape, num_classes)
    p = _params("cnn", hp, info)
    assert isinstance(p, CnnParams)
    return build_cnn(p, info, fused=fused_wanted(), shape=tuple(input_shape))


def mlp(hp: Any, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """The built-in mlp family's network (model/networks.py build_mlp) on images of ``input_shape``."""
    info = _info(input_shape, num_classes)
    p = _params("mlp", hp, info)
    assert isinstance(p, MlpParams)
    return build_mlp(p, info, shape=tuple(input_shape))
