"""keras-tuner's own code run unchanged: the getting-started guide's ``build_model(hp)`` and HyperModels
(written into tmp_path) trained with the values they logged, served raw 0-255 pixels, and rebuilt bit for bit;
keras-tuner's documented ``hp`` calls answered by a real Optuna study with exactly keras-tuner's values;
a model compiled with each kind of loss given its labels in the right form; a HyperModel's own fit called
with the platform's callbacks, its batch_size and shuffle in effect and its return value read as
keras-tuner reads it; a define-by-run study resumed, and refused on resume with an edited builder; and
every builder the platform cannot train refused before any MLflow run exists."""

from __future__ import annotations

import importlib.metadata
import io
import json
import math
import re
import sys
import warnings

import keras
import mlflow
import numpy as np
import optuna
import pytest
from conftest import REPO, in_process
from mlflow.tracking import MlflowClient
from test_builders import (
    all_runs,
    last_json,
    new_process_builders,
    reproduce_exactly,
    served_answer,
    sha256,
    write,
)

from fmnist_exp import params as P
from fmnist_exp.data import FASHION_MNIST
from fmnist_exp.model import builder as user
from fmnist_exp.model.hyperparameters import HyperParameters
from fmnist_exp.train import builder_fit

# keras-tuner's getting-started guide's build_model as the guide writes it (its Keras 3 imports), beside the
# guide's HyperModel: the example file a user copies from
GUIDE = (REPO / "examples" / "keras_tuner_guide.py").read_text()
GUIDE_NAMES = {"num_layers", "units_0", "units_1", "units_2", "activation", "dropout", "lr"}

# The guide's HyperModel whose fit tunes the training too (shuffle, as the guide's; batch_size beside it),
# duck-typed (no keras_tuner import). Its fit writes, beside this file, how many batches the first epoch
# trained on how many images: the batch size Keras trained with, seen from inside Keras.
HYPERMODEL = '''"""keras-tuner's guide: a HyperModel that tunes its fit's arguments."""
import json
import math
from pathlib import Path

import keras
from keras import layers

SEEN = Path(__file__).with_name("batches.jsonl")


class Batches(keras.callbacks.Callback):
    def __init__(self, images):
        super().__init__()
        self.images, self.batches = images, 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            with open(SEEN, "a") as f:
                f.write(json.dumps({"images": self.images, "batches": self.batches,
                                    "steps": self.params["steps"]}) + "\\n")


class MyHyperModel:
    def build(self, hp):
        model = keras.Sequential()
        model.add(layers.Flatten())
        model.add(layers.Dense(units=hp.Int("units", min_value=32, max_value=512, step=32), activation="relu"))
        model.add(layers.Dense(10, activation="softmax"))
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        return model

    def fit(self, hp, model, *args, **kwargs):
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), Batches(len(args[0]))]
        return model.fit(*args, batch_size=hp.Choice("batch_size", [16, 32]), shuffle=hp.Boolean("shuffle"),
                         **kwargs)
'''

# HyperModels whose network records what keras.Model.fit itself was called with (in-process tests only: a
# process that has not run this file cannot load a model of that class), and instances of a HyperModel
# returning each kind of value keras-tuner reads.
FITS = '''"""HyperModels of the tests: each overrides fit."""
import keras
import numpy as np
from keras import layers

CALLS = []  # keras.Model.fit's own arguments, one entry per call


@keras.saving.register_keras_serializable(package="test_keras_tuner")
class Recording(keras.Sequential):
    def fit(self, *args, **kwargs):
        CALLS.append({"x": args[0].shape, "x_max": float(args[0].max()), "y": args[1].shape,
                      "batch_size": kwargs.get("batch_size"), "shuffle": kwargs.get("shuffle"),
                      "epochs": kwargs.get("epochs"), "validation": kwargs["validation_data"][0].shape,
                      "callbacks": [type(c).__name__ for c in kwargs.get("callbacks") or []]})
        return super().fit(*args, **kwargs)


def network(hp, model=keras.Sequential):
    net = model([layers.Flatten(), layers.Dense(hp.Int("units", 32, 64, step=32), activation="relu"),
                 layers.Dense(10, activation="softmax")])
    net.compile(optimizer=keras.optimizers.Adam(3e-3), loss="categorical_crossentropy", metrics=["accuracy"])
    return net


class Tuned:
    def build(self, hp):
        return network(hp, Recording)

    def fit(self, hp, model, *args, **kwargs):
        return model.fit(*args, batch_size=hp.Choice("batch_size", [16, 32]), shuffle=hp.Boolean("shuffle"),
                         **kwargs)


class Bare:
    """Its fit drops **kwargs and gives its own epochs."""

    def build(self, hp):
        return network(hp, Recording)

    def fit(self, hp, model, x, y, **kwargs):
        return model.fit(x, y, epochs=1)


class Returning:
    def __init__(self, kind):
        self.kind = kind

    def build(self, hp):
        return network(hp)

    def fit(self, hp, model, x, y, validation_data=None, **kwargs):
        history = model.fit(x, y, validation_data=validation_data, **kwargs)
        if self.kind == "float":  # the guide's: a number, no objective
            x_val, y_val = validation_data
            return np.mean(np.abs(model.predict(x_val, verbose=0) - y_val))
        if self.kind == "dict":
            return {"metric_a": 0.25, "val_accuracy": history.history["val_accuracy"][-1], "note": "not a number"}
        if self.kind == "list":  # one per execution: averaged
            return [{"metric_a": 0.2}, {"metric_a": 0.4}]
        # "none": trained, and nothing returned


returns_float = Returning("float")
returns_dict = Returning("dict")
returns_list = Returning("list")
returns_none = Returning("none")
'''

# One network compiled with each kind of loss Keras has for classes: one-hot labels or class numbers.
LOSSES = '''"""A network compiled with the loss hp["loss_kind"] names."""
import keras
from keras import layers

KINDS = {
    "categorical_crossentropy": ("categorical_crossentropy", "softmax"),
    "CategoricalCrossentropy": (keras.losses.CategoricalCrossentropy(), "softmax"),
    "sparse_categorical_crossentropy": ("sparse_categorical_crossentropy", "softmax"),
    "SparseCategoricalCrossentropy_logits": (keras.losses.SparseCategoricalCrossentropy(from_logits=True), None),
}


def build_model(hp):
    loss, activation = KINDS[hp.Choice("loss_kind", list(KINDS))]
    model = keras.Sequential([layers.Flatten(), layers.Dense(64, activation="relu"),
                              layers.Dense(10, activation=activation)])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss, metrics=["accuracy"])
    return model
'''

# Builders the platform refuses before any run; the lines that raise are marked.
BAD = '''"""keras-tuner builders that cannot be trained."""
import keras
from keras import layers


def raises(hp):
    units = hp.Int("units", 32, 64, step=32)
    return units / 0  # raises here


def not_a_model(hp):
    return {"units": hp.Int("units", 32, 64, step=32)}


class FitRaises:
    def build(self, hp):
        model = keras.Sequential([layers.Flatten(), layers.Dense(10, activation="softmax")])
        model.compile(optimizer="adam", loss="categorical_crossentropy")
        return model

    def fit(self, hp, model, *args, **kwargs):
        raise RuntimeError("no GPU here")  # fit raises here
'''


def line_of(source: str, marker: str) -> int:
    return next(i for i, line in enumerate(source.splitlines(), 1) if marker in line)


def grid(hp: HyperParameters, name: str) -> tuple | None:
    return hp.defined[name].grid


def custom(argv: list[str], capsys) -> tuple[int, str, str]:
    """The CLI's `custom` in-process (the code a subprocess runs, without starting TensorFlow again)."""
    from fmnist_exp import cli as command_line

    code = command_line.main(["custom", *argv, "--system_metrics", "false"])
    out, err = capsys.readouterr()
    return code, out, err


def calls(ref: str) -> list[dict]:
    """What keras.Model.fit itself was called with by the HyperModel ``ref`` names in FITS (as loaded)."""
    return user.load(ref).fn.__func__.__globals__["CALLS"]


def params_of(run_id: str) -> dict[str, str]:
    return mlflow.get_run(run_id).data.params


def dense_layers(model: keras.Model) -> list:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]


# ----------------------------------------------------------------------------- keras-tuner's hp calls, one by one


def test_int_ranges_and_steps_are_keras_tuners_values():
    hp = HyperParameters()
    assert hp.Int("units", min_value=32, max_value=512, step=32) == 32
    assert grid(hp, "units") == tuple(range(32, 513, 32)) and len(grid(hp, "units")) == 16
    hp.Int("log_units", 2, 32, step=2, sampling="log")  # keras-tuner's docstring: the step multiplies
    assert grid(hp, "log_units") == (2, 4, 8, 16, 32)
    hp.Int("n", 6, 13, step=3)  # max_value only where the steps land on it
    assert grid(hp, "n") == (6, 9, 12)
    hp.Int("off_grid", 32, 500, step=2, sampling="log")
    assert grid(hp, "off_grid") == (32, 64, 128, 256)
    hp.Int("reverse", 32, 512, step=2, sampling="reverse_log")
    assert grid(hp, "reverse") == (512, 480, 416, 288, 32)
    hp.Int("every", 1, 3)
    assert grid(hp, "every") == (1, 2, 3)
    assert all(isinstance(v, int) for name in hp.defined for v in grid(hp, name))


def test_float_ranges_are_continuous_or_keras_tuners_grids():
    hp = HyperParameters()
    assert hp.Float("lr", 1e-4, 1e-2, sampling="log") == 1e-4 and grid(hp, "lr") is None
    assert hp.defined["lr"].contains(3e-3) and not hp.defined["lr"].contains(2e-2)
    hp.Float("dropout", 0, 1, step=0.2)  # keras-tuner's floor division: 1.0 is not among them
    assert grid(hp, "dropout") == (0.0, 0.2, 0.4, 0.6000000000000001, 0.8)
    hp.Float("c", 0.001, 10, step=10, sampling="log")
    assert grid(hp, "c") == pytest.approx((0.001, 0.01, 0.1, 1.0, 10.0), rel=1e-12)
    hp.Float("reverse", 1.0, 100.0, step=10, sampling="reverse_log")
    assert grid(hp, "reverse") == pytest.approx((100.0, 91.0, 1.0), rel=1e-12)
    hp.Float("tenths", 0.1, 0.5, step=0.1)
    assert len(grid(hp, "tenths")) == 5 and grid(hp, "tenths")[-1] == pytest.approx(0.5)


def test_defaults_are_keras_tuners():
    hp = HyperParameters()
    assert hp.Int("units", 32, 512, step=32) == 32  # min_value
    assert hp.Int("layers", 1, 3, default=2) == 2
    assert hp.Float("lr", 1e-4, 1e-2, sampling="log") == 1e-4
    assert hp.Float("rate", 0.0, 0.5, default=0.25) == 0.25
    assert hp.Choice("activation", ["relu", "tanh"]) == "relu"  # the first choice
    assert hp.Choice("width", [16, 32, 64], default=32) == 32
    assert hp.Boolean("dropout") is False and hp.Boolean("bias", default=True) is True
    assert hp.Fixed("classes", 10) == 10
    assert hp.values == {"units": 32, "layers": 2, "lr": 1e-4, "rate": 0.25, "activation": "relu", "width": 32,
                         "dropout": False, "bias": True, "classes": 10}
    assert hp.recorded() == hp.values


@pytest.mark.parametrize(("call", "error", "said"), [
    (lambda hp: hp.Int("u", 1, 8, step=1.5), ValueError, "hp.Int('u'): step must be an int, got 1.5"),
    (lambda hp: hp.Int("u", 1.5, 8), ValueError, "hp.Int('u'): min_value must be an int, got 1.5"),
    (lambda hp: hp.Int("u", 8, 1), ValueError, "min_value 8 is larger than max_value 1"),
    (lambda hp: hp.Float("u", 1.0, 0.5), ValueError, "min_value 1.0 is larger than max_value 0.5"),
    (lambda hp: hp.Float("u", 0, 1, sampling="log"), ValueError, "sampling='log' needs min_value > 0, got 0"),
    (lambda hp: hp.Int("u", -2, 8, sampling="reverse_log"), ValueError, "sampling='reverse_log' needs min_value > 0"),
    (lambda hp: hp.Int("u", 2, 32, step=1, sampling="log"), ValueError, "step must be > 1 with sampling='log'"),
    (lambda hp: hp.Float("u", 0, 1, sampling="uniform"), ValueError, "sampling must be 'linear', 'log' or"),
    (lambda hp: hp.Choice("u", [1, 2.0]), TypeError, "a Choice can contain only one type of value"),
    (lambda hp: hp.Choice("u", [None, "a"]), TypeError, "a Choice can contain only one type of value"),
    (lambda hp: hp.Choice("u", []), ValueError, "values must be a non-empty list"),
    (lambda hp: hp.Choice("u", ["relu", "tanh"], default="selu"), ValueError,
     "the default value should be one of the choices"),
    (lambda hp: hp.Boolean("u", default="yes"), ValueError, "default must be True or False"),
    (lambda hp: hp.Fixed("u", [1, 2]), ValueError, "the value must be an int, float, str or bool"),
])
def test_definitions_keras_tuner_refuses_are_refused(call, error, said):
    hp = HyperParameters()
    with pytest.raises(error, match=re.escape(said)):
        call(hp)
    assert hp.values == {}


def test_a_conditional_scope_answers_none_where_inactive_and_records_nothing():
    hp = HyperParameters({"model": "mlp"})
    assert hp.Choice("model", ["mlp", "cnn"]) == "mlp"
    with hp.conditional_scope("model", "cnn"):
        filters = hp.Int("filters", 8, 64, step=8)
        with hp.conditional_scope("filters", [8, 16]):  # its parent inactive: inactive too
            kernel = hp.Choice("kernel", [3, 5])
    with hp.conditional_scope("model", ["mlp"]):
        units = hp.Int("units", 32, 128, step=32)
    depth = hp.Int("depth", 1, 3, parent_name="model", parent_values=["cnn"])  # the keyword form
    width = hp.Int("width", 8, 16, step=8, parent_name="model", parent_values="mlp")
    assert (filters, kernel, units, depth, width) == (None, None, 32, None, 8)
    assert hp.values == {"model": "mlp", "units": 32, "width": 8} == hp.recorded()
    assert set(hp.defined) == {"model", "filters", "kernel", "units", "depth", "width"}
    assert hp.is_active("units") and not hp.is_active("filters") and not hp.is_active("depth")
    with pytest.raises(ValueError, match="filters is currently inactive"):
        hp["filters"]
    assert "filters" not in hp and "units" in hp
    with pytest.raises(ValueError, match="`HyperParameter` named: layers not defined."):
        with hp.conditional_scope("layers", 2):
            pass
    with pytest.raises(ValueError, match="cannot have the same name as its parent"):
        with hp.conditional_scope("model", "mlp"):
            hp.Choice("model", ["a", "b"])


def test_get_of_an_inactive_name_raises_as_keras_tuners():
    hp = HyperParameters({"model": "mlp"})
    hp.Choice("model", ["mlp", "cnn"])
    with hp.conditional_scope("model", "cnn"):
        hp.Int("filters", 8, 64, step=8)
    with pytest.raises(ValueError, match="filters is currently inactive"):
        hp.get("filters")


def test_names_scopes_repeats_and_get():
    hp = HyperParameters()
    with hp.name_scope("block1"):
        assert hp.Int("units", 8, 16, step=8, default=16) == 16
        assert hp.get("units") == 16  # scoped names are read in their scope too
    with hp.name_scope("block2"):
        hp.Int("units", 8, 16, step=8)
    assert hp.values == {"block1/units": 16, "block2/units": 8}
    assert hp.get("block1/units") == 16 and hp["block2/units"] == 8
    # defined again (the guide's Choice in a loop): the first definition's value, its range not compared
    assert hp.Choice("activation", ["relu", "tanh"]) == "relu"
    assert hp.Choice("activation", ["tanh", "relu"]) == "relu"
    assert hp.Int("u", 32, 512, step=32) == 32 and hp.Int("u", 1, 5) == 32
    assert hp.defined["u"].args["min_value"] == 32
    with pytest.raises(KeyError, match="the builder reads hp\\['nothing'\\], but it was not given"):
        hp["nothing"]


def test_given_values_are_checked_against_the_definition():
    assert HyperParameters({"units": 64}).Int("units", 32, 512, step=32) == 64
    assert HyperParameters({"dropout": 0.6}).Float("dropout", 0, 1, step=0.2) == 0.6  # 0.6000000000000001's
    assert HyperParameters({"lr": 3e-3}).Float("lr", 1e-4, 1e-2, sampling="log") == 3e-3
    refused = [
        ({"units": 50}, lambda hp: hp.Int("units", 32, 512, step=32),
         "units=50 is given, but hp.Int('units', min_value=32, max_value=512, step=32, sampling='linear') cannot take "
         "it (it takes 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, ...)"),
        ({"dropout": 1.0}, lambda hp: hp.Float("dropout", 0, 1, step=0.2), "dropout=1.0 is given, but hp.Float("),
        ({"lr": 0.05}, lambda hp: hp.Float("lr", 1e-4, 1e-2, sampling="log"), "lr=0.05 is given, but hp.Float("),
        ({"activation": "selu"}, lambda hp: hp.Choice("activation", ["relu", "tanh"]),
         "activation='selu' is given, but hp.Choice('activation', values=['relu', 'tanh']) cannot take it "
         "(it takes 'relu', 'tanh')"),
        ({"w": 3}, lambda hp: hp.Int("w", 2, 32, step=2, sampling="log"), "(it takes 2, 4, 8, 16, 32)"),
    ]
    for given, call, said in refused:
        with pytest.raises(ValueError, match=re.escape(said)):
            call(HyperParameters(given))


def test_a_platform_value_of_the_same_name_answers_only_where_the_definition_takes_it():
    """batch_size is the platform's too: outside a search its recipe value answers a definition that can take
    it; one that cannot take it answers keras-tuner's default; a trial's suggestion comes before it."""
    assert HyperParameters(platform={"batch_size": 32}).Choice("batch_size", [16, 32]) == 32
    assert HyperParameters(platform={"batch_size": 128}).Choice("batch_size", [16, 32]) == 16
    study = optuna.create_study()
    study.enqueue_trial({"batch_size": 16})
    trial = study.ask()
    assert HyperParameters(draw=trial, platform={"batch_size": 32}).Choice("batch_size", [16, 32]) == 16


def guide_with_everything(hp: HyperParameters) -> None:
    """The guide's calls and the docstrings' ranges, as a builder makes them."""
    for i in range(hp.Int("num_layers", 1, 3)):
        hp.Int(f"units_{i}", min_value=32, max_value=512, step=32)
        hp.Choice("activation", ["relu", "tanh"])
    hp.Boolean("dropout")
    hp.Float("lr", min_value=1e-4, max_value=1e-2, sampling="log")
    hp.Int("log_units", 2, 32, step=2, sampling="log")
    hp.Int("n", 6, 13, step=3)
    hp.Float("rate", 0, 1, step=0.2)
    hp.Float("c", 0.001, 10, step=10, sampling="log")
    hp.Int("reverse", 32, 512, step=2, sampling="reverse_log")
    kind = hp.Choice("model", ["mlp", "cnn"])
    with hp.conditional_scope("model", "cnn"):
        hp.Int("filters", 8, 64, step=8)
    with hp.name_scope("head"):
        hp.Choice("units", [16, 32])
    assert kind in ("mlp", "cnn")


def test_a_real_optuna_study_suggests_exactly_keras_tuners_values_under_the_same_names():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    enqueued = {"num_layers": 3, "units_0": 64, "units_1": 96, "units_2": 512, "activation": "tanh", "dropout": True,
                "lr": 0.005, "log_units": 16, "n": 12, "rate": 0.8, "c": 10.0, "reverse": 288, "model": "cnn",
                "filters": 24, "head/units": 32}
    study.enqueue_trial(enqueued)
    seen: dict[str, set] = {}
    for i in range(100):
        trial = study.ask()
        hp = HyperParameters(draw=trial)
        guide_with_everything(hp)
        assert trial.params == hp.values  # the same names and values, inactive ones in neither
        if i == 0:
            assert hp.values == enqueued  # an enqueued point comes back as given
        assert ("filters" in trial.params) == (hp.values["model"] == "cnn")
        assert all(f"units_{j}" in trial.params for j in range(hp.values["num_layers"]))
        assert not any(f"units_{j}" in trial.params for j in range(hp.values["num_layers"], 3))
        for name, value in hp.values.items():
            seen.setdefault(name, set()).add(value)
        study.tell(trial, 0.5)
    assert seen["num_layers"] == {1, 2, 3} and seen["activation"] == {"relu", "tanh"}
    assert seen["dropout"] == {True, False} and seen["model"] == {"mlp", "cnn"}
    assert seen["units_0"] <= set(range(32, 513, 32)) and len(seen["units_0"]) > 10
    assert seen["filters"] <= {8, 16, 24, 32, 40, 48, 56, 64}
    assert seen["log_units"] == {2, 4, 8, 16, 32} and seen["n"] == {6, 9, 12}
    assert seen["rate"] == {0.0, 0.2, 0.4, 0.6000000000000001, 0.8}  # never Optuna's 1.0
    assert seen["c"] == {0.001, 0.01, 0.1, 1.0, 10.0} and seen["reverse"] == {512, 480, 416, 288, 32}
    assert seen["head/units"] == {16, 32}
    assert all(1e-4 <= lr <= 1e-2 for lr in seen["lr"]) and len(seen["lr"]) > 90  # continuous
    assert all(isinstance(v, int) and not isinstance(v, bool) for v in seen["units_0"] | seen["reverse"])
    lr = study.trials[1].distributions["lr"]
    assert isinstance(lr, optuna.distributions.FloatDistribution) and lr.log and (lr.low, lr.high) == (1e-4, 1e-2)
    units = study.trials[1].distributions["units_0"]
    assert isinstance(units, optuna.distributions.IntDistribution) and (units.low, units.high, units.step) == (
        32, 512, 32)
    rate = study.trials[1].distributions["rate"]
    assert isinstance(rate, optuna.distributions.CategoricalDistribution) and 1.0 not in rate.choices
    trial = study.ask()  # hp.Fixed: recorded as keras-tuner's values hold it, never searched
    hp = HyperParameters(draw=trial)
    assert hp.Fixed("classes", 10) == 10 and hp.values == {"classes": 10} and trial.params == {}


# ----------------------------------------------------------------------------- the guide's network, trained


def test_the_guides_build_model_is_built_with_the_values_it_defines(tmp_path):
    """Given some values: the rest are keras-tuner's defaults; the model is the one they describe, fed 0-1
    pixels behind the platform's layer, so the whole answers raw 0-255 pixels; the recipe made explicit
    logs its compiled optimizer and rate instead of the recipe's."""
    guide = write(tmp_path, GUIDE, "guide.py")
    ref = f"{guide}:build_model"
    b = user.load(ref)
    assert b.keras_tuner and b.fit is None and b.requires == ""
    given = {"num_layers": 2, "units_1": 96, "activation": "tanh", "dropout": True, "lr": 0.004}
    served, hp = user.build(b, given, FASHION_MNIST)
    assert hp.values == {**given, "units_0": 32}
    inner = user.inner(served)
    assert [(d.units, d.activation.__name__) for d in dense_layers(inner)] == [(32, "tanh"), (96, "tanh"),
                                                                            (10, "softmax")]
    assert [layer.rate for layer in inner.layers if isinstance(layer, keras.layers.Dropout)] == [0.25]
    assert float(keras.ops.convert_to_numpy(inner.optimizer.learning_rate)) == pytest.approx(0.004)
    x = np.random.default_rng(0).integers(0, 256, (4, 28, 28)).astype("float32")
    np.testing.assert_allclose(np.asarray(served(x)), np.asarray(inner(x[..., None] / 255.0)), atol=1e-6)

    p = P.network("custom", {"model": ref, **given})
    q = builder_fit.concrete(p, FASHION_MNIST)
    assert q.hp_values() == {**given, "units_0": 32}
    logged = builder_fit.logged(q, served)
    assert (logged["compiled_by"], logged["compiled_optimizer"], logged["compiled_loss"]) == (
        "builder", "Adam", "categorical_crossentropy")
    assert logged["compiled_learning_rate"] == pytest.approx(0.004) and "learning_rate" not in logged
    assert builder_fit.label_form(inner) == "one_hot"


@pytest.mark.slow
def test_the_guides_build_model_trains_what_it_logged_serves_raw_pixels_and_reproduces(tracking, tmp_path, capsys):
    """`custom` on the guide's build_model: the run logs the values it trained (given, and keras-tuner's default
    for the rest), which the logged model has (its Dense widths, activation, dropout; the compiled rate); the
    logged classifier and the real `mlflow models serve` answer raw 0-255 pixels as the user's model answers
    them scaled to 0-1; `reproduce --exact true` rebuilds it bit for bit. On digits (nothing here is
    Fashion-MNIST's own); `custom` and `reproduce` run in-process (the CLI's main): no process is what this
    checks; the server is a real one."""
    from PIL import Image

    from fmnist_exp.data import load_dataset

    guide = write(tmp_path, GUIDE, "guide.py")
    code, out, err = custom(["--data", "digits", "--model", "guide.py:build_model", "--hp",
                             "{num_layers: 2, units_1: 96, activation: tanh, dropout: true, lr: 0.004}", "--epochs",
                             "1"], capsys)
    assert code == 0, err[-3000:]
    run_id = last_json(out)["run_id"]
    run = mlflow.get_run(run_id)
    p, tags = run.data.params, run.data.tags
    assert json.loads(p["hp"]) == {"num_layers": 2, "units_0": 32, "units_1": 96, "activation": "tanh",
                                   "dropout": True, "lr": 0.004}
    assert (p["num_layers"], p["units_0"], p["units_1"], p["activation"], p["dropout"], p["lr"]) == (
        "2", "32", "96", "tanh", "True", "0.004")
    assert (p["compiled_by"], p["compiled_optimizer"], p["compiled_loss"]) == (
        "builder", "Adam", "categorical_crossentropy")
    assert float(p["compiled_learning_rate"]) == pytest.approx(float(p["lr"]), rel=1e-6)
    assert not {"learning_rate", "warmup_epochs", "label_smoothing"} & set(p)  # the recipe's, which it did not use
    assert p["model_sha256"] == sha256(guide) and tags["model_builder"] == "guide.py:build_model"
    assert "model_requires" not in tags  # no keras_tuner import
    history = MlflowClient().get_metric_history(run_id, "val_accuracy")
    assert len(history) == 1 and run.data.metrics["fit_returned_val_accuracy"] == pytest.approx(history[0].value)

    served = mlflow.keras.load_model(tags["model_uri"])
    inner = user.inner(served)
    assert [(d.units, d.activation.__name__) for d in dense_layers(inner)] == [
        (int(p["units_0"]), p["activation"]), (int(p["units_1"]), p["activation"]), (10, "softmax")]
    assert [type(layer).__name__ for layer in inner.layers].count("Dropout") == 1
    assert served.input_shape == (None, 8, 8)

    raw = np.random.default_rng(0).integers(0, 256, (5, 8, 8)).astype("uint8")
    expected = np.asarray(inner(raw[..., None].astype("float32") / 255.0))
    answers = mlflow.pyfunc.load_model(tags["classifier_uri"]).predict(raw)
    np.testing.assert_allclose(np.stack(answers["probabilities"]), expected, atol=1e-5)
    assert answers["label"].tolist() == expected.argmax(axis=1).tolist()

    png = io.BytesIO()
    Image.fromarray(load_dataset("digits").x_test[0]).save(png, format="PNG")  # a real test digit, 8x8
    png = png.getvalue()
    image = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype="float32")
    answer = served_answer(tags["classifier_uri"], png, tmp_path, tracking)
    probs = np.asarray(inner(image[None, ..., None] / 255.0))[0]
    np.testing.assert_allclose(answer["probabilities"], probs, atol=1e-5)
    assert answer["label"] == int(probs.argmax())

    report = reproduce_exactly(f"runs:/{run_id}/model", capsys)
    assert report["reproduces_run_id"] == run_id
    [rebuild] = [r for r in all_runs() if r.data.tags.get("reproduces_run_id") == run_id]
    assert rebuild.data.params["hp"] == p["hp"] and rebuild.data.params["compiled_learning_rate"] == \
        p["compiled_learning_rate"]


@pytest.mark.slow
def test_a_hypermodel_whose_fit_tunes_batch_size_trains_with_it_and_reproduces(tracking, tmp_path, capsys):
    """The guide's HyperModel with a fit that tunes shuffle and batch_size: the run logs the batch size its
    fit gave (the Choice's first: the recipe's 128 is not among its values) and the first epoch trained
    ceil(images / that) batches; `reproduce --exact true` trains the same batches, bit for bit (on digits; both
    in-process: the CLI's main)."""
    builder = write(tmp_path, HYPERMODEL, "hypermodel.py")
    code, out, err = custom(["--data", "digits", "--model", "hypermodel.py:MyHyperModel", "--hp", "{shuffle: true}",
                             "--epochs", "1", "--train_samples", "1000"], capsys)
    assert code == 0, err[-3000:]
    run_id = last_json(out)["run_id"]
    p = params_of(run_id)
    assert p["batch_size"] == "16" and int(p["batch_size"]) in (16, 32)
    assert json.loads(p["hp"]) == {"units": 32, "shuffle": True} and p["shuffle"] == "True"
    assert p["model_sha256"] == sha256(builder)
    [seen] = [json.loads(line) for line in (tmp_path / "batches.jsonl").read_text().splitlines()]
    assert seen["batches"] == seen["steps"] == math.ceil(seen["images"] / int(p["batch_size"]))
    assert seen["images"] == 1000  # train_samples

    reproduce_exactly(f"runs:/{run_id}/model", capsys)
    again = [json.loads(line) for line in (tmp_path / "batches.jsonl").read_text().splitlines()]
    assert again == [seen, seen]


# ----------------------------------------------------------------------------- each kind of loss


@pytest.mark.parametrize(("kind", "form"), [
    ("categorical_crossentropy", "one_hot"),
    ("CategoricalCrossentropy", "one_hot"),
    ("sparse_categorical_crossentropy", "sparse"),
    ("SparseCategoricalCrossentropy_logits", "sparse"),
])
def test_a_model_compiled_with_each_kind_of_loss_gets_its_labels_in_that_form(tmp_path, dataset, kind, form):
    from fmnist_exp.train import fit as F
    from fmnist_exp.train import job

    ref = f"{write(tmp_path, LOSSES, 'losses.py')}:build_model"
    p = builder_fit.concrete(P.network("custom", {"model": ref, "loss_kind": kind, "epochs": 1,
                                                  "train_samples": 2000}), dataset.info)
    served, _ = F.fresh_model(p, dataset.info)
    inner = user.inner(served)
    assert builder_fit.label_form(inner) == form
    assert user.outputs_logits(inner, dataset.info, high=1.0) == kind.endswith("logits")
    s = job.splits(dataset, p)
    result, returned = builder_fit.fit_itself(served, s, p)
    assert result.epochs_run == 1 and result.history["val_accuracy"][0] > 0.5  # chance is 0.1
    assert returned["val_accuracy"] == result.history["val_accuracy"][0]
    probs = np.asarray(served(s.x_val[:64].astype("float32")))  # probabilities, logits or not
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-2)  # trained in bfloat16 where the CPU has it
    assert np.mean(probs.argmax(axis=1) == s.y_val[:64]) > 0.5


# ----------------------------------------------------------------------------- a HyperModel's own fit


def test_a_hypermodels_fit_trains_with_the_platforms_callbacks_and_its_own_arguments(tracking, tmp_path, capsys):
    """The fit gets x as 0-1 float32 images with a channel axis, y one-hot, the validation data and the
    platform's callbacks (each epoch's metrics on the MLflow run); keras.Model.fit itself gets the fit's
    batch_size and shuffle (the recipe's batch size, 32, where the Choice takes it); what the fit returned
    (a History) is read at its best epoch. Trained in mixed precision (auto's choice on a GPU or a bfloat16
    CPU), the model logged is a float32 copy, and carries no optimizer: loading it says nothing about one. On
    digits (360 test images to score, not 10,000: nothing here is Fashion-MNIST's own)."""
    from fmnist_exp.data import load_dataset

    fits = write(tmp_path, FITS, "fits.py")
    code, out, err = custom(["--data", "digits", "--model", "fits.py:Tuned", "--epochs", "2", "--train_samples",
                             "600", "--batch_size", "32", "--precision", "mixed_bfloat16"], capsys)
    assert code == 0, err[-3000:]
    run_id = last_json(out)["run_id"]
    assert user.load("fits.py:Tuned").file == fits.resolve()
    [call] = calls("fits.py:Tuned")  # the dry call before the run stops before keras.Model.fit
    assert call["x"] == (600, 8, 8, 1) and 0 < call["x_max"] <= 1.0 and call["y"] == (600, 10)
    # the validation split: a tenth of the training set
    assert call["validation"] == (round(0.1 * len(load_dataset("digits").y_train)), 8, 8, 1)
    assert (call["batch_size"], call["shuffle"], call["epochs"]) == (32, False, 2)
    assert {"EpochLogger", "ValidationAccuracy", "TerminateOnNaN"} <= set(call["callbacks"])
    p = params_of(run_id)
    assert (p["batch_size"], p["epochs"], json.loads(p["hp"])) == ("32", "2", {"units": 32, "shuffle": False})
    history = [m.value for m in MlflowClient().get_metric_history(run_id, "val_accuracy")]
    assert len(history) == 2  # one per epoch, by the platform's callback
    metrics = mlflow.get_run(run_id).data.metrics
    best = int(np.argmax(history))
    assert metrics["fit_returned_best_epoch"] == best
    assert metrics["fit_returned_val_accuracy"] == pytest.approx(history[best])
    assert "fit_returned_loss" in metrics and "fit_returned_val_loss" in metrics
    assert p["precision_used"] == "mixed_bfloat16"
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        logged = mlflow.keras.load_model(mlflow.get_run(run_id).data.tags["model_uri"])
    assert [str(w.message) for w in said if "optimizer" in str(w.message)] == []
    assert not user.inner(logged).compiled and logged.dtype_policy.name == "float32"


def test_a_fit_that_drops_kwargs_still_gets_the_platforms_callbacks_and_gives_its_own_epochs(tmp_path, dataset):
    """keras-tuner's guide says to pass **kwargs on (they hold the callbacks); a fit that does not still trains
    with the platform's callbacks and validation data, and the epochs it gives are the recipe's (and logged)."""
    from fmnist_exp.train import fit as F
    from fmnist_exp.train import job

    ref = f"{write(tmp_path, FITS, 'fits.py')}:Bare"
    p = builder_fit.concrete(P.network("custom", {"model": ref, "epochs": 2, "train_samples": 300}), dataset.info)
    assert p.epochs == 1 and p.batch_size == P.network("custom", {"model": ref}).batch_size
    served, _ = F.fresh_model(p, dataset.info)
    result, _ = builder_fit.fit_itself(served, job.splits(dataset, p), p)
    [call] = calls(ref)
    assert (call["epochs"], call["batch_size"], call["shuffle"]) == (1, p.batch_size, None)
    assert call["validation"] == (6000, 28, 28, 1)
    assert {"ValidationAccuracy", "TerminateOnNaN"} <= set(call["callbacks"])
    assert result.epochs_run == 1 and len(result.history["val_accuracy"]) == 1


@pytest.mark.parametrize(("instance", "read"), [
    ("returns_float", lambda r: set(r) == {"value"} and 0 < r["value"] <= 0.2),
    ("returns_dict", lambda r: set(r) == {"metric_a", "val_accuracy"} and r["metric_a"] == 0.25),
    ("returns_list", lambda r: r == {"metric_a": pytest.approx(0.3)}),
])
def test_what_a_hypermodels_fit_returns_is_read_as_keras_tuner_reads_it(tmp_path, dataset, instance, read):
    from fmnist_exp.train import fit as F
    from fmnist_exp.train import job

    ref = f"{write(tmp_path, FITS, 'fits.py')}:{instance}"
    assert user.load(ref).fit is not None
    p = builder_fit.concrete(P.network("custom", {"model": ref, "epochs": 1, "train_samples": 500}), dataset.info)
    served, _ = F.fresh_model(p, dataset.info)
    _, returned = builder_fit.fit_itself(served, job.splits(dataset, p), p)
    assert read(returned), returned


def test_a_fit_that_returns_none_is_refused_and_its_run_ends_failed(tracking, tmp_path, capsys):
    write(tmp_path, FITS, "fits.py")
    code, _, err = custom(["--model", "fits.py:returns_none", "--epochs", "1", "--train_samples", "500"], capsys)
    assert code == 2, err[-3000:]
    assert ("error: model=fits.py:returns_none: its fit returned None; keras-tuner needs the History, a number or a "
            "dict of metrics: did you forget to return model.fit(...)?") in err
    assert [r.info.status for r in all_runs()] == ["FAILED"]


# ----------------------------------------------------------------------------- refused before any run


def test_a_builder_that_raises_or_returns_no_model_is_refused_before_any_run(tracking, tmp_path, capsys):
    """The CLI's main in-process: exit 2, `error:` with what was wrong and where, no traceback, no run. (That a
    real `python -m fmnist_exp` process exits with that code: test_builders'
    test_the_cli_refuses_a_builder_that_raises_before_any_run, the same path for a builder that raises.)"""
    write(tmp_path, BAD, "bad.py")
    raises_at, fit_at = line_of(BAD, "# raises here"), line_of(BAD, "# fit raises here")
    checks = [
        ("bad.py:raises", "error: model=bad.py:raises raised ZeroDivisionError: division by zero (at "
                          f"bad.py:{raises_at})"),
        ("bad.py:not_a_model", "error: model=bad.py:not_a_model returned dict, not a Keras model: return a "
                               "keras.Model"),
        ("bad.py:FitRaises", f"error: model=bad.py:FitRaises: its fit raised RuntimeError: no GPU here (at "
                             f"bad.py:{fit_at})"),
    ]
    for model, said in checks:
        code, _, err = custom(["--model", model, "--epochs", "1"], capsys)
        assert code == 2 and said in err and "Traceback" not in err, (model, err[-3000:])
    assert all_runs() == []


STUDY = """description: keras-tuner's getting-started build_model, searched by Optuna define-by-run
model: {builder}:build_model
budget: {{n_trials: 2, epochs: 1, train_samples: 1000, timeout: 0}}
{extra}pruner: {{type: none}}
sampler: {{type: random}}
final: {{epochs: 1, train_samples: 1000}}
reference: off
"""
ENQUEUED = [{"num_layers": 2, "units_0": 64, "units_1": 96, "activation": "tanh", "dropout": True, "lr": 0.004},
            {"num_layers": 1, "units_0": 128, "activation": "relu", "dropout": False, "lr": 0.002}]
ENQUEUE = ("enqueue:\n  - {num_layers: 2, units_0: 64, units_1: 96, activation: tanh, dropout: true, lr: 0.004}\n"
           "  - {num_layers: 1, units_0: 128, activation: relu, dropout: false, lr: 0.002}\n")


def test_a_study_that_searches_a_name_the_builder_defines_is_refused(tracking, tmp_path):
    from fmnist_exp.study.setup import prepare

    guide = write(tmp_path, GUIDE.replace('f"units_{i}"', '"units"'), "guide.py")
    study = tmp_path / "kt.yaml"
    study.write_text(STUDY.format(builder=guide, extra="space:\n  units: {type: int, low: 32, high: 64}\n"))
    with pytest.raises(P.ConfigError, match=re.escape(f"model={guide}:build_model defines units itself (hp.Int, "
                                                      "hp.Choice, ...) and the study file gives it too: a name is "
                                                      "defined once")):
        prepare(P.tune_args({"study": str(study)}))
    hm = write(tmp_path, HYPERMODEL, "hypermodel.py")  # a training parameter fixed that its fit defines
    study.write_text(STUDY.format(builder=hm, extra="fixed: {batch_size: 32}\n").replace(":build_model",
                                                                                         ":MyHyperModel"))
    with pytest.raises(P.ConfigError, match="defines batch_size itself .* a name is defined once"):
        prepare(P.tune_args({"study": str(study)}))
    # an enqueued value of the builder's own that its definition cannot take: refused, naming its values
    guide = write(tmp_path, GUIDE, "the_guide.py")  # another file: a process loads a builder once
    study.write_text(STUDY.format(builder=guide, extra=ENQUEUE.replace("units_0: 64", "units_0: 50")))
    with pytest.raises(P.ConfigError, match=re.escape("units_0=50 is given, but hp.Int('units_0', min_value=32, "
                                                      "max_value=512, step=32, sampling='linear') cannot take it")):
        prepare(P.tune_args({"study": str(study)}))
    study.write_text(STUDY.format(builder=guide, extra=ENQUEUE))
    setup = prepare(P.tune_args({"study": str(study)}))
    assert setup.spec.family == "custom" and setup.spec.space == {} and setup.spec.enqueue == ENQUEUED
    assert all_runs() == []


def test_a_study_of_a_raising_builder_is_refused_before_any_run(tracking, tmp_path, capsys):
    from fmnist_exp import cli as command_line

    write(tmp_path, BAD, "bad.py")
    study = tmp_path / "bad.yaml"
    study.write_text(STUDY.format(builder="bad.py", extra="").replace(":build_model", ":raises"))
    code = command_line.main(["tune", "--study", str(study), "--storage", f"sqlite:///{tmp_path / 'optuna.db'}",
                              "--system_metrics", "false"])
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert f"raised ZeroDivisionError: division by zero (at bad.py:{line_of(BAD, '# raises here')})" in err
    assert "Traceback" not in err and all_runs() == []


# ----------------------------------------------------------------------------- a define-by-run study


def trial_runs() -> list:
    return [r for r in all_runs() if "optuna_trial" in r.data.tags and "final_of_trial" not in r.data.tags]


@pytest.mark.slow
def test_a_define_by_run_study_resumes_with_the_builders_names_and_refuses_an_edited_builder(tracking, tmp_path,
                                                                                              capsys, monkeypatch):
    """A study file naming the guide's build_model and no space, on digits: every trial's Optuna parameters are the
    builder's names (trials 0 and 1 the enqueued points), each trial's run trains and logs those values;
    resumed with one more trial on the same storage it goes on with the same names (a point the sampler
    draws: the first session drew none, see the replay test below), and its final retrain trains the best
    trial's values; the builder edited, a resume is refused before any run. All three sessions run in-process
    (the CLI's main); the refused resume reads the file as a new process does, as a user's is: a process loads
    a builder once (model.builder.load), so it runs with none loaded (test_builders.new_process_builders)."""
    guide = write(tmp_path, GUIDE, "guide.py")
    study_file = tmp_path / "kt.yaml"
    study_file.write_text(STUDY.format(builder=guide, extra=ENQUEUE))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tune = ["tune", "--study", str(study_file), "--storage", storage, "--data", "digits", "--system_metrics", "false"]
    done = in_process([*tune, "--register", "false"], capsys)
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="kt", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert [t.params for t in study.trials] == ENQUEUED  # the enqueued points first, in the builder's names

    done = in_process([*tune, "--n_trials", "1"], capsys)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = last_json(done.stdout)
    study = optuna.load_study(study_name="kt", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    runs = {int(r.data.tags["optuna_trial"]): r for r in trial_runs()}
    assert sorted(runs) == [0, 1, 2]
    for t in study.trials:
        n = t.params["num_layers"]
        assert set(t.params) == {"num_layers", *(f"units_{i}" for i in range(n)), "activation", "dropout", "lr"}
        assert set(t.params) <= GUIDE_NAMES and t.user_attrs["config"] == t.params
        assert "same_as_trial" not in t.user_attrs  # each trained
        p = runs[t.number].data.params
        assert json.loads(p["hp"]) == t.params and p["model_sha256"] == sha256(guide)
        assert float(p["compiled_learning_rate"]) == pytest.approx(t.params["lr"], rel=1e-6)
        inner = user.inner(mlflow.keras.load_model(runs[t.number].data.tags["model_uri"]))
        assert [d.units for d in dense_layers(inner)] == [t.params[f"units_{i}"] for i in range(n)] + [10]
    [final] = [r for r in all_runs() if "final_of_trial" in r.data.tags]
    best = study.best_trial
    assert summary["best_trial"] == best.number and final.data.tags["final_of_trial"] == str(best.number)
    assert json.loads(final.data.params["hp"]) == best.params

    guide.write_text(guide.read_text() + "# edited\n")
    before = len(all_runs())
    new_process_builders(monkeypatch)
    done = in_process([*tune, "--n_trials", "1"], capsys)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "error: study 'kt' was created with another guide.py" in done.stderr
    assert len(all_runs()) == before and len(optuna.load_study(study_name="kt", storage=storage).trials) == 3


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_resumed_study_draws_points_the_first_session_did_not(tmp_path, sampler):
    """The sampler as `tune` makes it for a study on SQLite (study.setup.sampler_seed, StudySpec.make_sampler),
    in two sessions of one study (2 trials, then 1 more), each trial drawing the guide's values define-by-run."""
    from fmnist_exp.scale.storage import StorageURL
    from fmnist_exp.study.setup import sampler_seed
    from fmnist_exp.study.spec import parse

    spec = parse(STUDY.format(builder=tmp_path / "guide.py", extra="").replace("random", sampler), tmp_path / "kt.yaml")
    url = StorageURL.parse(f"sqlite:///{tmp_path / 'optuna.db'}")
    for before, n_trials in ((0, 2), (2, 1)):  # a session: the sampler made again, as each `tune` process makes it
        study = optuna.create_study(study_name="kt", storage=url.open(), load_if_exists=True,
                                    sampler=spec.make_sampler(sampler_seed(42, url, before)))
        study.optimize(lambda trial: guide_with_everything(HyperParameters(draw=trial)) or 0.5, n_trials=n_trials)
    first, second, resumed = study.trials
    assert resumed.params not in (first.params, second.params)


# ----------------------------------------------------------------------------- keras-tuner itself


KT_IMPORT = '''import keras
import keras_tuner
from keras import layers


class MyHyperModel(keras_tuner.HyperModel):
    def build(self, hp):
        model = keras.Sequential([layers.Flatten(), layers.Dense(hp.Int("units", 32, 64, step=32),
                                                                 activation="relu"),
                                  layers.Dense(10, activation="softmax")])
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        return model


class Shuffled(MyHyperModel):
    def fit(self, hp, model, *args, **kwargs):
        return model.fit(*args, shuffle=hp.Boolean("shuffle"), **kwargs)
'''


def test_a_keras_tuner_import_without_keras_tuner_says_what_to_do(tmp_path, monkeypatch):
    """Where keras-tuner is not installed (hidden here where it is): the file's import is refused with the
    hint that a build_model(hp) needs no import of it."""
    monkeypatch.setitem(sys.modules, "keras_tuner", None)  # `import keras_tuner` raises ModuleNotFoundError
    path = write(tmp_path, KT_IMPORT, "kt_import.py")
    with pytest.raises(user.BuilderError) as refused:
        user.load(f"{path}:MyHyperModel")
    said = str(refused.value)
    assert f"loading {path} raised ModuleNotFoundError" in said and "(at kt_import.py:2)" in said
    assert ("keras-tuner is not installed: a build_model(hp) needs no import of it (the hp it gets is this "
            "platform's), so remove the import, or pip install keras-tuner for a keras_tuner.HyperModel subclass") \
        in said


def test_a_keras_tuner_hypermodel_subclass_runs_and_records_keras_tuner(tracking, tmp_path, dataset):
    """Where keras-tuner is installed: a keras_tuner.HyperModel subclass is built with the platform's hp and
    trained by keras-tuner's default fit (the platform's) or its own override; a run of it records
    model_requires=keras-tuner==<version>."""
    pytest.importorskip("keras_tuner")
    from fmnist_exp.train import fit as F
    from fmnist_exp.train import job, lineage

    version = importlib.metadata.version("keras-tuner")
    path = write(tmp_path, KT_IMPORT, "kt_import.py")
    plain, shuffled = user.load(f"{path}:MyHyperModel"), user.load(f"{path}:Shuffled")
    assert plain.keras_tuner and plain.fit is None and shuffled.fit is not None  # keras-tuner's own fit: none
    assert plain.requires == shuffled.requires == f"keras-tuner=={version}"
    served, hp = user.build(shuffled, {"units": 64}, FASHION_MNIST)
    assert [d.units for d in dense_layers(user.inner(served))] == [64, 10] and hp.values == {"units": 64}
    for ref, hp_text in ((f"{path}:MyHyperModel", "{}"), (f"{path}:Shuffled", "{shuffle: true}")):
        p = builder_fit.concrete(P.network("custom", {"model": ref, "hp": hp_text, "epochs": 1,
                                                      "train_samples": 300}), dataset.info)
        assert p.hp_values() == {"units": 32, **({"shuffle": True} if "Shuffled" in ref else {})}
        served, _ = F.fresh_model(p, dataset.info)
        result, returned = builder_fit.fit_itself(served, job.splits(dataset, p), p)
        assert result.epochs_run == 1 and returned["val_accuracy"] == result.history["val_accuracy"][0]
        with mlflow.start_run() as run:
            lineage.log_builder(p)
        assert mlflow.get_run(run.info.run_id).data.tags["model_requires"] == f"keras-tuner=={version}"


# ----------------------------------------------------------------------------- what a first review found


def test_a_training_parameter_the_recipe_sets_outside_the_builders_range_is_refused_not_replaced(tmp_path):
    """-P batch_size=64 for a HyperModel whose fit draws hp.Choice("batch_size", [16, 32]) would train 16 and log it:
    refused, saying both; the family's default batch size (not set) gives way to the builder's default."""
    ref = f"{REPO / 'examples' / 'keras_tuner_guide.py'}:TunedBatch"
    with pytest.raises(user.BuilderError, match=r"batch_size=64 is set for the platform, but hp.Choice\('batch_size'"):
        builder_fit.concrete(P.network("custom", {"model": ref, "batch_size": 64}), FASHION_MNIST)
    assert builder_fit.concrete(P.network("custom", {"model": ref, "batch_size": 32}), FASHION_MNIST).batch_size == 32
    assert builder_fit.concrete(P.network("custom", {"model": ref}), FASHION_MNIST).batch_size == 16


def test_the_contract_is_read_from_what_the_builder_can_take(tmp_path):
    """A three-argument builder with defaults, or *args, is the platform's build(hp, input_shape, num_classes) (fed
    0-255); a one-argument one (or one whose other arguments have defaults) is keras-tuner's build_model(hp)."""
    path = write(tmp_path, '''
def defaults(hp, input_shape=(28, 28, 1), num_classes=10):
    pass

def star(*args):
    pass

def one(hp, seed=0):
    pass

def two(hp, input_shape):
    pass
''', "contracts.py")
    assert not user.load(f"{path}:defaults").keras_tuner and not user.load(f"{path}:star").keras_tuner
    assert user.load(f"{path}:one").keras_tuner
    with pytest.raises(user.BuilderError, match="takes 2 arguments: a builder takes"):
        user.load(f"{path}:two")


def test_a_fit_that_never_calls_model_fit_is_refused_before_any_run(tmp_path):
    """Its own loop would train with no per-epoch logging, pruning or curves: refused, saying what to call."""
    path = write(tmp_path, '''import keras
from keras import layers


class OwnLoop:
    def build(self, hp):
        model = keras.Sequential([layers.Flatten(), layers.Dense(10, activation="softmax")])
        model.compile("adam", "categorical_crossentropy")
        return model

    def fit(self, hp, model, x, y, **kwargs):
        try:
            return keras.Model.fit(model, x, y, epochs=1, verbose=0)
        except Exception:  # a broad except around training does not hide the platform's check
            raise
''', "own_loop.py")
    with pytest.raises(user.BuilderError, match=r"its fit never calls model.fit\(...\) on the model it is given"):
        builder_fit.check_builder([P.network("custom", {"model": f"{path}:OwnLoop"})], FASHION_MNIST)


def test_hp_values_called_is_the_mappings_values_and_a_defined_platform_name_is_logged(tmp_path):
    hp = HyperParameters({"width": 16, "blocks": 2})
    assert sorted(hp.values()) == [2, 16] and hp.read == {"width", "blocks"}  # an issue-41 builder may walk them
    hp.Int("depth", 1, 3)
    assert hp.values == {"depth": 1} and sorted(hp.values()) == [1, 2, 16]  # keras-tuner's dict; called: all
    path = write(tmp_path, '''import keras
from keras import layers


def build_model(hp):
    model = keras.Sequential([layers.Flatten(), layers.Dense(10, activation="softmax")])
    model.compile(keras.optimizers.Adam(hp.Choice("learning_rate", [0.002, 0.01])), "categorical_crossentropy")
    return model
''', "rate.py")
    p = P.network("custom", {"model": f"{path}:build_model"})
    seen = builder_fit.examine(p, FASHION_MNIST)
    served, _ = user.build(user.load(p.model), p.hp_values(), FASHION_MNIST)
    logged = builder_fit.logged(seen.params, served, seen.defined)
    assert logged["learning_rate"] == 0.002 and logged["compiled_learning_rate"] == pytest.approx(0.002)
    assert "warmup_epochs" not in logged and logged["compiled_optimizer"] == "Adam"


def test_a_fit_that_passes_model_fits_arguments_by_position_gets_them_completed(tmp_path):
    """model.fit(x, y, 16, 1) is Keras' own call by position: the batch size and epochs it gives are what trains."""
    path = write(tmp_path, '''import keras
from keras import layers


class ByPosition:
    def build(self, hp):
        return keras.Sequential([layers.Flatten(), layers.Dense(10, activation="softmax")])

    def fit(self, hp, model, x, y, **kwargs):
        return model.fit(x, y, 16, 1, **kwargs)
''', "by_position.py")
    p = builder_fit.concrete(P.network("custom", {"model": f"{path}:ByPosition", "epochs": 3}), FASHION_MNIST)
    assert (p.batch_size, p.epochs) == (16, 1)
