"""Your own network (model=FILE.py:FUNCTION, family custom) through every stage: a builder written into
tmp_path, tuned on Fashion-MNIST and on scikit-learn's digits, registered, served by the real `mlflow
models serve` (a real test image answered with its class name), and rebuilt bit for bit by `reproduce`;
an edited builder named by `reproduce` and by a resumed study before anything trains; a model ending in
logits answered as probabilities; and every builder the platform cannot train refused, with what was
wrong, before any MLflow run exists."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import time
from collections import Counter
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from conftest import MLFLOW, REPO, cli, free_port, in_process, running_server, subprocess_env
from mlflow.tracking import MlflowClient

from fmnist_exp import params as P
from fmnist_exp.data import FASHION_CLASSES, FASHION_MNIST
from fmnist_exp.model import builder as user
from fmnist_exp.model import cost
from fmnist_exp.train import builder_fit

# A small network of the tests: a 3x3 convolution hp["width"] wide, a 2x2 pooling, logits (no softmax).
# It fits Fashion-MNIST's 28x28 images and the digits' 8x8 ones (6x6 after the convolution, 3x3 pooled).
NET = '''"""A builder of the tests: build(hp, input_shape, num_classes) -> keras.Model."""
import keras
from keras import layers


def build(hp, input_shape, num_classes):
    inputs = keras.Input(shape=input_shape)
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(int(hp["width"]), 3, activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x), name="tiny")  # logits
'''

# NET, each call of its build noted in builds.txt beside it with the MLflow run it was made in ('-': none):
# a trial, a retrain and a rebuild each build their network once (issue 53).
COUNTED = NET.replace("def build(hp, input_shape, num_classes):\n", """def build(hp, input_shape, num_classes):
    import pathlib

    import mlflow

    run = mlflow.active_run()
    with open(pathlib.Path(__file__).with_name("builds.txt"), "a") as f:
        f.write((run.info.run_id if run else "-") + "\\n")
""")

# Builders the platform refuses, and the shapes of last layer it must read right, one function each.
NETS = '''"""Builders of the tests, each one way a user's network can end or go wrong."""
import keras
from keras import layers


def _trunk(input_shape):
    inputs = keras.Input(shape=input_shape)
    x = layers.Conv2D(4, 3)(layers.Rescaling(1 / 255)(inputs))
    return inputs, layers.GlobalAveragePooling2D()(x)


def logits(hp, input_shape, num_classes):
    inputs, x = _trunk(input_shape)
    return keras.Model(inputs, layers.Dense(num_classes)(x))


def compiled_logits(hp, input_shape, num_classes):
    model = logits(hp, input_shape, num_classes)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def compiled_loss_function(hp, input_shape, num_classes):
    model = logits(hp, input_shape, num_classes)
    model.compile(optimizer="adam", loss=keras.losses.sparse_categorical_crossentropy)
    return model


def softmax(hp, input_shape, num_classes):
    inputs, x = _trunk(input_shape)
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(x))


def softmax_layer(hp, input_shape, num_classes):
    inputs, x = _trunk(input_shape)
    return keras.Model(inputs, layers.Softmax()(layers.Dense(num_classes)(x)))


def sequential(hp, input_shape, num_classes):
    return keras.Sequential([keras.Input(shape=input_shape), layers.Rescaling(1 / 255), layers.Flatten(),
                             layers.Dense(num_classes, activation="softmax")])


def nested_softmax(hp, input_shape, num_classes):
    """Ends in a model of its own, whose last layer is the softmax."""
    inputs, x = _trunk(input_shape)
    head = keras.Sequential([keras.Input(shape=(4,)), layers.Dense(num_classes, activation="softmax")])
    return keras.Model(inputs, head(x))


def separable(hp, input_shape, num_classes):
    inputs = keras.Input(shape=input_shape)
    x = layers.SeparableConv2D(4, 3)(layers.Rescaling(1 / 255)(inputs))
    return keras.Model(inputs, layers.Dense(num_classes)(layers.GlobalAveragePooling2D()(x)))


def conv1d(hp, input_shape, num_classes):
    inputs = keras.Input(shape=input_shape)
    x = layers.Reshape((input_shape[0], input_shape[1] * input_shape[2]))(layers.Rescaling(1 / 255)(inputs))
    x = layers.GlobalAveragePooling1D()(layers.Conv1D(4, 3)(x))
    return keras.Model(inputs, layers.Dense(num_classes)(x))


def conditional(hp, input_shape, num_classes):
    """Reads depth only where kind is deep: a study may give it at every point."""
    inputs, x = _trunk(input_shape)
    if hp["kind"] == "deep":
        for _ in range(int(hp["depth"])):
            x = layers.Dense(8, activation="relu")(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x))


def raises(hp, input_shape, num_classes):
    raise ValueError("boom")


def not_a_model(hp, input_shape, num_classes):
    return {"layers": 2}


def wrong_width(hp, input_shape, num_classes):
    inputs, x = _trunk(input_shape)
    return keras.Model(inputs, layers.Dense(num_classes - 1)(x))


def wrong_input(hp, input_shape, num_classes):
    inputs, x = _trunk((32, 32, 1))
    return keras.Model(inputs, layers.Dense(num_classes)(x))


def flat_input(hp, input_shape, num_classes):
    inputs = keras.Input(shape=input_shape[:2])
    return keras.Model(inputs, layers.Dense(num_classes)(layers.Flatten()(inputs)))


def no_input(hp, input_shape, num_classes):
    return keras.Sequential([layers.Flatten(), layers.Dense(num_classes)])


not_callable = 3
'''


def write(tmp_path: Path, source: str = NET, name: str = "net.py") -> Path:
    path = tmp_path / name
    path.write_text(source)
    return path


@pytest.fixture
def nets(tmp_path) -> Path:
    return write(tmp_path, NETS, "nets.py")


def all_runs() -> list:
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def pixels(n: int = 4, seed: int = 0) -> np.ndarray:
    """Fashion-MNIST's array layout, (n, 28, 28), raw 0-255 values."""
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28)).astype("float32")


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- refusals, before any run


@pytest.mark.parametrize(("function", "said"), [
    ("raises", "raised ValueError: boom (at nets.py:"),
    ("not_a_model", "returned dict, not a Keras model: return a keras.Model"),
    ("wrong_width", "the model answers shape (9,), but fashion-mnist has 10 classes: end with a Dense(num_classes)"),
    ("wrong_input", "the model takes inputs of shape (32, 32, 1), but the images of fashion-mnist are (28, 28, 1)"),
    ("flat_input", "the model takes inputs of shape (28, 28), but the images of fashion-mnist are (28, 28, 1)"),
    ("no_input", "the model has no defined input: start it with keras.Input(shape=input_shape)"),
])
def test_a_builder_the_platform_cannot_train_is_refused_with_what_was_wrong(nets, function, said):
    b = user.load(f"{nets}:{function}")
    with pytest.raises(user.BuilderError) as refused:
        user.build(b, {}, FASHION_MNIST)
    assert str(refused.value).startswith(f"model={nets}:{function}") and said in str(refused.value)
    assert isinstance(refused.value, P.ConfigError)  # the CLI says it as `error: ...`, exit 2


def test_a_builder_that_cannot_be_loaded_is_refused_naming_what_is_there(nets, tmp_path, monkeypatch):
    with pytest.raises(user.BuilderError, match=r"model=missing.py:build: no file missing.py in .*; give the path to "
                                                r"the .py file that defines the builder"):
        user.load("missing.py:build")
    with pytest.raises(user.BuilderError, match=r"nets.py defines no function 'biuld'; it defines compiled_logits, .*"
                                                r"logits, .*wrong_width$") as refused:
        user.load(f"{nets}:biuld")
    assert "_trunk" not in str(refused.value) and "keras" not in str(refused.value)  # its own public functions
    with pytest.raises(user.BuilderError, match="defines no function 'not_callable'"):
        user.load(f"{nets}:not_callable")
    write(tmp_path, "import keras\nraise RuntimeError('no GPU here')\n", "broken.py")
    with pytest.raises(user.BuilderError, match=r"loading .*broken.py raised RuntimeError: no GPU here "
                                                r"\(at broken.py:2\)"):
        user.load(f"{tmp_path / 'broken.py'}:build")
    with pytest.raises(user.BuilderError, match="importing no_such_package.nets raised ModuleNotFoundError: .*on "
                                                "PYTHONPATH"):
        user.load("no_such_package.nets:build")
    # an importable module is a builder too, recorded by its source file
    monkeypatch.syspath_prepend(str(tmp_path))
    write(tmp_path, NET, "tests_builder_module.py")
    b = user.load("tests_builder_module:build")
    assert b.file == (tmp_path / "tests_builder_module.py").resolve() and b.sha256 == sha256(b.file)


def test_a_relative_reference_is_the_file_in_the_working_directory(tmp_path, monkeypatch):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write(tmp_path / name, NET.replace("tiny", f"tiny_{name}"), "net_of_this_directory.py")
    monkeypatch.chdir(tmp_path / "a")
    assert user.load("net_of_this_directory.py:build").file == tmp_path.resolve() / "a" / "net_of_this_directory.py"
    monkeypatch.chdir(tmp_path / "b")
    assert user.load("net_of_this_directory.py:build").file == tmp_path.resolve() / "b" / "net_of_this_directory.py"


def test_parameters_the_builder_never_reads_and_the_platforms_names_are_refused(nets):
    ref = f"{nets}:conditional"
    with pytest.raises(P.ConfigError, match="model is required for a custom network: give your builder as "
                                            "model=FILE.py:FUNCTION"):
        P.network("custom", {"hp": "{width: 4}"})
    with pytest.raises(P.ConfigError, match="must name a builder as FILE.py:FUNCTION or package.module:function"):
        P.network("custom", {"model": str(nets)})
    for hp in ("{learning_rate: 0.1}", "{model_sha256: abc}", "{data_name: x}"):
        with pytest.raises(P.ConfigError, match=r"the platform's own name\(s\)"):
            P.network("custom", {"model": ref, "hp": hp})
    with pytest.raises(P.ConfigError, match=r"experiment: the platform's own name\(s\)"):
        P.network("custom", {"model": ref, "experiment": "x"})  # a study's name that a run logs beside
    with pytest.raises(P.ConfigError, match="each value must be a number, text, true/false or null"):
        P.network("custom", {"model": ref, "hp": "{kind: [1, 2]}"})

    shallow = P.network("custom", {"model": ref, "kind": "shallow", "depth": 2})
    deep = P.network("custom", {"model": ref, "kind": "deep", "depth": 2})
    # a study reads depth at one of its points: both pass; one point that never reads it is refused
    builder_fit.check_builder([shallow, deep], FASHION_MNIST)
    with pytest.raises(user.BuilderError, match=re.escape(f"model={ref} never reads depth: a misspelt name, or a "
                                                          "parameter meant for the platform")):
        builder_fit.check_builder([shallow], FASHION_MNIST)
    typo = P.network("custom", {"model": ref, "kind": "deep", "depth": 1, "dpeth": 2})
    with pytest.raises(user.BuilderError, match="never reads dpeth:"):
        builder_fit.check_builder([typo], FASHION_MNIST)
    missing = P.network("custom", {"model": ref, "kind": "deep"})
    with pytest.raises(user.BuilderError, match=r"raised KeyError: .*'depth': the builder reads hp\['depth'\], but "
                                                r"it was not given \(given: kind\).* \(at nets.py:\d+\)"):
        builder_fit.check_builder([missing], FASHION_MNIST)
    # the package's own builders named as any builder: checked too (at one point), a misspelt value and widths too
    # deep for the images refused before any run
    builtin = "fmnist_exp.model.builtin:cnn"
    with pytest.raises(user.BuilderError, match=f"model={builtin} never reads filtres:"):
        builder_fit.check_builder([P.network("custom", {"model": builtin, "hp": '{filtres: "8,16"}'})], FASHION_MNIST)
    with pytest.raises(user.BuilderError, match="4 blocks, each halving the image, would shrink the 8x8 images of the "
                                                "builder's input_shape below one pixel; 3 fit"):
        builder_fit.check_builder([P.network("custom", {"model": builtin, "hp": '{filters: "4,4,4,4"}'})],
                                  dataclasses.replace(FASHION_MNIST, shape=(8, 8, 1)))


def test_the_command_refuses_a_builder_before_any_run(tracking, tmp_path, nets, capsys):
    """`custom` in-process (the same code as the CLI's subprocess, without starting TensorFlow per
    command): exit 2, `error:` and what was wrong, and no MLflow run created."""
    from fmnist_exp import cli as command_line

    write(tmp_path)
    checks = [
        (["--model", "missing.py:build"], "error: model=missing.py:build: no file missing.py"),
        (["--model", "nets.py:biuld"], "nets.py defines no function 'biuld'; it defines "),
        (["--model", "nets.py:wrong_width"], "the model answers shape (9,), but digits has 10 classes"),
        (["--model", "net.py:build", "--hp", "{width: 4, depth: 2}"], "model=net.py:build never reads depth"),
        (["--model", "net.py:build", "--hp", "{width: 4, learning_rate: 0.1}"], "learning_rate: the platform's own"),
        (["--model", "net.py:build"], "raised KeyError: \"'width': the builder reads hp['width']"),
    ]
    for args, said in checks:
        code = command_line.main(["custom", "--data", "digits", *args, "--epochs", "1", "--system_metrics", "false"])
        err = capsys.readouterr().err
        assert code == 2 and said in err and "Traceback" not in err, (args, err[-2000:])
    assert all_runs() == []


def test_the_cli_refuses_a_builder_that_raises_before_any_run(tracking, tmp_path, nets):
    proc = cli(["custom", "--data", "digits", "--model", "nets.py:raises", "--epochs", "1"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error: model=nets.py:raises raised ValueError: boom (at nets.py:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert all_runs() == []


def test_the_cli_refuses_custom_without_a_model(tracking, tmp_path):
    proc = cli(["custom", "--data", "digits", "--epochs", "1"], tmp_path)
    assert proc.returncode == 2 and "error: model is required for a custom network" in proc.stderr, \
        proc.stderr[-3000:]
    assert all_runs() == []


# ----------------------------------------------------------------------------- the builder's parameters


def test_hp_is_read_only_and_records_what_the_builder_reads():
    hp = user.HP({"width": 8, "blocks": 2, "dropout": 0.1})
    assert hp.read == set() and len(hp) == 3
    assert hp["width"] == 8 and hp.read == {"width"}
    assert hp.get("l2", 1e-4) == 1e-4 and hp.get("l2") is None and hp.read == {"width", "l2"}
    assert "blocks" in hp and "nothing" not in hp and hp.read == {"width", "l2", "blocks", "nothing"}
    with pytest.raises(KeyError, match=r"hp\['depth'\], but it was not given \(given: blocks, dropout, width\): add "
                                       r"it to hp .* or use hp.get\('depth', default\) for an optional one"):
        hp["depth"]
    assert "depth" not in hp.read  # a name it failed to read was not read
    with pytest.raises(TypeError):
        hp["width"] = 16  # type: ignore[index]
    with pytest.raises(TypeError):
        del hp["width"]  # type: ignore[attr-defined]
    assert not hasattr(hp, "update") and not hasattr(hp, "pop") and hp["width"] == 8
    walked = user.HP({"a": 1, "b": 2})
    assert dict(walked) == {"a": 1, "b": 2} and walked.read == {"a", "b"}  # walking them all reads them all


def test_a_builder_parameter_named_like_a_builtin_familys_is_the_builders():
    """dropout, l2, filters... are the mlp's and the cnn's, not the platform's training parameters: for a
    custom network they go to the builder (hp); the platform's own (learning_rate) stay the platform's."""
    p = P.network("custom", {"model": "net.py:build", "dropout": 0.3, "filters": "8,16", "learning_rate": 0.01})
    assert isinstance(p, P.CustomParams) and not hasattr(p, "dropout")
    assert p.hp_values() == {"dropout": 0.3, "filters": "8,16"} and p.learning_rate == 0.01
    assert p.hp == '{"dropout": 0.3, "filters": "8,16"}'  # canonical JSON: one spelling, one digest
    both = P.network("custom", {"model": "net.py:build", "hp": "{width: 4}", "dropout": 0.3})
    assert both.hp_values() == {"dropout": 0.3, "width": 4}
    assert P.network("custom", {"model": "net.py:build", "hp": '{"width": 4, "dropout": 0.3}'}) == both


def test_a_study_file_names_its_builder_and_gives_it_its_own_parameters(tracking, tmp_path):
    """model: in a study file makes the family custom; fixed and searched names that are not the
    platform's are the builder's; the checks before any training build it at every point."""
    from fmnist_exp.study.setup import prepare

    path = write(tmp_path, NET.replace("    x = layers.Flatten()(x)\n",
                                       '    x = layers.Dropout(float(hp["dropout"]))(layers.Flatten()(x))\n'))
    study = tmp_path / "own.yaml"
    text = (f"description: a builder in a study\nmodel: {path}:build\nbudget: {{n_trials: 2, epochs: 1}}\n"
            "fixed: {dropout: 0.3}\n"
            "space:\n  width: {type: categorical, choices: [4, 8]}\n"
            "  learning_rate: {type: float, low: 1.0e-3, high: 3.0e-3, log: true}\nreference: off\n")
    study.write_text(text)
    setup = prepare(P.tune_args({"data": "digits", "study": str(study)}))
    assert setup.spec.family == "custom" and setup.model_name == "digits-classifier"
    p = setup.trial_params({"width": 8, "learning_rate": 2e-3})
    assert isinstance(p, P.CustomParams) and p.model == f"{path}:build"
    assert p.hp_values() == {"dropout": 0.3, "width": 8} and p.learning_rate == 2e-3
    study.write_text(text.replace("  width:", "  depth: {type: int, low: 1, high: 2}\n  width:"))
    with pytest.raises(P.ConfigError, match=re.escape(f"own.yaml on digits: model={path}:build never reads depth")):
        prepare(P.tune_args({"data": "digits", "study": str(study)}))
    study.write_text(text.replace("model:", "family: cnn\nmodel:"))
    with pytest.raises(P.ConfigError, match="model: names your own network, but family is 'cnn'"):
        prepare(P.tune_args({"data": "digits", "study": str(study)}))
    assert all_runs() == []


# ----------------------------------------------------------------------------- what the platform wraps


def test_a_logits_model_answers_the_softmax_of_its_logits(nets):
    x = pixels()
    for function in ("logits", "compiled_logits"):
        b = user.load(f"{nets}:{function}")
        model, _ = user.build(b, {}, FASHION_MNIST)
        inner = model.get_layer(index=2)  # pixels, the reshape to (28, 28, 1), the user's model, probs
        assert isinstance(inner, keras.Model) and user.outputs_logits(inner, FASHION_MNIST)
        assert model.input_shape == (None, 28, 28) and model.output_shape == (None, 10)
        probs = np.asarray(model(x))
        assert probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(probs, softmax(np.asarray(inner(x[..., None]), dtype="float64")), atol=1e-6)


@pytest.mark.parametrize("function", ["softmax", "softmax_layer", "sequential", "nested_softmax"])
def test_a_model_that_answers_probabilities_is_not_softmaxed_twice(nets, function):
    model, _ = user.build(user.load(f"{nets}:{function}"), {}, FASHION_MNIST)
    inner = model.get_layer(index=2)
    assert not user.outputs_logits(inner, FASHION_MNIST)
    x = pixels(seed=1)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(inner(x[..., None])), atol=1e-7)


def test_a_model_compiled_with_a_loss_function_is_read_by_its_answers(nets):
    """A loss given as a function (no from_logits to read): logits told by what the model answers."""
    model, _ = user.build(user.load(f"{nets}:compiled_loss_function"), {}, FASHION_MNIST)
    inner, x = model.get_layer(index=2), pixels()
    np.testing.assert_allclose(np.asarray(model(x)), softmax(np.asarray(inner(x[..., None]), dtype="float64")),
                               atol=1e-6)


def test_layers_whose_arithmetic_is_not_counted_are_named(nets):
    built = {f: user.build(user.load(f"{nets}:{f}"), {}, FASHION_MNIST)[0] for f in ("logits", "separable", "conv1d")}
    assert cost.uncounted_layers(built["logits"]) == []
    assert cost.uncounted_layers(built["separable"]) == ["SeparableConv2D"]  # inside the user's model, inside ours
    assert cost.uncounted_layers(built["conv1d"]) == ["Conv1D"]
    # what is counted is counted once: the user's model runs once per image
    assert cost.macs_per_image(built["logits"]) == 26 * 26 * 9 * 4 + 4 * 10
    assert cost.macs_per_image(built["separable"]) == 4 * 10  # the separable convolution is not


# ----------------------------------------------------------------------------- the builder's source on a run


@pytest.mark.parametrize("encoded", [
    pytest.param(lambda text: text.replace("\n", "\r\n").encode(), id="crlf"),
    pytest.param(lambda text: ("# -*- coding: latin-1 -*-\n# caf\xe9\n" + text).encode("latin-1"), id="latin-1"),
])
def test_the_kept_source_is_the_file_the_run_recorded(tracking, tmp_path, encoded):
    from fmnist_exp.train import lineage

    path = tmp_path / "own.py"
    path.write_bytes(encoded(NET))
    user.build(user.load(f"{path}:build"), {"width": 4}, FASHION_MNIST)  # Python reads it as it is
    with mlflow.start_run() as run:
        lineage.log_builder(P.network("custom", {"model": f"{path}:build", "width": 4}))
    kept = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/builder/own.py",
                                                    dst_path=str(tmp_path / "kept")))
    assert mlflow.get_run(run.info.run_id).data.params["model_sha256"] == sha256(path)
    assert sha256(kept) == sha256(path)


# ----------------------------------------------------------------------------- end to end

STUDY = """description: a builder of the tests, tuned
model: {builder}:build
budget: {{n_trials: 2, epochs: 1, train_samples: {samples}, timeout: 0}}
fixed: {{early_stopping_patience: 0}}
space:
  width: {{type: categorical, choices: [4, 8]}}
  learning_rate: {{type: float, low: 1.0e-3, high: 3.0e-3, log: true}}
pruner: {{type: none}}
sampler: {{type: random}}
final: {final}
reference: {reference}
"""


def tune_study(tmp_path: Path, capsys, *args: str, samples: int, final: str,
               reference: str, source: str = NET) -> tuple[Path, Path, dict]:
    """The study of NET (``source``; written to tmp_path) tuned by the CLI's `tune` (in-process) on its own Optuna
    database: the builder's file, the study file and the summary `tune` printed."""
    builder = write(tmp_path, source)
    study = tmp_path / "own.yaml"
    study.write_text(STUDY.format(builder=builder, samples=samples, final=final, reference=reference))
    done = in_process(["tune", "--study", str(study), "--storage", f"sqlite:///{tmp_path / 'optuna.db'}",
                       "--system_metrics", "false", *args], capsys)
    assert done.returncode == 0, done.stderr[-3000:]
    return builder, study, last_json(done.stdout)


def assert_trials_record_the_builder(builder: Path, n: int = 2) -> list:
    """``n`` complete trials, nested under the study's run, each with the searched builder parameter under
    its own name, the builder's digest and its source; returns them."""
    trials = [r for r in all_runs() if "optuna_trial" in r.data.tags and "final_of_trial" not in r.data.tags]
    assert sorted(r.data.tags["optuna_trial"] for r in trials) == [str(i) for i in range(n)]
    client = MlflowClient()
    for r in trials:
        p, tags = r.data.params, r.data.tags
        assert tags["trial_state"] == "COMPLETE" and r.info.status == "FINISHED" and "mlflow.parentRunId" in tags
        assert p["family"] == "custom" and p["model"] == f"{builder}:build" and tags["model_builder"] == p["model"]
        assert p["width"] in ("4", "8") and json.loads(p["hp"]) == {"width": int(p["width"])}
        assert p["model_sha256"] == sha256(builder)
        assert [a.path for a in client.list_artifacts(r.info.run_id, "builder")] == ["builder/net.py"]
        assert mlflow.artifacts.load_text(f"runs:/{r.info.run_id}/builder/net.py") == builder.read_text()
        assert "cost_uncounted_layers" not in tags  # Conv2D and Dense: every multiply-accumulate counted
    return trials


def new_process_builders(monkeypatch) -> None:
    """This process from now on as a new one for builders: none loaded yet, so the next command reads each
    builder's file as it is now (model.builder.load reads a file once per process); put back after the test."""
    monkeypatch.setattr(user, "_loaded", {})


def reproduce_exactly(uri: str, capsys) -> dict:
    """`reproduce --exact true` in-process (the tracking fixture's working directory): its report."""
    done = in_process(["reproduce", "--model_uri", uri, "--exact", "true"], capsys)
    assert done.returncode == 0, done.stderr[-3000:]
    report = last_json(done.stdout)
    assert report["bit_identical"] == 1.0 and report["passed"] is True
    return report


def served_answer(model_uri: str, png: bytes, cwd: Path, tracking: str) -> dict:
    """The real `mlflow models serve`'s answer for one PNG image."""
    import urllib.request

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [MLFLOW, "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
           "-w", "1"]
    body = json.dumps({"inputs": {"png_b64": [base64.b64encode(png).decode()]}}).encode()
    with running_server(cmd, base + "/ping", cwd=cwd, env={**subprocess_env(), "MLFLOW_TRACKING_URI": tracking}):
        request = urllib.request.Request(base + "/invocations", body, {"Content-Type": "application/json"})
        [answer] = json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"]
    return answer


@pytest.mark.slow
def test_fashion_mnist_tuned_registered_and_served(tracking, tmp_path, capsys):
    """A study of a builder in tmp_path beside the platform's learning rate on the default data: one trial
    (the digits twin below runs two and picks the best), retrained (2 epochs on 5,000 images) and registered
    @champion as fmnist-classifier, measured against the cnn family's reference; `mlflow models serve` answers
    a real ankle boot's PNG with "Ankle boot" as probabilities (the builder ends in logits). What only
    Fashion-MNIST shows here: the default data's name, the served ankle boot named by Fashion-MNIST's class names,
    and the reference. `tune` runs in-process (the CLI's main). That `reproduce` rebuilds a builder study's
    champion bit for bit, with the builder's digest and the best trial's hp, is checked on the digits twin below
    (nothing of it is Fashion-MNIST's own)."""
    builder, _, summary = tune_study(tmp_path, capsys, "--n_trials", "1", samples=1000,
                                     final="{epochs: 2, train_samples: 5000}",
                                     reference='{params: {epochs: 1, filters: "8,16", dense_units: 16}}')
    assert summary["model_name"] == "fmnist-classifier" and summary["alias"] == "champion"
    assert summary["n_complete"] == 1 and summary["candidate"] == "final retrain"
    trials = assert_trials_record_the_builder(builder, n=1)
    version = MlflowClient().get_model_version_by_alias("fmnist-classifier", "champion")
    source = mlflow.get_run(version.run_id)
    assert version.tags["family"] == "custom" and source.data.tags["final_of_trial"] == str(summary["best_trial"])
    [best] = [r for r in trials if r.data.tags["optuna_trial"] == str(summary["best_trial"])]
    assert source.data.params["hp"] == best.data.params["hp"] and source.data.params["model_sha256"] == sha256(builder)
    [reference] = [r for r in all_runs() if r.info.run_name == "reference"]
    assert reference.data.params["family"] == "cnn"  # a user's network is measured against the cnn family's

    png = (REPO / "examples" / "test_0_ankle_boot.png").read_bytes()
    answer = served_answer("models:/fmnist-classifier@champion", png, tmp_path, tracking)
    assert answer["class_name"] == "Ankle boot" == FASHION_CLASSES[answer["label"]]
    assert len(answer["probabilities"]) == 10 and sum(answer["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    assert min(answer["probabilities"]) >= 0 and max(answer["probabilities"]) == answer["probabilities"][9]


@pytest.mark.slow
def test_digits_tuned_registered_under_its_name_and_reproduced(tracking, tmp_path, capsys, monkeypatch):
    """The same builder on scikit-learn's 8x8 digits: input_shape (8, 8, 1) and 10 classes from the data,
    registered as digits-classifier with the dataset on its version, rebuilt bit for bit with the builder's
    digest and the best trial's hp (moved here from the Fashion-MNIST test above); then, the builder edited, a
    resume of the study is refused before any trial. Each trial, the final retrain and the rebuild call the
    builder once (COUNTED: one model built, trained and logged, no second build for a check or a copy)."""
    builder, study, summary = tune_study(tmp_path, capsys, "--data", "digits", samples=0, final="{epochs: 2}",
                                         reference="off", source=COUNTED)
    assert summary["model_name"] == "digits-classifier" and summary["registered_version"] == 1
    trials = assert_trials_record_the_builder(builder)
    version = MlflowClient().get_model_version_by_alias("digits-classifier", "champion")
    assert (version.tags["data_name"], version.tags["data_shape"], version.tags["family"]) == (
        "digits", "8x8x1", "custom")
    assert mlflow.get_run(version.run_id).data.params["data"] == "digits"
    # served: a real test digit as a PNG, one the champion answers right, named by the digits' class names
    import io

    from PIL import Image

    from fmnist_exp.data import load_dataset
    from fmnist_exp.train.evaluate import classifier_answers

    ds = load_dataset("digits")
    labels = classifier_answers("models:/digits-classifier@champion", ds.x_test)["label"].to_numpy()
    right = int(np.flatnonzero(labels == ds.y_test)[0])
    png = io.BytesIO()
    Image.fromarray(ds.x_test[right]).save(png, format="PNG")
    answer = served_answer("models:/digits-classifier@champion", png.getvalue(), tmp_path, tracking)
    assert answer["label"] == ds.y_test[right] and answer["class_name"] == ds.info.class_names[ds.y_test[right]]
    assert sum(answer["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    report = reproduce_exactly("models:/digits-classifier@champion", capsys)
    assert report["reproduces_run_id"] == version.run_id
    [rebuild] = [r for r in all_runs() if r.data.tags.get("reproduces_run_id") == version.run_id]
    [best] = [r for r in trials if r.data.tags["optuna_trial"] == str(summary["best_trial"])]
    assert rebuild.data.params["model_sha256"] == sha256(builder)
    assert rebuild.data.params["hp"] == best.data.params["hp"]
    builds = Counter((tmp_path / "builds.txt").read_text().split())
    [final] = [r for r in all_runs() if r.data.tags.get("final_of_trial") == str(summary["best_trial"])]
    assert {r.info.run_id: builds[r.info.run_id] for r in [*trials, final, rebuild]} == {
        r.info.run_id: 1 for r in [*trials, final, rebuild]}, builds

    # the study records its builder's digest; `tune` on the same study and storage after the builder was edited
    # exits 2 naming the file, before any trial (its trials would train another network). The resume reads the
    # file as a new process does: a process loads a builder once (model.builder.load), so the resume runs with
    # none loaded (new_process_builders), in-process (the CLI's main: the exit code a process returns).
    # (Merged from test_a_study_refuses_to_resume_with_an_edited_builder: the same study, once.)
    import optuna

    stored = optuna.load_study(study_name="own", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert stored.user_attrs["model_sha256"] == sha256(builder)
    builder.write_text(builder.read_text() + "# edited\n")
    before, trials_before = len(all_runs()), len(stored.trials)
    new_process_builders(monkeypatch)
    done = in_process(["tune", "--study", str(study), "--storage", f"sqlite:///{tmp_path / 'optuna.db'}",
                       "--data", "digits", "--n_trials", "1", "--register", "false", "--system_metrics", "false"],
                      capsys)
    err = done.stderr
    assert done.returncode == 2, err[-3000:]
    assert (f"error: study 'own' was created with another net.py (sha256 {stored.user_attrs['model_sha256'][:12]}..., "
            f"now {sha256(builder)[:12]}...): its trials would train another network") in err, err[-3000:]
    assert len(all_runs()) == before and len(stored.trials) == trials_before == 2


@pytest.mark.slow
def test_an_edited_builder_is_named_by_reproduce_before_anything_trains(tracking, tmp_path, capsys,
                                                                        monkeypatch):
    """A `custom` run on digits (a separable convolution, whose arithmetic the cost does not count: the run
    says so) records the builder; with a comment appended `reproduce` exits 2 naming the file and that it
    changed, and creates no run; the file restored from the run's copy, as the message says, reproduces bit
    for bit. All three run in-process (the CLI's main); the refusal reads the file as a new process does, as a
    user's is: a process loads a builder once (model.builder.load), so it runs with none loaded
    (new_process_builders)."""
    builder = write(tmp_path, NET.replace("layers.Conv2D(", "layers.SeparableConv2D("))
    done = in_process(["custom", "--data", "digits", "--model", "net.py:build", "--hp", "{width: 4}",
                       "--epochs", "1", "--system_metrics", "false"], capsys)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(not counted: SeparableConv2D)" in done.stdout
    run_id = last_json(done.stdout)["run_id"]
    run = mlflow.get_run(run_id)
    assert run.data.params["width"] == "4" and run.data.params["hp"] == '{"width": 4}'
    assert run.data.params["model_sha256"] == sha256(builder) and run.data.tags["model_builder"] == "net.py:build"
    assert run.data.tags["cost_uncounted_layers"] == "SeparableConv2D"
    original = builder.read_bytes()

    builder.write_text(builder.read_text() + "# a comment, nothing else\n")
    before = len(all_runs())
    new_process_builders(monkeypatch)
    done = in_process(["reproduce", "--model_uri", f"runs:/{run_id}/model", "--exact", "true"], capsys)
    said = done.stderr
    assert done.returncode == 2, said[-3000:]
    assert f"error: the builder net.py:build changed since run {run_id} trained with it: {builder.resolve()} has " \
           f"sha256 {sha256(builder)[:16]}..., the run recorded {run.data.params['model_sha256'][:16]}..." in said
    assert "nothing was trained" in said and f"runs:/{run_id}/builder/net.py" in said and "Traceback" not in said
    assert len(all_runs()) == before

    mlflow.artifacts.download_artifacts(f"runs:/{run_id}/builder/net.py", dst_path=str(tmp_path))  # as advised
    assert builder.read_bytes() == original
    new_process_builders(monkeypatch)  # as the user's next command: this process loaded the edited file
    reproduce_exactly(f"runs:/{run_id}/model", capsys)


# ----------------------------------------------------------------------------- many workers on one study


@pytest.mark.slow
def test_two_workers_share_one_study_of_a_builder(cluster, capsys, monkeypatch):
    """Two `tune` workers on one PostgreSQL study of a user's network on digits, through a real mlflow server: a
    real process, and this test's own process (the CLI's main in-process, as the process beside it: its heartbeat
    every 2 s, a trial silent for 120 s lost), which joins once the process has the study open. Each loads the
    builder, trains its own trial of the one study, and both record the same builder digest."""
    import subprocess
    import sys

    import optuna

    from fmnist_exp.scale import storage as heartbeat_storage

    builder = write(cluster["tmp"], NET)
    study_file = cluster["tmp"] / "shared.yaml"
    study_file.write_text(f"""description: two workers, one study of a builder
model: {builder}:build
budget: {{n_trials: 1, epochs: 1, timeout: 0}}
space:
  width: {{type: categorical, choices: [4, 8]}}
  learning_rate: {{type: float, low: 1.0e-3, high: 3.0e-3, log: true}}
pruner: {{type: none}}
""")
    env = {**subprocess_env(), "MLFLOW_TRACKING_URI": cluster["tracking"], "FMNIST_HEARTBEAT_S": "2",
           "FMNIST_GRACE_S": "120"}
    argv = ["tune", "--study", str(study_file), "--storage", cluster["optuna"], "--data", "digits", "--register",
            "false", "--system_metrics", "false"]
    with open(cluster["tmp"] / "w0.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "fmnist_exp", *argv], cwd=cluster["tmp"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    monkeypatch.chdir(cluster["tmp"])
    monkeypatch.setattr(heartbeat_storage, "HEARTBEAT_S", 2)
    monkeypatch.setattr(heartbeat_storage, "GRACE_S", 120)
    try:
        # this process joins once the other has made the study and opened its run (its first line)
        deadline = time.time() + 300
        while "[tune] study 'shared'" not in (cluster["tmp"] / "w0.log").read_text():
            assert proc.poll() is None and time.time() < deadline, (cluster["tmp"] / "w0.log").read_text()[-3000:]
            time.sleep(0.2)
        done = in_process(argv, capsys)
    finally:
        returned = proc.wait(timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert returned == 0, (cluster["tmp"] / "w0.log").read_text()[-3000:]

    study = optuna.load_study(study_name="shared", storage=cluster["optuna"])
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert study.user_attrs["family"] == "custom" and study.user_attrs["model_sha256"] == sha256(builder)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parents = [r for r in runs if r.info.run_name == "tune shared"]
    trials = [r for r in runs if "optuna_trial" in r.data.tags]
    assert len(parents) == 2 and len(trials) == 2 and not [r for r in runs if r.info.status == "RUNNING"]
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {p.info.run_id for p in parents}
    assert {t.data.params["model_sha256"] for t in trials} == {sha256(builder)}
    assert {t.data.params["width"] for t in trials} <= {"4", "8"}


def test_a_value_mlflow_run_recorded_in_shell_quotes_is_read_as_given():
    """`mlflow run -P hp="{width: 16, blocks: 1}"` records the parameter as the quoted text it ran; a rebuild
    reads it as the program got it (a path with spaces alike); '' stays "not given"."""
    logged = {"model": "'/my nets/net.py:build'", "hp": "'{width: 16, blocks: 1}'", "split_seed": "''"}
    p = P.trained("custom", logged)
    assert isinstance(p, P.CustomParams)
    assert (p.model, p.hp_values(), p.split_seed) == ("/my nets/net.py:build", {"blocks": 1, "width": 16}, None)


@pytest.mark.parametrize(("family", "net"), [("cnn", '{filters: "8,16", dense_units: 16}'),
                                            ("mlp", "{hidden_units: '32'}")])
def test_the_built_in_networks_are_builders_that_train_the_same_bits(tracking, family, net):
    """The built-in cnn and mlp named as any builder is (custom, model=fmnist_exp.model.builtin:<family>, their
    network parameters in hp) train what their own entry points train with the same values, bit for bit: the
    same validation and test scores, and logged models that answer the test images alike to the last bit (the
    cnn's batch norm by the fused kernel while it trains, Keras' layers in the logged copy, as its entry point's).
    On digits, at the precision `auto` picks here (bfloat16 on a CPU with it)."""
    from fmnist_exp.data import load_dataset
    from fmnist_exp.train import job
    from fmnist_exp.train.evaluate import predict_proba

    ds = load_dataset("digits")
    recipe = {"epochs": 2, "seed": 3, "data": "digits", "batch_size": 32, "label_smoothing": 0.1}
    own = job.train_run(ds, P.network(family, {**recipe, **P.table.parse_hp(net)}), system_metrics=False)
    named = job.train_run(ds, P.network("custom", {**recipe, "model": f"fmnist_exp.model.builtin:{family}",
                                                   "hp": net}), system_metrics=False)
    logged = mlflow.get_run(named.run_id).data.params
    assert (logged["family"], logged["model"]) == ("custom", f"fmnist_exp.model.builtin:{family}")
    # the network parameters it took from the family's defaults are recorded as the builder's (hp.Fixed), as the
    # family's own run records them
    recorded, own_params = json.loads(logged["hp"]), mlflow.get_run(own.run_id).data.params
    assert [float(recorded[k]) for k in ("l2", "dropout")] == [float(own_params[k]) for k in ("l2", "dropout")]
    for name in ("val_final_accuracy", "val_final_loss", "test_accuracy", "test_loss"):
        assert named.metrics[name] == own.metrics[name], name
    answers = [predict_proba(mlflow.keras.load_model(r.model_uri), ds.x_test) for r in (own, named)]
    np.testing.assert_array_equal(answers[0], answers[1])
