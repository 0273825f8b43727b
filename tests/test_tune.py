"""`tune`: parent and nested trial runs, pruning, failures, resume, interruption, registry.

Every study here runs on scikit-learn's 8x8 digits with its reference off: what is checked (trial runs,
numbering, pruning, the registry's aliases, the champion gate) is the same statement on any data, and the
reference is test_gate.py's subject."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import mlflow
import optuna
import pytest
from conftest import MLFLOW, REPO, predict_in_batches, store_at, subprocess_env
from mlflow.tracking import MlflowClient
from test_console import CHATTER, quiet_env

from fmnist_exp import params as P
from fmnist_exp.commands import tune
from fmnist_exp.data import FASHION_MNIST, load_dataset
from fmnist_exp.scale import storage
from fmnist_exp.study.setup import default_model_name
from fmnist_exp.train import job
from fmnist_exp.train import runs as T

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_tune")]
MODEL = "digits-classifier"  # the name a study on digits registers under unless model_name says

STUDY = """
description: Tiny MLP study for tests.
family: mlp
budget: {{n_trials: 3, epochs: 2, train_samples: 1000, timeout: 0}}
fixed: {{early_stopping_patience: 0{fixed}}}
space:
  dropout: {{type: float, low: 0.0, high: 0.3}}
  l2: {{type: float, low: 1.0e-6, high: 1.0e-4, log: true}}
  {lr}
  hidden_units: {{type: widths, layers: [1, 2], units: [32, 64]}}
pruner: {pruner}
reference: off
"""


def study_file(tmp_path, name="tiny", *, pruner="{type: none}", fixed=", batch_size: 32",
               lr="learning_rate: {type: float, low: 1.0e-2, high: 3.0e-2, log: true}"):
    """A study file; its default learning rates and batch size learn digits in 2 epochs of 1,000 images."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(STUDY.format(pruner=pruner, fixed=fixed, lr=lr))
    return str(path)


def run_tune(study, *, train_fn=None, **kw):
    """The study's summary as the command prints it (its JSON keys)."""
    args = P.tune_args({"family": "mlp", "study": study, "data": "digits", **kw})
    return tune.run(args, train_fn=train_fn).flat()


def runs(filter_string=""):
    return mlflow.search_runs(search_all_experiments=True, filter_string=filter_string, output_format="list")


def children_of(parent_id):
    """The parent's trial runs, in trial order (not its reference or final runs)."""
    trials = [r for r in runs(f"tags.mlflow.parentRunId = '{parent_id}'") if "optuna_trial" in r.data.tags]
    return sorted(trials, key=lambda r: int(r.data.tags["optuna_trial"]))


def parents():
    return [r for r in runs() if "mlflow.parentRunId" not in r.data.tags and r.info.run_name.startswith("tune")]


def assert_nothing_running():
    assert [r.info.run_name for r in runs() if r.info.status == "RUNNING"] == []


def test_tune_through_mlflow_run_registers_champion(tracking, tmp_path):
    """`mlflow run -e tune` in a user's environment (TF_CPP_MIN_LOG_LEVEL not set): its parameters reach the
    study, and the console a user sees is the project's own lines, none of the libraries' chatter (the check
    test_console.py made on a `python -m fmnist_exp tune` of its own: the same command, one process fewer)."""
    cmd = [MLFLOW, "run", str(REPO), "-e", "tune", "--env-manager", "local"]
    for k, v in {"family": "mlp", "study": study_file(tmp_path), "n_trials": 2, "data": "digits"}.items():
        cmd += ["-P", f"{k}={v}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=quiet_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    noisy = [line for line in out.splitlines() if any(word in line.lower() for word in CHATTER)]
    assert noisy == [], noisy
    trial_lines = [line for line in out.splitlines() if line.startswith("[tune] trial ")]
    assert len(trial_lines) == 2, out
    assert all("epochs=2" in line and "time=" in line and "best=" in line for line in trial_lines), trial_lines
    assert "(2/2)" in out and "models:/digits-classifier@champion" in out
    assert default_model_name(FASHION_MNIST) == "fmnist-classifier"  # Fashion-MNIST's models keep their old name
    dataset = load_dataset("digits")
    assert "runs?workflowType=machine_learning" in out
    [parent] = parents()
    kids = children_of(parent.info.run_id)
    assert [k.info.run_name for k in kids] == ["trial 0", "trial 1"]
    client = MlflowClient()
    for k in kids:
        assert k.info.status == "FINISHED" and k.data.tags["trial_state"] == "COMPLETE"
        assert [h.step for h in client.get_metric_history(k.info.run_id, "val_accuracy")] == [0, 1]
        assert {"dropout", "l2", "learning_rate", "hidden_units"} <= set(k.data.params)
        assert k.data.metrics["val_final_accuracy"] > 0.3  # chance is 0.1
        # one logged model, the classifier, which is the Keras model too (its model_uri)
        assert "classifier/MLmodel" in {a.path for a in client.list_artifacts(k.info.run_id, "classifier")}
        assert k.data.tags["model_uri"] == k.data.tags["classifier_uri"] and \
            not client.list_artifacts(k.info.run_id, "model")
    parent_art = {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
    assert {"study/trials.csv", "study/tiny.yaml", "study/optimization_history.png",
            "study/param_importances.png", "study/parallel_coordinate.png"} <= parent_art
    assert parent.data.params["pruner"] == "NopPruner"
    assert_nothing_running()

    mv = client.get_model_version_by_alias(MODEL, "champion")
    best = max(kids, key=lambda k: k.data.metrics["val_final_accuracy"])
    assert mv.tags["source_run_id"] == best.info.run_id and mv.tags["study"] == "tiny"
    assert float(mv.tags["test_accuracy"]) == pytest.approx(best.data.metrics["test_accuracy"], abs=1e-6)
    # what it costs to serve: on every trial's run, and on the version as tags and in its description
    for k in kids:
        widths = [8 * 8, *map(int, k.data.params["hidden_units"].split(",")), 10]
        macs = sum(a * b for a, b in zip(widths, widths[1:], strict=False))  # the dense layers, nothing else
        assert k.data.metrics["cost_mmacs_per_image"] == pytest.approx(macs / 1e6)
    assert float(mv.tags["cost_mmacs_per_image"]) == pytest.approx(best.data.metrics["cost_mmacs_per_image"], rel=5e-6)
    assert float(mv.tags["cost_ms_per_image_b1"]) == pytest.approx(best.data.metrics["cost_ms_per_image_b1"], rel=1e-5)
    # timed where the times are read: this study's goals read none, so only the registered candidate, before
    # its registration (its run and its models), and no other trial
    assert [("cost_ms_per_image_b1" in k.data.metrics) for k in kids] == [k is best for k in kids]
    assert all("cost_ms_per_image_b1" in {x.key for x in mlflow.get_logged_model(m.model_id).metrics}
               for m in client.get_run(best.info.run_id).outputs.model_outputs)
    assert f"**Serving cost:** {float(mv.tags['cost_mmacs_per_image']):.1f} M multiply-accumulates" in mv.description
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    answers = predict_in_batches(model, dataset.x_test)
    assert list(answers.columns) == ["label", "class_name", "probabilities"]
    assert (answers["label"].to_numpy() == dataset.y_test).mean() == pytest.approx(
        float(mv.tags["test_accuracy"]), abs=1e-4)


def test_resume_continues_numbers_and_worse_study_stays_challenger(tracking, tmp_path):
    study = study_file(tmp_path)
    with open(study, "a") as f:  # a known-good point goes first, once
        f.write("enqueue:\n  - {dropout: 0.1, l2: 1.0e-5, learning_rate: 2.0e-2, hidden_units: '64,32'}\n")
    first = run_tune(study, n_trials=1)
    assert first["registered_version"] == 1 and first["alias"] == "champion"
    second = run_tune(study, n_trials=1)
    trials = optuna.load_study(study_name="tiny", storage=storage.StorageURL.default().open()).trials
    assert [t.number for t in trials] == [0, 1]
    assert trials[0].user_attrs["config"]["hidden_units"] == "64,32" and trials[0].params["dropout"] == 0.1
    assert sum(t.user_attrs.get("config") == trials[0].user_attrs["config"] for t in trials) == 1
    ps = parents()
    assert len(ps) == 2 and {p.data.tags["resumed"] for p in ps} == {"true", "false"}
    resumed = next(p for p in ps if p.data.tags["resumed"] == "true")
    assert resumed.data.params["trials_before"] == "1"
    assert [k.data.tags["optuna_trial"] for k in children_of(resumed.info.run_id)] == ["1"]
    assert second["n_trials_total"] == 2

    client = MlflowClient()
    versions = client.search_model_versions(f"name = '{MODEL}'")
    champ = client.get_model_version_by_alias(MODEL, "champion")
    if second["decision"].startswith("unchanged"):  # same best trial: not registered twice
        assert len(versions) == 1
    else:  # a new best is registered, but @champion moves only on a significant paired gain
        assert {"gate_b", "gate_c", "gate_p_value", "gate_ci_low", "gate_ci_high"} <= set(
            client.get_model_version(MODEL, str(second["registered_version"])).tags)
        promoted = second["alias"] == "champion"
        assert promoted == (second["gate_p_value"] < 0.05 and second["gate_b"] > second["gate_c"])
        assert int(champ.version) == (second["registered_version"] if promoted else 1)

    # A study that can only be worse (1 epoch on 400 images) stays challenger: above chance on its 40 validation
    # images (the gate registers no model at chance), far below the champion
    bad = study_file(tmp_path, "bad", fixed=", learning_rate: 1.0e-2",
                     lr="batch_size: {type: categorical, choices: [32]}")
    worse = run_tune(bad, n_trials=1, epochs=1, train_samples=400)
    assert worse["alias"] == "challenger" and "not more test images right" in worse["decision"]
    assert worse["gate_c"] > worse["gate_b"]
    assert client.get_model_version_by_alias(MODEL, "champion").version == champ.version
    assert int(client.get_model_version_by_alias(MODEL, "challenger").version) == worse["registered_version"]
    assert_nothing_running()


def test_a_point_drawn_again_is_not_trained_again(tracking, tmp_path):
    # one point in the whole space: the second trial redraws it; the study's one seed and data would
    # train the same bits, so it takes the first trial's answer and model instead of training
    study = tmp_path / "one.yaml"
    study.write_text("description: one point\nfamily: mlp\nfixed: {early_stopping_patience: 0}\n"
                     "space:\n  hidden_units: {type: categorical, choices: ['32']}\npruner: {type: median}\n"
                     "reference: off\n")
    run_tune(str(study), n_trials=2, epochs=1, train_samples=300, register=False)
    stored = optuna.load_study(study_name="one", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    [first, again] = stored.trials
    assert again.state == optuna.trial.TrialState.COMPLETE and again.value == first.value
    assert again.user_attrs["same_as_trial"] == 0 and again.user_attrs["model_uri"] == first.user_attrs["model_uri"]
    [parent] = parents()
    first_run, again_run = children_of(parent.info.run_id)
    # not trained: its answer and the chance test of the run that trained it (the gate reads them if it is picked)
    assert "epochs_run" in first_run.data.metrics
    assert set(again_run.data.metrics) == {"val_accuracy", "val_chance_p", "val_majority_share"}
    assert again_run.data.metrics["val_chance_p"] == first_run.data.metrics["val_chance_p"]
    assert again_run.data.tags["at_chance"] == first_run.data.tags["at_chance"]
    # what a trial's time is for, apart: its fit and its scoring of the validation images (issue 55)
    assert first_run.data.metrics["train_wall_s"] > 0 and first_run.data.metrics["val_score_s"] > 0
    assert again_run.data.tags["same_as_run"] == first_run.info.run_id
    assert stored.best_trial.number == 0, "a tie goes to the trial that trained the model"
    # resumed with another budget, the same point is another recipe: trained
    run_tune(str(study), n_trials=1, epochs=2, train_samples=300, register=False)
    third = optuna.load_study(study_name="one", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials[2]
    assert "same_as_trial" not in third.user_attrs and third.user_attrs["epochs_run"] == 2
    assert third.user_attrs["recipe_digest"] != first.user_attrs["recipe_digest"]
    assert_nothing_running()


def flaky(ds, p, hooks):
    """Trial 1's training fails as a full disk would; every other trains."""
    if hooks.tags["optuna_trial"] == "1":
        raise RuntimeError("disk full (injected)")
    return job.train_in_run(ds, p, hooks)


def store_bytes(root) -> tuple[str, ...]:
    return tuple(hashlib.sha256((root / db).read_bytes()).hexdigest() for db in ("mlflow.db", "optuna.db"))


@pytest.fixture(scope="module")
def flaky_study(tmp_path_factory, migrated_store):
    """One study the two tests below only read: three trials, trial 1's training failing (flaky), then the best
    trial's final retrain (final: 3 epochs on 1,200 images) registered; the store is checked unchanged at
    teardown. Its URI and the study's summary."""
    import mlflow.tracking.fluent

    root = tmp_path_factory.mktemp("flaky-study")
    with store_at(root, migrated_store) as uri:
        study = study_file(root, "fin")
        with open(study, "a") as f:
            f.write("final: {epochs: 3, train_samples: 1200}\n")
        summary = run_tune(study, n_trials=3, train_fn=flaky)
    mlflow.tracking.fluent._active_experiment_id = None  # as conftest's _no_active_experiment leaves a test
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    before = store_bytes(root)
    yield uri, summary
    assert store_bytes(root) == before, "a test changed the shared store"


@pytest.fixture
def flaky_summary(flaky_study, monkeypatch):
    """flaky_study's store as this test's tracking store; the study's summary."""
    uri, summary = flaky_study
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return summary


def test_final_retrain_is_what_gets_registered(flaky_summary):
    summary = flaky_summary
    [parent] = parents()
    finals = [r for r in runs(f"tags.mlflow.parentRunId = '{parent.info.run_id}'") if "final_of_trial" in r.data.tags]
    assert len(finals) == 1
    final = finals[0]
    assert final.data.params["epochs"] == "3" and final.data.params["train_samples"] == "1200"
    assert final.data.tags["final_of_trial"] == str(summary["best_trial"])
    assert "test_accuracy" in final.data.metrics
    mv = MlflowClient().get_model_version_by_alias(MODEL, "champion")
    assert mv.tags["source_run_id"] == final.info.run_id and mv.tags["candidate"] == "final retrain"
    assert_nothing_running()


def test_pruning_marks_trials_pruned(tracking, tmp_path):
    study = study_file(tmp_path, "prune", pruner="{type: threshold, lower: 0.99, n_warmup_steps: 0}")
    summary = run_tune(study, n_trials=1, epochs=3)
    assert summary["n_pruned"] == 1 and summary["n_complete"] == 0
    assert summary["epochs_run"] == 1 and summary["epochs_budget"] == 3
    [parent] = parents()
    assert parent.data.params["pruner"] == "ThresholdPruner"
    client = MlflowClient()
    [k] = children_of(parent.info.run_id)
    assert k.data.tags["trial_state"] == "PRUNED" and k.info.status == "FINISHED"
    assert len(client.get_metric_history(k.info.run_id, "val_accuracy")) == 1
    assert not client.list_artifacts(k.info.run_id, "model") and not client.list_artifacts(k.info.run_id, "classifier")
    assert parent.data.tags["registration"].startswith("skipped")
    assert_nothing_running()


def test_exception_in_one_trial_fails_only_that_run(flaky_summary):
    summary = flaky_summary
    assert (summary["n_complete"], summary["n_failed"]) == (2, 1)
    [parent] = parents()
    kids = children_of(parent.info.run_id)
    assert [k.info.status for k in kids] == ["FINISHED", "FAILED", "FINISHED"]
    assert kids[1].data.tags["trial_state"] == "FAIL"
    assert "disk full (injected)" in kids[1].data.tags["failure"]
    assert parent.info.status == "FINISHED" and summary["alias"] == "champion"
    assert_nothing_running()


def test_an_interrupted_command_ends_its_run_and_the_runs_its_helpers_left(tracking):
    """The second line of defence behind every command's run: when the block is interrupted, the run
    ends FAILED, and so does a nested run that another process started and never ended (a reference
    process stopped by SIGKILL leaves exactly this: a RUNNING child of the command's run)."""
    client = MlflowClient()
    with pytest.raises(KeyboardInterrupt):
        with T.run_that_ends(run_name="owner") as run:
            left = client.create_run(run.info.experiment_id, run_name="left by a killed process",
                                     tags={"mlflow.parentRunId": run.info.run_id})
            raise KeyboardInterrupt
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    assert client.get_run(left.info.run_id).info.status == "FAILED"
    assert mlflow.active_run() is None
    with pytest.raises(ValueError, match="the block's own"):  # the error that ended the block goes on
        with T.run_that_ends(run_name="refused") as refused:
            raise ValueError("the block's own error")
    assert client.get_run(refused.info.run_id).info.status == "FAILED"
    with T.run_that_ends(run_name="done") as done:  # success: FINISHED, and nested runs are the caller's
        busy = client.create_run(done.info.experiment_id, tags={"mlflow.parentRunId": done.info.run_id})
    assert client.get_run(done.info.run_id).info.status == "FINISHED"
    assert client.get_run(busy.info.run_id).info.status == "RUNNING" and mlflow.active_run() is None


def test_ctrl_c_leaves_no_running_run_and_study_resumes(tracking, tmp_path):
    study = study_file(tmp_path, "intr")
    # 500 epochs of digits: trial 0 is still training long after its first epoch, when the signal comes
    cmd = [sys.executable, "-m", "fmnist_exp", "tune", "--family", "mlp", "--study", study, "--data", "digits",
           "--n_trials", "3", "--epochs", "500"]
    mlflow.search_experiments()  # the store's tables exist before the tune process opens it: no migration race
    # Ctrl-C as a terminal sends it: SIGINT handled by default in the child even when this test runs in
    # the background (a shell starts background jobs with SIGINT ignored, and tune, rightly, then leaves
    # it ignored, as under nohup: the study ran to the end and the test failed)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    client = MlflowClient()
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until trial 0 has trained at least one epoch
        kids = [r for r in runs() if r.data.tags.get("optuna_trial") == "0"]
        if kids and client.get_metric_history(kids[0].info.run_id, "val_accuracy"):
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("trial 0 never started")
    assert proc.poll() is None, "tune ended before the test could interrupt it"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out[-3000:]
    statuses = {r.info.run_name: r.info.status for r in runs()}
    assert statuses["trial 0"] == "FAILED" and statuses["tune intr"] == "FAILED", (statuses, out[-3000:])
    assert_nothing_running()
    summary = run_tune(study, n_trials=1)
    trials = optuna.load_study(study_name="intr", storage=storage.StorageURL.default().open()).trials
    assert [(t.number, t.state.name) for t in trials] == [(0, "FAIL"), (1, "COMPLETE")]
    assert summary["alias"] == "champion"
    assert_nothing_running()


def test_study_report_is_claimed_once_per_state(tracking):
    """Who renders the study's plots and report (study/artifacts.py claim_report): not a worker
    while another trial runs, unless it registered a new version; the last worker once per set
    of finished trials."""
    from fmnist_exp.study.artifacts import claim_report

    study = optuna.create_study(direction="maximize")
    study.tell(study.ask(), 0.5)
    running = study.ask()
    assert not claim_report(study, "run-a", registered_new=False)  # another worker's trial still runs
    assert claim_report(study, "run-b", registered_new=True)  # a new version: its page
    study.tell(running, 0.6)
    assert claim_report(study, "run-c", registered_new=False)  # the last one out, new trials finished
    assert study.user_attrs["study_report"] == {"run_id": "run-c", "n_finished": 2}
    assert not claim_report(study, "run-d", registered_new=False)  # nothing new since: not made again
    assert study.user_attrs["study_report"]["run_id"] == "run-c"
