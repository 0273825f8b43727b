"""What MLflow's own views show of a study, read in a real browser against a real `mlflow server`:
the parent run's row in the runs table names the study's data (Dataset) and its registered model
(Models), and every training run records system metrics (its System metrics tab), which one
parameter or MLflow's own variable turns off."""

from __future__ import annotations

import json
import os
import re

import mlflow
import pytest
from conftest import MLFLOW, free_port, new_store, running_server, subprocess_env
from mlflow.tracking import MlflowClient

from fmnist_exp import params as P
from fmnist_exp.commands import tune
from fmnist_exp.params import ConfigError
from fmnist_exp.registry.versions import LINKS_TO_TAG, MODEL_VERSIONS_TAG
from fmnist_exp.train import job, lineage, runs

STUDY = """description: views test study
family: mlp
budget: {n_trials: 1, epochs: 2, train_samples: 1000, timeout: 0}
fixed: {early_stopping_patience: 0, hidden_units: '16', learning_rate: 1.0e-2, batch_size: 32}
space:
  dropout: {type: float, low: 0.0, high: 0.3}
pruner: {type: none}
reference: off
"""  # a budget that learns digits (as test_tune.py's tiny study): the gate registers no model at chance
CPU, MEMORY = "system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"
DATASET_CELL, MODELS_CELL = '[col-id="attributes.`Dataset`"]', '[col-id="attributes.`Models`"]'


@pytest.fixture
def server(tmp_path, monkeypatch, migrated_store):
    """A real `mlflow server` on loopback (SQLite backend, proxied artifacts); this process tracks to it. Its
    store is a copy of the migrated empty one (conftest.new_store): the server runs no migrations of its own."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    cmd = [MLFLOW, "server", "--backend-store-uri", new_store(tmp_path, migrated_store), "--artifacts-destination",
           str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    monkeypatch.chdir(tmp_path)
    with running_server(cmd, uri + "/health", cwd=tmp_path, env=subprocess_env(), timeout=240):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        yield uri
        while mlflow.active_run():
            mlflow.end_run()


@pytest.mark.slow
def test_study_parent_row_and_system_metrics_in_the_browser(server, tmp_path, page):
    """On digits: the Dataset column names whichever data the study trained on (360 test images to score)."""
    study_file = tmp_path / "views.yaml"
    study_file.write_text(STUDY)
    summary = tune.run(P.tune_args({"family": "mlp", "study": str(study_file), "data": "digits",
                                    "storage": f"sqlite:///{tmp_path / 'optuna.db'}"})).flat()
    client = MlflowClient()
    exp_id = str(summary["experiment_id"])
    by_name = {r.info.run_name: r for r in mlflow.search_runs([exp_id], output_format="list")}
    assert sorted(by_name) == ["trial 0", "tune views"]
    parent, trials = by_name["tune views"], [by_name["trial 0"]]

    # the parent logs the very dataset entities its trials log: same name, digests and contexts
    digests = lineage.split_digests(parent)
    assert sorted(digests) == ["test", "training", "validation"]
    assert all(lineage.split_digests(t) == digests for t in trials)
    assert {d.dataset.name for d in parent.inputs.dataset_inputs} == {"digits"}

    # the registered model: the candidate as the parent's output (run page), and a stand-in whose
    # source run is the parent and which names the version (runs table)
    name, version = summary["model_name"], str(summary["registered_version"])
    mv = client.get_model_version(name, version)
    candidate = mv.source.removeprefix("models:/")
    assert [o.model_id for o in parent.outputs.model_outputs] == [candidate]
    own = [m for m in mlflow.search_logged_models(experiment_ids=[exp_id], output_format="list")
           if m.source_run_id == parent.info.run_id]
    assert len(own) == 1 and own[0].name == name and own[0].status == "READY"
    assert json.loads(own[0].tags[MODEL_VERSIONS_TAG]) == [{"name": name, "version": version}]
    assert own[0].tags[LINKS_TO_TAG] == candidate
    assert mv.run_id == summary["best_run_id"]  # the version's own source run is unchanged (reproduce)

    # system metrics on every trial (MLflow's own monitor), none on the parent, which trains nothing
    for t in trials:
        assert {CPU, MEMORY} <= set(t.data.metrics), sorted(t.data.metrics)
        assert client.get_metric_history(t.info.run_id, CPU)
    assert not [k for k in parent.data.metrics if k.startswith("system/")]

    # the runs table, as a user opens it: the parent's row names its data and its model
    page.set_viewport_size({"width": 1920, "height": 900})  # the Models column in view for the screenshot
    page.goto(f"{server}/#/experiments/{exp_id}/runs")
    row = f'.ag-row[row-id="{parent.info.run_id}"]'
    page.locator(f"{row} {MODELS_CELL}").get_by_text(name).wait_for(timeout=60_000)
    dataset_cell = page.locator(f"{row} {DATASET_CELL}").inner_text()
    models_cell = page.locator(f"{row} {MODELS_CELL}").inner_text()
    page.screenshot(path=str(tmp_path / "runs_table.png"), full_page=True)
    assert "digits" in dataset_cell and digests["training"] in dataset_cell, dataset_cell
    assert name in models_cell and f"v{version}" in models_cell, models_cell

    # a trial's System metrics tab draws MLflow's charts of what it recorded
    # (its CPU chart: a line whose legend names the metric where the monitor sampled twice or more, a bar under the
    # metric's name where once, as in a whole suite's faster trials (fc47, fc48): either names the metric)
    trial_id = trials[0].info.run_id
    tab = page.context.new_page()
    tab.goto(f"{server}/#/experiments/{exp_id}/runs/{trial_id}/system-metrics")
    try:
        tab.get_by_text(re.compile(re.escape(CPU.removeprefix("system/")))).first.wait_for(timeout=60_000)
    finally:
        tab.screenshot(path=str(tmp_path / "system_metrics.png"), full_page=True)  # what it showed, either way
    recorded = [k for k in trials[0].data.metrics if k.startswith("system/")]
    charts = re.search(r"System metrics\s*\((\d+)\)", tab.inner_text("body"))  # charts drawn as scrolled to
    assert charts and int(charts.group(1)) == len(recorded), (charts, recorded)


@pytest.mark.parametrize("given,env,expected", [
    (None, None, True),        # the default: on
    (None, "false", False),    # MLflow's own variable, where set
    (None, "1", True),
    (True, "false", True),     # the parameter, where given, wins
    (False, "true", False),
    (False, None, False),
])
def test_who_decides_system_metrics(monkeypatch, given, expected, env):
    if env is None:
        monkeypatch.delenv(runs.ENABLE_ENV, raising=False)
    else:
        monkeypatch.setenv(runs.ENABLE_ENV, env)
    assert runs.system_metrics_on(given) is expected


def test_system_metrics_context_sets_mlflow_variables_and_restores_them(monkeypatch):
    monkeypatch.delenv(runs.ENABLE_ENV, raising=False)
    monkeypatch.setenv(runs.INTERVAL_ENV, "5")  # the user's interval is kept
    with runs.system_metrics(False) as on:
        assert on is False
        assert (os.environ[runs.ENABLE_ENV], os.environ[runs.INTERVAL_ENV]) == ("false", "5")
    assert runs.ENABLE_ENV not in os.environ and os.environ[runs.INTERVAL_ENV] == "5"
    monkeypatch.delenv(runs.INTERVAL_ENV)
    with runs.system_metrics(None):
        assert os.environ[runs.ENABLE_ENV] == "true"
        assert float(os.environ[runs.INTERVAL_ENV]) == runs.SAMPLING_INTERVAL_S
    assert runs.INTERVAL_ENV not in os.environ


def test_a_bad_mlflow_variable_is_refused_with_what_to_do(monkeypatch):
    monkeypatch.setenv(runs.ENABLE_ENV, "sometimes")
    with pytest.raises(ConfigError, match="MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING='sometimes': must be true or false"):
        runs.system_metrics_on(None)


def test_system_metrics_parameter_reaches_every_training_command():
    from fmnist_exp.commands.launch import tune_flags

    args = P.command("mlp", {"system_metrics": "false"})
    assert isinstance(args, P.TrainArgs) and args.system_metrics is False
    empty = P.command("baseline", {"system_metrics": ""})  # how MLproject forwards "not given"
    assert isinstance(empty, P.TrainArgs) and empty.system_metrics is None
    registered = P.command("register", {"system_metrics": "true"})
    assert isinstance(registered, P.TuneArgs) and registered.system_metrics is True
    launch = P.command("launch", {"system_metrics": "false"})
    assert isinstance(launch, P.LaunchArgs)
    flags = tune_flags(launch.tune)  # what each worker runs
    assert flags[flags.index("--system_metrics") + 1] == "false"
    assert "--system_metrics" not in tune_flags(P.tune_args({}))  # not given: each worker's environment decides


@pytest.mark.slow
def test_single_runs_record_system_metrics_unless_told_not_to(tracking, monkeypatch):
    from fmnist_exp.data import load_dataset

    dataset = load_dataset("digits")  # a run of any data records them: the smallest
    monkeypatch.delenv(runs.ENABLE_ENV, raising=False)
    p = P.network("mlp", {"epochs": 1, "train_samples": 300, "hidden_units": "16"})
    on = job.train_run(dataset, p)
    off = job.train_run(dataset, p, system_metrics=False)
    client = MlflowClient()
    assert {CPU, MEMORY} <= set(client.get_run(on.run_id).data.metrics)
    assert not [k for k in client.get_run(off.run_id).data.metrics if k.startswith("system/")]
    assert runs.ENABLE_ENV not in os.environ  # the process's environment is as it was
