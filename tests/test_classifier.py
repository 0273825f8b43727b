"""The classifier format's module paths: a registered version runs the classifier_model.py that the
code which logged it wrote, and that file imports the class by that code's module path. In a process
running today's package (`serve`, `predict`, a study scoring its champion), each earlier path must
still give today's class. The files are the earlier commits' own; the baseline's version is also served
end to end, by `serve` and by `mlflow models serve` (test_serve.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from conftest import REPO

from fmnist_exp.classifier.pyfunc import DATASET_ARTIFACT
from fmnist_exp.data import FASHION_MNIST

# commit: where its classifier_model.py sat
EARLIER = {"861b7d0": "fmnist_exp/classifier_model.py", "4da3967": "fmnist_exp/model/classifier_model.py",
           "a8ebe1f": "fmnist_exp/model/classifier_model.py", "today": "fmnist_exp/classifier/classifier_model.py"}


def code_of(commit: str) -> str:
    if commit == "today":
        return (REPO / EARLIER[commit]).read_text()
    shown = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:{EARLIER[commit]}"], capture_output=True,
                           text=True)
    if shown.returncode != 0:
        missing = pytest.fail if os.environ.get("CI") == "true" else pytest.skip  # a tarball has no history
        missing(f"{commit} is not in the history of {REPO}: run `git fetch --unshallow` there")
    return shown.stdout


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, str]:
    """A small untrained network on Fashion-MNIST's shape and its dataset description: the answers
    compared are the class's, whatever the weights."""
    root = tmp_path_factory.mktemp("artifacts")
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10, "softmax")])
    net.save(root / "model.keras")
    (root / "dataset.json").write_text(FASHION_MNIST.dumps())
    return {"keras_model": str(root / "model.keras"), DATASET_ARTIFACT: str(root / "dataset.json")}


def answers(commit: str, artifacts: dict[str, str], tmp_path: Path, images: np.ndarray):
    """Save a model whose code is ``commit``'s classifier_model.py (no package copy: the class comes
    from the package this process imported), load it as MLflow does, and answer ``images``."""
    code = tmp_path / f"{commit}.py"
    code.write_text(code_of(commit))
    saved = tmp_path / f"model-{commit}"
    mlflow.pyfunc.save_model(str(saved), python_model=str(code), artifacts=artifacts,
                             pip_requirements=["mlflow"])  # stated: inferring them loads the model in a subprocess
    return mlflow.pyfunc.load_model(str(saved)).predict(images)


@pytest.mark.parametrize("commit", ["861b7d0", "4da3967", "a8ebe1f"])
def test_every_path_a_registered_version_names_loads_todays_classifier(commit, artifacts, tmp_path, dataset):
    images = dataset.x_test[:8]
    earlier, today = answers(commit, artifacts, tmp_path, images), answers("today", artifacts, tmp_path, images)
    assert list(earlier.columns) == ["label", "class_name", "probabilities"]
    assert earlier["label"].tolist() == today["label"].tolist()
    assert earlier["class_name"].tolist() == today["class_name"].tolist()
    assert np.array_equal(np.stack(earlier["probabilities"]), np.stack(today["probabilities"]))
