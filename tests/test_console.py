"""What a user sees in their own tools: a console of the project's own lines, runs filed under
named experiments, and models that carry their metrics (the UI's Models tab,
``mlflow.search_logged_models``); `mlflow run`'s --experiment-name keeps working.

Two checks made on processes elsewhere, beside a process those tests start anyway: a fresh process's console
holds none of the libraries' chatter (test_tune.py::test_tune_through_mlflow_run_registers_champion, a `tune`
under `mlflow run` in a user's environment) and `mlflow run --experiment-name` files the run there
(test_entrypoints.py::test_network_entry_point_logs_everything[mlp])."""

from __future__ import annotations

import subprocess

import mlflow
import pytest
from conftest import MLFLOW, REPO, subprocess_env
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
STUDY = """description: console test study
family: mlp
budget: {n_trials: 2, epochs: 2, train_samples: 1000, timeout: 0}
fixed: {early_stopping_patience: 0, hidden_units: '32', batch_size: 32}  # learns: the gate registers no model at chance
space:
  dropout: {type: float, low: 0.0, high: 0.3}
pruner: {type: none}
reference: off
"""
CHATTER = ("onednn", "cuda", "cloudpickle", "type hint", "downloading artifacts", "absl", "retracing")


def quiet_env(**extra) -> dict:
    """What a user's shell has: none of the quieting variables this test process set (conftest's
    TF_CPP_MIN_LOG_LEVEL, and what fmnist_exp's console set here on import), so a process started with it
    (`mlflow run` included) prints what it would print for them."""
    from fmnist_exp import console

    env = {**subprocess_env(), **extra}
    for key in ("TF_CPP_MIN_LOG_LEVEL", *console._set_here):
        env.pop(key, None)
    return env


def test_tiny_tune_console_experiment_and_model_metrics(tracking, tmp_path, capsys):
    """The command line's `tune`, from its main in this process (what it prints and files is the same as
    `python -m fmnist_exp tune`'s); on digits: the console's lines are the same on any data."""
    from fmnist_exp import cli as command_line

    study = tmp_path / "tiny.yaml"
    study.write_text(STUDY)
    code = command_line.main(["tune", "--family", "mlp", "--study", str(study), "--data", "digits"])
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert code == 0, out[-3000:]
    trial_lines = [line for line in out.splitlines() if line.startswith("[tune] trial ")]
    assert len(trial_lines) == 2, out
    assert all("epochs=2" in line and "time=" in line and "best=" in line for line in trial_lines), trial_lines

    exp = mlflow.get_experiment_by_name("fmnist-study-tiny")
    assert exp is not None
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    assert sorted(r.info.run_name for r in runs) == ["trial 0", "trial 1", "tune tiny"]
    assert not mlflow.search_runs(["0"], output_format="list"), "nothing in Default"

    # every trial's model (the classifier alone: it is the Keras model too) carries its validation metrics;
    # ranked by the Models tab's query (the parent's stand-in for its registered version,
    # registry.versions.link_model, holds no metrics)
    [parent] = [r for r in runs if r.info.run_name == "tune tiny"]
    models = [m for m in mlflow.search_logged_models(
        experiment_ids=[exp.experiment_id], output_format="list",
        order_by=[{"field_name": "metrics.val_final_accuracy", "ascending": False}])
        if m.source_run_id != parent.info.run_id]
    assert sorted(m.name for m in models) == ["classifier", "classifier"]
    assert all(r.data.tags["model_uri"] == r.data.tags["classifier_uri"] == f"models:/{m.model_id}"
               for r in runs for m in models if m.source_run_id == r.info.run_id)
    accs = [{x.key: x.value for x in m.metrics}["val_final_accuracy"] for m in models]
    assert accs == sorted(accs, reverse=True)
    by_run = {r.info.run_id: r for r in runs}
    for m in models:
        assert by_run[m.source_run_id].data.metrics["val_final_accuracy"] == pytest.approx(
            {x.key: x.value for x in m.metrics}["val_final_accuracy"])
    # the registered classifier carries its test metrics, and the parent run shows it as its model
    client = MlflowClient()
    mv = client.get_model_version("digits-classifier", "1")
    assert mv.source.startswith("models:/m-"), mv.source  # registered from its LoggedModel
    champion = mlflow.get_logged_model(mv.source.removeprefix("models:/"))
    assert champion.name == "classifier"
    # the tag holds 6 decimals (registry.gate): equal to them, not to the metric's every digit
    assert {x.key: x.value for x in champion.metrics}["test_accuracy"] == pytest.approx(
        float(mv.tags["test_accuracy"]), abs=5e-7)
    assert [o.model_id for o in parent.outputs.model_outputs] == [champion.model_id]
    # the registered classifier is the Keras model too: mlflow.keras loads the network it answers with
    import numpy as np

    from fmnist_exp.data import load_dataset

    x = load_dataset("digits").x_test[:50]
    network = mlflow.keras.load_model(mv.source)
    served = mlflow.pyfunc.load_model(f"models:/digits-classifier/{mv.version}").predict(x)
    assert np.asarray(network.predict(x.astype("float32"), verbose=0)).argmax(axis=1).tolist() == \
        served["label"].tolist()


def _mlflow_run_mlp(tmp_path, *flags: str, params: dict | None = None):
    cmd = [MLFLOW, "run", str(REPO), "-e", "mlp", "--env-manager", "local", *flags,
           "-P", "epochs=1", "-P", "train_samples=1000", "-P", "hidden_units=32"]
    for k, v in (params or {}).items():
        cmd += ["-P", f"{k}={v}"]
    return subprocess.run(cmd, cwd=tmp_path, env=quiet_env(), capture_output=True, text=True, timeout=600)


def test_mlflow_run_keeps_its_experiment(tracking, tmp_path):
    """-P experiment cannot move a run `mlflow run` already filed elsewhere: refused, saying what works.
    (That `mlflow run --experiment-name mine` files the run under "mine", with the project's epoch and ETA
    lines on its console, is checked on test_entrypoints.py's `mlflow run -e mlp`, which runs anyway.)"""
    refused = _mlflow_run_mlp(tmp_path, params={"experiment": "fmnist-other", "data": "digits"})
    assert refused.returncode != 0
    assert "--experiment-name fmnist-other" in refused.stderr
    assert mlflow.get_experiment_by_name("fmnist-other") is None
