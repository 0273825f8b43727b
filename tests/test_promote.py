"""Moving an alias by hand (`promote`): a rollback and forward again, recorded on the versions, and every
refusal before anything changes. A real registry under tmp_path; versions of trivial models, no training."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import datetime, timezone

import mlflow
import numpy as np
import pytest
from conftest import cli, free_port, mlflow_run
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

from fmnist_exp import cli as fmnist_cli

# one test process for the whole file: its module-scoped fixtures are made once (pyproject's --dist loadgroup)
pytestmark = pytest.mark.xdist_group("promote")

MODEL = "fmnist-classifier"
FASHION = {"data_shape": "28x28x1", "data_name": "fashion-mnist", "data_sha256": "f" * 64}
# v1-v4: Fashion-MNIST, v4 @champion; v5: colour images, known by its signature only (no data tags);
# v6: its tag says another dataset of the same shape (another digest)
VERSIONS = {1: FASHION, 2: FASHION, 3: FASHION, 4: FASHION, 5: {},
            6: {"data_shape": "28x28x1", "data_name": "my-folder", "data_sha256": "a" * 64}}
MODELS_RUN = "logs the test's models"
GATE_SENTENCE = "v4 is @champion: better on the same test images (p < promote_alpha=0.05)"


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def _log(shape: tuple[int, ...]) -> str:
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype("int64"), (-1, *shape))]))
    return mlflow.pyfunc.log_model(name="classifier", python_model=Echo(), signature=signature,
                                   pip_requirements=[]).model_uri


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One registry, built once: each test works on its own copy of the database (the models' files,
    read only, stay here)."""
    where = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{where / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(where)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run(run_name=MODELS_RUN):
            gray, colour = _log((28, 28)), _log((32, 32, 3))
        for version, tags in VERSIONS.items():
            mlflow.register_model(colour if version == 5 else gray, MODEL, tags=tags)
        client = MlflowClient()
        client.set_registered_model_alias(MODEL, "champion", "4")
        client.set_registered_model_alias(MODEL, "challenger", "3")
        client.set_model_version_tag(MODEL, "4", "alias_decision", GATE_SENTENCE)
    return where / "mlflow.db"


@pytest.fixture
def registry(tracking, tmp_path, template, monkeypatch):
    """The test's own copy of the registry, at ``tracking``'s URI; no `mlflow run` run around it."""
    shutil.copy(template, tmp_path / "mlflow.db")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return MlflowClient()


def promote(*args: str) -> int:
    return fmnist_cli.main(["promote", *args])


def champion(client) -> str:
    return str(client.get_registered_model(MODEL).aliases["champion"])


def tags(client, version) -> dict:
    return client.get_model_version(MODEL, str(version)).tags


def all_runs():
    """Every run but the one that logged the models."""
    return mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"attributes.run_name != \"{MODELS_RUN}\"")


def test_rollback_and_forward_again(registry, capsys):
    client = registry
    before = datetime.now(timezone.utc).replace(microsecond=0)
    assert promote("--version", "2", "--reason", "v4 calls sandals sneakers") == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{MODEL}@champion: v4 -> v2 (v4 calls sandals sneakers)")
    assert "within one poll (their poll_s, default 10 s)" in line and "\n" not in line
    assert champion(client) == "2"
    t2 = tags(client, 2)
    at = datetime.strptime(t2["promoted_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert before <= at <= datetime.now(timezone.utc)
    assert (t2["promoted_alias"], t2["promoted_reason"], t2["promoted_from"]) == (
        "champion", "v4 calls sandals sneakers", "v4")
    assert t2["promoted_by"].startswith("promote command")
    assert t2["alias_decision"].startswith("champion by hand: v4 calls sandals sneakers (v4 -> v2")
    t4 = tags(client, 4)
    assert (t4["replaced_by"], t4["replaced_alias"], t4["replaced_at"]) == ("v2", "champion", t2["promoted_at"])
    assert t4["alias_decision"].startswith("champion moved to v2 by hand")
    assert str(client.get_registered_model(MODEL).aliases["challenger"]) == "3", "other aliases stay"

    assert promote("--version", "4", "--reason", "sandals fixed upstream") == 0
    assert capsys.readouterr().out.startswith(f"{MODEL}@champion: v2 -> v4 (sandals fixed upstream)")
    assert champion(client) == "4"
    t4, t2 = tags(client, 4), tags(client, 2)
    assert (t4["promoted_from"], t4["promoted_reason"]) == ("v2", "sandals fixed upstream")
    assert t2["replaced_by"] == "v4"
    moves = [(m["from"], m["to"], m["reason"]) for m in json.loads(t4["promotions"])]
    assert moves == [("4", "2", "v4 calls sandals sneakers"), ("2", "4", "sandals fixed upstream")]
    assert json.loads(t2["promotions"]) == json.loads(t4["promotions"]), "both versions saw both moves"
    assert all_runs() == [], "outside `mlflow run` no run is made: the versions hold the record"


def test_unknown_version_refused_and_the_run_ended(registry, capsys, monkeypatch):
    client = registry
    run = client.create_run("0")  # as `mlflow run` makes one before the command starts
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    assert promote("--version", "9", "--reason", "roll back") == 2
    err = capsys.readouterr().err
    assert "fmnist-classifier has no version 9: versions 1-6 exist (@champion is v4)" in err
    assert champion(client) == "4" and "promotions" not in tags(client, 4)
    ended = client.get_run(run.info.run_id)
    assert ended.info.status == "FAILED" and ended.data.tags["promote_outcome"].startswith("refused: ")
    assert (ended.data.tags["promote_to"], ended.data.tags["promote_reason"]) == ("9", "roll back")

    client.delete_model_version(MODEL, "3")  # a gap in the numbers
    assert promote("--version", "3", "--reason", "roll back") == 2
    assert "versions 1-2, 4-6 exist" in capsys.readouterr().err


def test_another_datasets_version_refused(registry, capsys):
    client = registry
    assert promote("--version", "5", "--reason", "try colour") == 2  # known by its signature alone
    err = capsys.readouterr().err
    assert "v5 was trained on unknown data (32x32x3 images)" in err
    assert "@champion v4 on fashion-mnist (28x28x1 images)" in err and "send 28x28x1 images" in err
    assert promote("--version", "6", "--reason", "same shape, other images") == 2
    err = capsys.readouterr().err
    assert "my-folder" in err and "sha256 aaaaaaaaaaaa" in err and "another dataset" in err
    assert champion(client) == "4" and "promoted_at" not in tags(client, 5)

    # no holder: nothing served could break, so nothing is compared
    assert promote("--version", "5", "--reason", "colour trial", "--alias", "colour") == 0
    assert capsys.readouterr().out.startswith(f"{MODEL}@colour: none -> v5 (colour trial)")
    assert tags(client, 5)["promoted_from"] == "none"
    assert json.loads(tags(client, 5)["promotions"])[0]["from"] is None


def test_what_must_be_given(registry, capsys):
    client = registry
    assert promote("--version", "2") == 2
    err = capsys.readouterr().err
    assert "reason is required" in err and "-P reason=" in err and "version is required" not in err
    assert promote("--reason", "roll back") == 2
    err = capsys.readouterr().err
    assert "version is required" in err and "fmnist-classifier: versions 1-6 exist (@champion is v4)" in err
    for reserved in ("latest", "v2", "V7"):
        assert promote("--version", "2", "--reason", "x", "--alias", reserved) == 2
        assert "reserved by MLflow" in capsys.readouterr().err
    assert promote("--version", "2", "--reason", "x", "--model_name", "no-such-model") == 2
    err = capsys.readouterr().err
    assert "no registered model named 'no-such-model'" in err and "registered models there: fmnist-classifier" in err
    assert champion(client) == "4" and "promoted_at" not in tags(client, 2)


def test_no_password_printed(registry, capsys):
    port = free_port()  # nothing listens there
    mlflow.set_tracking_uri(f"http://bob:hunter2@127.0.0.1:{port}")
    assert promote("--version", "2", "--reason", "roll back") == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port} does not answer" in err and "hunter2" not in err


def test_a_version_not_ready_refused(registry, tmp_path, capsys):
    with sqlite3.connect(tmp_path / "mlflow.db") as db:  # a registration still under way
        db.execute("UPDATE model_versions SET status = 'PENDING_REGISTRATION' WHERE version = 2")
    assert promote("--version", "2", "--reason", "roll back") == 2
    err = capsys.readouterr().err
    assert "v2 is PENDING_REGISTRATION, not READY" in err and "versions 1, 3-6" in err
    assert champion(registry) == "4"


def test_already_there_changes_nothing(registry, capsys):
    before = tags(registry, 4)
    assert promote("--version", "4", "--reason", "just checking") == 0
    assert capsys.readouterr().out.strip() == f"{MODEL}@champion is already v4: nothing moved, nothing recorded"
    assert tags(registry, 4) == before and before["alias_decision"] == GATE_SENTENCE


def test_through_the_cli(registry, tmp_path):
    proc = cli(["promote", "--version", "3", "--reason", "roll back: v4 drifts"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{MODEL}@champion: v4 -> v3 (roll back: v4 drifts)" in proc.stdout
    assert champion(registry) == "3"


@pytest.mark.slow  # an end-to-end run through `mlflow run`, as the marker says (pyproject)
def test_through_mlflow_run(registry, tmp_path):
    proc = mlflow_run("promote", {"version": 2, "reason": "v4 drifts on new stock"}, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{MODEL}@champion: v4 -> v2 (v4 drifts on new stock)" in proc.stdout
    assert champion(registry) == "2" and tags(registry, 2)["promoted_reason"] == "v4 drifts on new stock"
    [run] = all_runs()
    assert run.info.status == "FINISHED", "the run `mlflow run` made is not left empty or RUNNING"
    t = run.data.tags
    assert (t["promote_model"], t["promote_alias"], t["promote_from"], t["promote_to"], t["promote_reason"]) == (
        MODEL, "champion", "4", "2", "v4 drifts on new stock")
    assert t["mlflow.runName"] == f"promote {MODEL}@champion v2" and t["promote_outcome"] == "moved"
    assert json.loads(tags(registry, 2)["promotions"])[0]["run_id"] == run.info.run_id


@pytest.mark.slow
def test_refused_through_mlflow_run(registry, tmp_path):
    proc = mlflow_run("promote", {"version": 9, "reason": "typo"}, tmp_path)
    assert proc.returncode != 0 and "has no version 9: versions 1-6 exist" in proc.stderr
    [run] = all_runs()
    assert run.info.status == "FAILED" and run.data.tags["promote_outcome"].startswith("refused: ")
    assert champion(registry) == "4"
