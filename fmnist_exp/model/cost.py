"""What a model costs to serve: its parameters, the size of its weights, multiply-accumulates per
image, and the time per image it takes here at batch 1 and at a large batch.

The first three are properties of the network (the same on every machine, known before training:
a study refuses a network over its budget without training it); the times are measured in-process
on this machine, warm, as the median and interquartile range of repeated calls, so they carry
the machine's noise (BENCHMARKS.md says how much). A model made of models (the flip average runs
its network twice per image, an ensemble every member) costs what all its passes cost.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import keras
import numpy as np

BATCH = 256  # the large batch: a scoring server's batched requests, an offline job
REPEATS_B1, REPEATS_BATCH, WARMUP = 30, 5, 3

# What a Keras layer's configuration says that only training reads: two networks that differ only in these
# (a study's dropout rates, weight decays, seeds) cost the same to serve. Left in a user's own layer's
# configuration, where a "rate" may be a dilation; a model's compile settings are dropped wherever they are.
TRAINING_ONLY = frozenset({
    "rate", "seed", "trainable", "momentum", "kernel_regularizer", "bias_regularizer", "activity_regularizer",
    "depthwise_regularizer", "pointwise_regularizer", "beta_regularizer", "gamma_regularizer",
    "kernel_initializer", "bias_initializer", "depthwise_initializer", "pointwise_initializer",
    "beta_initializer", "gamma_initializer", "moving_mean_initializer", "moving_variance_initializer",
    "kernel_constraint", "bias_constraint", "beta_constraint", "gamma_constraint"})

COSTS = ("params", "size_mb", "mmacs_per_image", "ms_per_image_b1", "ms_per_image_b256")
DETERMINISTIC = ("params", "size_mb", "mmacs_per_image")


@dataclass(frozen=True)
class Cost:
    params: int
    size_mb: float  # the weights' bytes alone (float32), without optimizer state
    mmacs_per_image: float  # millions of multiply-accumulates per image, every pass counted
    ms_per_image_b1: float  # median over warm calls, one image per call
    ms_per_image_b1_iqr: float
    ms_per_image_b256: float  # median over warm calls of BATCH images, per image
    ms_per_image_b256_iqr: float

    def metrics(self, *, times_only: bool = False) -> dict[str, float]:
        """As logged: ``cost_<field>``; ``times_only``: the times alone, not the DETERMINISTIC costs."""
        return as_metrics({k: v for k, v in asdict(self).items() if not (times_only and k in DETERMINISTIC)})

    @classmethod
    def from_metrics(cls, metrics: dict[str, float]) -> Cost | None:
        """The cost a run logged, or None when it logged none (a pruned trial, an earlier run)."""
        try:
            values: dict[str, Any] = as_read({k: metrics[f"cost_{k}"] for k in cls.__dataclass_fields__})
        except KeyError:
            return None
        values["params"] = int(values["params"])
        return cls(**values)

    def value(self, name: str) -> float:
        """One of COSTS by name."""
        return float(getattr(self, name))


def _calls(layer: keras.layers.Layer) -> int:
    """How many times a sub-model runs per image in the model that holds it (the flip average
    calls its network twice). Keras keeps one node per call; it has no public accessor."""
    return max(1, len(getattr(layer, "_inbound_nodes", [])))


def _layer_macs(layer: keras.layers.Layer) -> float:
    """Multiply-accumulates of one call of a built-in layer, per image; 0 for layers without weights
    to multiply by (pooling, activations, batch normalisation folded into the convolution when served)."""
    if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D):
        out = layer.output.shape  # (None, h, w, c)
        kh, kw = layer.kernel_size
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            per_position = kh * kw * out[-1]
        else:
            cin = layer.input.shape[-1]
            per_position = kh * kw * (cin // getattr(layer, "groups", 1)) * out[-1]
        return float(out[1] * out[2] * per_position)
    if isinstance(layer, keras.layers.Dense):
        shape = layer.input.shape  # (None, ..., units_in): applied at every leading position
        positions = int(np.prod(shape[1:-1])) if len(shape) > 2 else 1
        return float(positions * shape[-1] * layer.units)
    return 0.0


def macs_per_image(model: keras.Model) -> float:
    """Multiply-accumulates per image, every pass of every sub-model counted."""
    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += _calls(layer) * macs_per_image(layer)
        else:
            total += _layer_macs(layer)
    return total


def uncounted_layers(model: keras.Model) -> list[str]:
    """The layers with weights whose multiply-accumulates :func:`macs_per_image` does not count, by class name
    (a user's network may hold any: model/builder.py); batch and layer normalisation are folded or negligible."""
    counted = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense,
               keras.layers.BatchNormalization, keras.layers.LayerNormalization)
    out: set[str] = set()
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.update(uncounted_layers(layer))
        elif layer.weights and not isinstance(layer, counted):
            out.add(type(layer).__name__)
    return sorted(out)


def weights_mb(model: keras.Model) -> float:
    """The bytes of the model's weights, in MB (10^6 bytes): the network a server holds, its optimizer's state
    never counted (a weights file of a compiled model holds the optimizer's moments too: it sized a trained
    network at three times an untrained one) and no file written to count them."""
    return sum(math.prod(w.shape) * np.dtype(w.dtype).itemsize for w in model.weights) / 1e6


def as_read(costs: dict[str, float]) -> dict[str, float]:
    """Costs a run, trial or version recorded (by name), as this code measures them: the size from the
    parameters, since every served weight is float32 (4 bytes each, :func:`weights_mb`); code before 058a7e1
    recorded a weights file that counted a trained model's optimizer too (three times the network), and a
    size read from it would compare older models as larger than they serve."""
    if "params" in costs and "size_mb" in costs:
        return {**costs, "size_mb": float(costs["params"]) * 4 / 1e6}
    return dict(costs)


def as_metrics(costs: dict[str, Any]) -> dict[str, float]:
    """Costs by name (:class:`Cost`'s fields) as a run logs them: ``cost_<name>``."""
    return {f"cost_{k}": float(v) for k, v in costs.items()}


def static(model: keras.Model) -> dict[str, float]:
    """The deterministic costs (DETERMINISTIC), of a built network, trained or not."""
    return {"params": float(model.count_params()), "size_mb": weights_mb(model),
            "mmacs_per_image": macs_per_image(model) / 1e6}


def _ms_per_image(model: keras.Model, x: np.ndarray, repeats: int) -> tuple[float, float]:
    for _ in range(WARMUP):
        model.predict_on_batch(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.predict_on_batch(x)
        times.append((time.perf_counter() - t0) * 1000 / len(x))
    q25, q50, q75 = np.percentile(times, [25, 50, 75])
    return float(q50), float(q75 - q25)


def measure(model: keras.Model, seed: int = 0) -> Cost:
    """All costs of ``model`` (float32 pixels 0-255 in, class probabilities out), times measured now on
    random images of the shape it takes."""
    x = np.random.default_rng(seed).integers(0, 256, size=(BATCH, *model.input_shape[1:])).astype("float32")
    b1, b1_iqr = _ms_per_image(model, x[:1], REPEATS_B1)
    batch, batch_iqr = _ms_per_image(model, x, REPEATS_BATCH)
    s = static(model)
    return Cost(params=int(s["params"]), size_mb=s["size_mb"], mmacs_per_image=s["mmacs_per_image"],
                ms_per_image_b1=b1, ms_per_image_b1_iqr=b1_iqr,
                ms_per_image_b256=batch, ms_per_image_b256_iqr=batch_iqr)


_MEASURED: dict[str, Cost] = {}  # measure_once's: this process's measurements by architecture


def architecture(model: keras.Model) -> str | None:
    """A digest of what ``model`` costs to serve: its layers, their wiring, weights' shapes and dtypes,
    without what only training reads (TRAINING_ONLY); None for a model whose configuration does not
    state its whole graph (a subclassed network, at any depth: its configuration holds its constructor's
    arguments at most, so two widths of it could not be told apart)."""
    def serving(value: Any, keras_own: bool) -> Any:
        if isinstance(value, dict):
            # a serialized object says where its class lives: {"module": ..., "class_name": ..., "config": ...}
            keras_own = str(value.get("module", "keras" if keras_own else "")).startswith("keras")
            return {k: serving(v, keras_own) for k, v in value.items()
                    if k != "compile_config" and not (keras_own and k in TRAINING_ONLY)}
        if isinstance(value, list | tuple):
            return [serving(v, keras_own) for v in value]
        return value

    if not _graph_stated(model):
        return None
    try:
        weights = [(w.path, tuple(w.shape), str(w.dtype)) for w in model.weights]
        text = json.dumps([serving(model.get_config(), True), model.input_shape, weights], sort_keys=True,
                          default=str)
    except Exception:  # a layer that cannot state its configuration, or states it oddly: measured anew
        return None
    return hashlib.sha256(text.encode()).hexdigest()


def _graph_stated(model: keras.Model) -> bool:
    """Keras' functional and sequential models state their graph in their configuration, layer by layer."""
    from keras.src.models.functional import Functional

    return isinstance(model, Functional | keras.Sequential) and all(
        _graph_stated(layer) for layer in model.layers if isinstance(layer, keras.Model))


def measure_once(model: keras.Model) -> Cost:
    """:func:`measure`, once per architecture in this process: a study's trials that differ only in
    dropout, weight decay or learning rate serve at the same cost, and measuring it again costs a trial
    repeated calls and freshly traced functions (BENCHMARKS.md, 'A trial's own work'). The times are
    the first measurement's, with its noise."""
    key = architecture(model)
    if key is None:
        return measure(model)
    if key not in _MEASURED:
        _MEASURED[key] = measure(model)
    return _MEASURED[key]
