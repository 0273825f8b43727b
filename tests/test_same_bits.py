"""Same bits across a refactor: runs trained by the code of an earlier commit are rebuilt bit for
bit by today's code, and a study that code started resumes and registers under today's.

A restructure (modules moved into subpackages, names changed) is meant to change form only. If it
changed behaviour as well (a default, a layer's initialiser, the order of random draws, the split),
the rebuild of an old run would no longer give the same bits, or an old study would no longer
open: both are what users of the registry and of long studies rely on. Tests of today's code
against itself cannot see such a change, since both sides move together; so here the old side
runs the baseline commit's own code, extracted with `git archive`, and the two sides meet only
where users meet them: the CLI and the stores (MLflow's SQLite tracking store, Optuna's study
database beside it), read with MLflow's and Optuna's own clients. Each side runs its
commands (the old side's cnn, mlp and a study; today's two rebuilds) through its own `python -m fmnist_exp`
entry one after another in one process (runpy: one TensorFlow import a side, MLflow records that side's
__main__.py as each run's source; each command checked to have run that side's package and to have ended
its run). State carried from one command to the next could only change the bits one side makes, so it
would show as a failed rebuild, never as a false pass. Today's process first loads the old served
classifiers (a probe, before the rebuilds: nothing they leave behind can help an old model load).
Today's `tune` resuming the old study is a process of its own. Nothing here imports fmnist_exp, whose
layout is what changes.

Bit for bit is the right bar: on one machine the same code, data and seed give the same bits
across processes (reproduce.py, bench/bench_determinism.py), so any difference is the code's.
Needs the baseline commit in the clone's history (after a shallow clone: `git fetch --unshallow`).

    pytest -q tests/test_same_bits.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
from conftest import REPO, cli, code_at, ok, old_env, store_at, store_copy, store_fingerprint, subprocess_env
from mlflow.tracking import MlflowClient

# one test process for the whole file: the baseline's store is made once (pyproject's --dist loadgroup)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_same_bits")]
MODEL = "fmnist-classifier"

# small enough for a 2-core CPU, big enough that a wrong initialiser or split would change the bits
TRAIN = {
    "cnn": ["--epochs", "1", "--train_samples", "2000", "--filters", "8,16", "--dense_units", "16", "--seed", "7"],
    "mlp": ["--epochs", "2", "--train_samples", "2000", "--hidden_units", "64,32", "--seed", "7"],
}
STUDY = """description: a study started by the baseline's code and resumed by today's
family: mlp
budget: {n_trials: 2, epochs: 1, train_samples: 1000, timeout: 0}
fixed: {lr_schedule: cosine, early_stopping_patience: 0}  # lr_schedule left after the baseline: read as absent
space:
  dropout: {type: float, low: 0.0, high: 0.3}
  learning_rate: {type: float, low: 1.0e-3, high: 3.0e-3, log: true}
  hidden_units: {type: widths, layers: [1, 2], units: [32, 64]}
pruner: {type: none}
reference: off  # a reference would train a second network per registration: not what is tested here
"""


def assert_ran_from(run, code: Path) -> None:
    """``python -m`` runs the __main__.py it found, and MLflow records that path as the run's source."""
    source = run.data.tags["mlflow.source.name"]
    assert Path(source).is_relative_to(code), f"run {run.info.run_name!r} ran {source}, not the code in {code}"


def all_runs():
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


# Before today's commands, in their process (so nothing the commands leave behind can help an old model load):
# today's package imported first, as a registered model of the earlier code meets it, then each served
# classifier named is loaded and scores the test split. Its output ends with a marker line.
PROBE = """
import mlflow, numpy as np
import fmnist_exp.serving
from fmnist_exp.data import load
ds = load(None)
for uri in probed:
    model = mlflow.pyfunc.load_model(uri)
    labels = np.concatenate([model.predict(ds.x_test[i:i + 1000])["label"].to_numpy() for i in range(0, 10000, 1000)])
    print(float(np.mean(labels == ds.y_test)))
print("\\n-- probe done --", flush=True)
"""


# One side's CLI, `python -m fmnist_exp ARGV` as the interpreter runs it (runpy: its __main__.py, so MLflow
# records that file as each run's source), once per command in one process: one TensorFlow import for a side's
# commands. Each command's output ends with a marker line, so each one's JSON summary is read.
ARGS = """
import json, os, runpy, sys
from pathlib import Path
commands, code, probed = json.loads(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
"""
COMMANDS = """
import mlflow.tracking.fluent as fluent
for argv in commands:
    # each command as a new process starts: no experiment remembered or exported by the one before
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    fluent._active_experiment_id = None
    sys.argv = ["-m", *argv]
    try:
        runpy.run_module("fmnist_exp", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if e.code:
            raise
    assert Path(sys.modules["fmnist_exp"].__file__).is_relative_to(code), sys.modules["fmnist_exp"].__file__
    assert fluent.active_run() is None, "a command left its run open"
    print("\\n-- command done --", flush=True)
"""


def commands_in_one_process(commands: dict[str, list[str]], code: Path, env: dict, cwd: Path,
                            probed: list[str] | None = None) -> tuple[dict[str, dict], str]:
    """PROBE of the ``probed`` classifier URIs, if any, then ``commands`` (name: argv) run by the CLI in ``code``
    one after another (COMMANDS), all in one process: each command's JSON summary, and what the probe printed."""
    script = ARGS + (PROBE if probed else "") + COMMANDS
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(list(commands.values())), str(code),
                           *(probed or [])], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"the commands of {code} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    probe, _, rest = proc.stdout.rpartition("\n-- probe done --") if probed else ("", "", proc.stdout)
    said = rest.split("\n-- command done --")
    assert len(said) == len(commands) + 1, proc.stdout[-3000:]
    summaries = {}
    for name, out in zip(commands, said, strict=False):
        lines = out.strip().splitlines()
        assert lines, f"{name} of {code} printed nothing:\n{proc.stderr[-3000:]}"
        try:
            summaries[name] = json.loads(lines[-1])
        except json.JSONDecodeError:
            pytest.fail(f"{name} of {code}: the last line of stdout is not its JSON summary: {lines[-1]!r}")
    return summaries, probe


OLD_ARGV = {"cnn": ["cnn", *TRAIN["cnn"]], "mlp": ["mlp", *TRAIN["mlp"]],
            "tune": ["tune", "--study", "{study}", "--study_name", "same-bits", "--n_trials", "2",
                     "--register", "false"]}


# Later commits whose runs today's code reads through params/migrations.py's steps after theirs: an mlp of each
# (the baseline's cnn and mlp cover both families' networks; these, the recipes each commit logged)
LATER = ("4da3967", "a8ebe1f")


@pytest.fixture(scope="module")
def baseline_store(old_code, tmp_path_factory, migrated_store):
    """A store (mlflow.db and optuna.db beside it) where the baseline's CLI, in one process, trained a cnn and an
    mlp and ran two trials of the study 'same-bits' (not registered), and each LATER commit's CLI trained an mlp:
    the JSON summaries of the commands (the later ones as mlp@<commit>). Tests work on copies (baseline_copy); the
    store is checked unchanged at teardown."""
    root = tmp_path_factory.mktemp("baseline-store")
    study_file = root / "same-bits.yaml"
    study_file.write_text(STUDY)
    argv = {name: [a.replace("{study}", str(study_file)) for a in args] for name, args in OLD_ARGV.items()}
    with store_at(root, migrated_store) as uri:
        summaries, _ = commands_in_one_process(argv, old_code, old_env(old_code, uri), root)
        for commit in LATER:
            code = code_at(commit, tmp_path_factory)
            later, _ = commands_in_one_process({"mlp": OLD_ARGV["mlp"]}, code, old_env(code, uri), root)
            summaries[f"mlp@{commit}"] = {**later["mlp"], "code": str(code)}
    before = store_fingerprint(root)
    yield root, summaries
    assert store_fingerprint(root) == before, "a test changed the shared store instead of its copy"


@pytest.fixture
def baseline_copy(baseline_store, tmp_path, monkeypatch):
    """This test's own copy of baseline_store, in use (its URI): the baseline's summaries."""
    root, summaries = baseline_store
    with store_copy(root, tmp_path, monkeypatch) as uri:
        yield uri, summaries


def test_todays_code_rebuilds_baseline_runs_bit_for_bit(old_code, baseline_copy, tmp_path):
    """A cnn and an mlp of the baseline's code and an mlp of each LATER commit's, each rebuilt bit for bit by
    today's `reproduce` (what each logged read through the migration's steps after its version); the served
    classifiers the baseline logged loaded and scored first, in the same process (one TensorFlow import for
    today's side)."""
    tracking, summaries = baseline_copy
    client = MlflowClient()
    trained = ("cnn", "mlp", *(f"mlp@{commit}" for commit in LATER))
    old_runs = {name: client.get_run(summaries[name]["run_id"]) for name in trained}
    rebuilds = {name: ["reproduce", "--model_uri", f"runs:/{run.info.run_id}/model", "--exact", "true"]
                for name, run in old_runs.items()}
    baselines = [old_runs["cnn"], old_runs["mlp"]]
    reports, probed = commands_in_one_process(
        rebuilds, REPO, {**subprocess_env(), "MLFLOW_TRACKING_URI": tracking}, tmp_path,
        probed=[run.data.tags["classifier_uri"] for run in baselines])
    for name, old_run in old_runs.items():
        family = name.partition("@")[0]
        assert old_run.data.params["epochs"] == TRAIN[family][1]  # what the earlier code's command was given
        assert "recipe_version" not in old_run.data.params  # logged before versions: version 0, every step
        assert_ran_from(old_run, Path(summaries[name].get("code", old_code)))
        report = reports[name]
        assert report["passed"] is True and report["bit_identical"] == 1.0, (name, report)
        rebuild = client.get_run(report["run_id"])
        assert_ran_from(rebuild, REPO)
        assert rebuild.info.status == "FINISHED"
        assert rebuild.data.tags["reproduces_run_id"] == old_run.info.run_id
        assert rebuild.data.metrics["test_accuracy"] == old_run.data.metrics["test_accuracy"]  # exactly: same bits

    # the served classifiers the baseline logged (its own code inside each) load and answer under today's
    # install, today's package imported first: what a registered model of the earlier code meets (PROBE)
    answered = [float(line) for line in probed.split()[-len(baselines):]]
    assert answered == pytest.approx([r.data.metrics["test_accuracy"] for r in baselines], abs=2e-4)


def test_a_study_the_baseline_started_resumes_and_registers_under_todays_code(old_code, baseline_copy, tmp_path):
    """The baseline's two trials of 'same-bits' (baseline_store, not registered) resumed for one more trial by
    today's `tune`, which registers the best of all three."""
    # no study file (the copy's removed): the study carries its own, stored on it when the baseline created it
    (tmp_path / "same-bits.yaml").unlink()
    ok(cli(["tune", "--study_name", "same-bits", "--n_trials", "1"], tmp_path), "today's tune")

    study = optuna.load_study(study_name="same-bits", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    runs = all_runs()
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    parents = {r.data.tags["resumed"]: r for r in runs if r.info.run_name == "tune same-bits"}
    assert set(parents) == {"false", "true"}, [r.info.run_name for r in runs]
    assert_ran_from(parents["false"], old_code)
    assert_ran_from(parents["true"], REPO)
    champion = MlflowClient().get_model_version_by_alias(MODEL, "champion")
    trials = {r.info.run_id for r in runs if r.data.tags.get("optuna_study") == "same-bits"
              and "optuna_trial" in r.data.tags}
    assert champion.run_id in trials  # the best of all three trials, whichever code trained it
