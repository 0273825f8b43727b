"""What a user sees in their own tools: a console of the project's own lines, runs filed under
named experiments, and models that carry their metrics (the UI's Models tab,
``mlflow.search_logged_models``); `mlflow run`'s --experiment-name keeps working."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import pytest
from conftest import MLFLOW, REPO, subprocess_env
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
STUDY = """description: console test study
family: mlp
budget: {n_trials: 2, epochs: 2, train_samples: 1000, timeout: 0}
fixed: {lr_schedule: cosine, early_stopping_patience: 0, hidden_units: '32'}
space:
  dropout: {type: float, low: 0.0, high: 0.3}
pruner: {type: none}
reference: off
"""
CHATTER = ("onednn", "cuda", "cloudpickle", "type hint", "downloading artifacts", "absl", "retracing")


def quiet_env(**extra) -> dict:
    env = {**subprocess_env(), **extra}
    env.pop("TF_CPP_MIN_LOG_LEVEL")  # what a user has: nothing set
    return env


def test_tiny_tune_console_experiment_and_model_metrics(tracking, tmp_path):
    study = tmp_path / "tiny.yaml"
    study.write_text(STUDY)
    # on digits: the console's lines are the same on any data
    proc = subprocess.run([sys.executable, "-m", "fmnist_exp", "tune", "--family", "mlp", "--study", str(study),
                           "--data", "digits"],
                          cwd=tmp_path, env=quiet_env(), capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    noisy = [line for line in out.splitlines() if any(word in line.lower() for word in CHATTER)]
    assert noisy == [], noisy
    trial_lines = [line for line in out.splitlines() if line.startswith("[tune] trial ")]
    assert len(trial_lines) == 2, out
    assert all("epochs=2" in line and "time=" in line and "best=" in line for line in trial_lines), trial_lines

    exp = mlflow.get_experiment_by_name("fmnist-study-tiny")
    assert exp is not None
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    assert sorted(r.info.run_name for r in runs) == ["trial 0", "trial 1", "tune tiny"]
    assert not mlflow.search_runs(["0"], output_format="list"), "nothing in Default"

    # every trial's two models carry its validation metrics; ranked by the Models tab's query (the
    # parent's stand-in for its registered version, registry.versions.link_model, holds no metrics)
    [parent] = [r for r in runs if r.info.run_name == "tune tiny"]
    models = [m for m in mlflow.search_logged_models(
        experiment_ids=[exp.experiment_id], output_format="list",
        order_by=[{"field_name": "metrics.val_final_accuracy", "ascending": False}])
        if m.source_run_id != parent.info.run_id]
    assert sorted(m.name for m in models) == ["classifier", "classifier", "model", "model"]
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
    assert {x.key: x.value for x in champion.metrics}["test_accuracy"] == pytest.approx(float(mv.tags["test_accuracy"]))
    assert [o.model_id for o in parent.outputs.model_outputs] == [champion.model_id]
    # the Keras model is still reachable under its run, as runs:/<run>/model
    assert "model/MLmodel" in {a.path for a in client.list_artifacts(champion.source_run_id, "model")}


def _mlflow_run_mlp(tmp_path, *flags: str, params: dict | None = None):
    cmd = [MLFLOW, "run", str(REPO), "-e", "mlp", "--env-manager", "local", *flags,
           "-P", "epochs=1", "-P", "train_samples=1000", "-P", "hidden_units=32"]
    for k, v in (params or {}).items():
        cmd += ["-P", f"{k}={v}"]
    return subprocess.run(cmd, cwd=tmp_path, env=quiet_env(), capture_output=True, text=True, timeout=600)


def test_mlflow_run_keeps_its_experiment(tracking, tmp_path):
    proc = _mlflow_run_mlp(tmp_path, "--experiment-name", "mine", params={"data": "digits"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[mlp] epoch 1/1" in proc.stdout and "ETA" in proc.stdout
    [run] = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert mlflow.get_experiment(run.info.experiment_id).name == "mine"
    # -P experiment cannot move a run `mlflow run` already filed elsewhere: refused, saying what works
    refused = _mlflow_run_mlp(tmp_path, params={"experiment": "fmnist-other", "data": "digits"})
    assert refused.returncode != 0
    assert "--experiment-name fmnist-other" in refused.stderr
    assert mlflow.get_experiment_by_name("fmnist-other") is None
