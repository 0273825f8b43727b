"""The ``cnn`` entry point under Keras' JAX backend on a machine without TensorFlow, as on the
lent GPU machines (JAX and PyTorch, no TensorFlow): it trains, logs and scores, and the models it
logs load with MLflow's pyfunc (here, under this process's backend)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import pinned_packages, subprocess_env, unavailable

pytestmark = pytest.mark.slow

# Put first on sys.path (PYTHONPATH), Python's site runs this at start-up: from then on any
# `import tensorflow` (or of a submodule) fails as it would where TensorFlow is not installed.
NO_TENSORFLOW = '''
import sys


class _NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError("No module named 'tensorflow' (hidden by the test)", name=name)
        return None


sys.meta_path.insert(0, _NoTensorFlow())
'''


# JAX, installed apart by scripts/setup.sh: where TensorFlow can find it, every TensorFlow import imports it too
JAX_DIR = Path(sys.prefix) / "jax"


def without_tensorflow(tmp_path) -> dict:
    """A subprocess environment on the JAX backend (JAX_DIR on its path) in which TensorFlow cannot be imported."""
    hide = tmp_path / "no_tensorflow"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(NO_TENSORFLOW)
    env = subprocess_env()
    env["PYTHONPATH"] = f"{hide}:{JAX_DIR}:{env['PYTHONPATH']}"
    env["KERAS_BACKEND"] = "jax"
    return env


def test_cnn_trains_and_logs_under_jax_without_tensorflow(tracking, tmp_path):
    if not (JAX_DIR / "jax").is_dir():
        unavailable(f"JAX is not installed in {JAX_DIR} (scripts/setup.sh installs it there)", "this test")
    env = without_tensorflow(tmp_path)
    probe = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "hidden by the test" in probe.stderr  # the hiding works

    # scikit-learn's 8x8 digits (the backend is what is checked, not the data): its ~1,300 training images in
    # batches of 32, three epochs: enough steps to clear chance (10%) by far (0.72 after three on an AVX-512 Xeon)
    args = ["cnn", "--data", "digits", "--filters", "8,16", "--dense_units", "16", "--epochs", "3",
            "--batch_size", "32"]
    proc = subprocess.run([sys.executable, "-m", "fmnist_exp", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FINISHED"
    assert 0.3 < run.data.metrics["test_accuracy"] <= 1.0
    assert run.data.params["precision_used"] == "float32"
    pinned = pinned_packages(run.data.tags["model_uri"])
    assert {"jax", "keras"} <= pinned and "tensorflow" not in pinned  # the backend it trained under

    x = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8), dtype=np.uint8)
    probs = np.asarray(mlflow.pyfunc.load_model(run.data.tags["model_uri"]).predict(x.astype("float32")))
    assert probs.shape == (3, 10) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    answer = mlflow.pyfunc.load_model(run.data.tags["classifier_uri"]).predict(x)
    assert [len(p) for p in answer["probabilities"]] == [10, 10, 10]
    assert np.allclose([sum(p) for p in answer["probabilities"]], 1.0, atol=1e-4)
