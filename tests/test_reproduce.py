"""Lineage on registered versions and the `reproduce` entry point, on tiny budgets: a version
carries what rebuilds it, the rebuild runs through the real `mlflow run` (and the CLI's main
in-process elsewhere: the same code without a TensorFlow import per command), and data with
another digest is refused before anything trains. Studies and runs train on scikit-learn's 8x8
digits (lineage, seeds, ensembles and distillation are the same on any data); the refusal of
other data uses Fashion-MNIST's own files with one label changed."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import subprocess

import mlflow
import numpy as np
import pytest
from conftest import REPO, mlflow_run, store_at, store_copy, store_fingerprint
from mlflow.tracking import MlflowClient

from fmnist_exp import cli as command_line
from fmnist_exp import data
from fmnist_exp import params as P
from fmnist_exp.commands import reproduce, tune
from fmnist_exp.registry.versions import version_tags
from fmnist_exp.train import job, lineage
from fmnist_exp.train.evaluate import classifier_answers

# one test process for the whole file: its module-scoped store is made once (pyproject's --dist loadgroup)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_reproduce")]
MODEL = "digits-classifier"  # the studies here train on digits
# batch_size 32 (and a learning rate of 1e-2 where none is searched): a tiny budget that learns, shown on the
# validation images at p < 1e-6, not near 0.05: the gate registers no model at chance (issue 54)
STUDY = """
description: One tiny MLP trial, retrained once, for the reproduce tests.
family: mlp
budget: {n_trials: 1, epochs: 1, train_samples: 1000, timeout: 0}
fixed: {early_stopping_patience: 0, hidden_units: '64', batch_size: 32, learning_rate: 1.0e-2}
space:
  dropout: {type: float, low: 0.0, high: 0.3}
pruner: {type: none}
final: {epochs: 2}
"""
TINY_MLP = {"epochs": 1, "train_samples": 1000, "hidden_units": "64", "early_stopping_patience": 0}
TINY_DIGITS = {**TINY_MLP, "data": "digits"}
SEEDS_2 = "{epochs: 4, seeds: 2, ensemble: true}"  # the average above chance on the 13 images no seed trained on


@pytest.fixture(scope="module")
def digits():
    return data.load_dataset("digits")


def reproduce_here(capsys, *args: str) -> tuple[int, str, str]:
    """`reproduce` through the CLI's main, in-process: its exit code, stdout and stderr."""
    capsys.readouterr()  # what came before
    code = command_line.main(["reproduce", *args])
    said = capsys.readouterr()
    return code, said.out, said.err


def runs(filter_string=""):
    return mlflow.search_runs(search_all_experiments=True, filter_string=filter_string, output_format="list")


def last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def head_commit() -> str:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_version_carries_lineage_and_mlflow_run_reproduces_it(tracking, tmp_path, digits):
    study = tmp_path / "tiny.yaml"
    study.write_text(STUDY + "reference: off\n")  # the reference is not what is checked here
    summary = tune.run(P.tune_args({"family": "mlp", "study": str(study), "data": "digits"})).flat()
    assert summary["candidate"] == "final retrain" and summary["registered_version"] == 1
    client = MlflowClient()
    mv = client.get_model_version(MODEL, "1")
    source = client.get_run(mv.run_id)
    assert source.info.run_name == "final (trial 0)"
    t = mv.tags
    assert t["source_run_id"] == mv.run_id and t["family"] == "mlp" and t["trial_number"] == "0"
    assert t["git_commit"] == head_commit() and t["git_dirty"] in ("true", "false")
    assert source.data.tags["git_commit"] == t["git_commit"]  # every training run carries it too
    assert t["data_sha256"] == digits.sha256
    assert {t[f"data_digest_{c}"] for c in ("training", "validation", "test")} == set(
        lineage.split_digests(source).values()) and len(lineage.split_digests(source)) == 3
    assert t["optuna_storage"].startswith("sqlite:///") and t["study"] == "tiny"
    assert t["reproduce_command"] == f"mlflow run . -e reproduce -P model_uri=models:/{MODEL}/1"

    proc = mlflow_run("reproduce", {"model_uri": f"models:/{MODEL}@champion", "tolerance": 0.15}, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [rebuild] = runs(f"tags.reproduces_run_id = '{mv.run_id}'")
    assert rebuild.info.run_name == f"reproduce models:/{MODEL}@champion" and rebuild.info.status == "FINISHED"
    assert rebuild.data.params["reproduces_run_id"] == mv.run_id
    assert rebuild.data.params["epochs"] == "2" and rebuild.data.params["dropout"] == source.data.params["dropout"]
    assert rebuild.data.tags["reproduces_model_uri"] == f"models:/{MODEL}@champion"
    m = rebuild.data.metrics
    assert m["original_test_accuracy"] == pytest.approx(float(t["test_accuracy"]), abs=1e-6)
    assert m["accuracy_difference"] == pytest.approx(m["test_accuracy"] - m["original_test_accuracy"])
    # same code, data and seed on the same machine: bit for bit, although the original was built in a
    # process that had trained trial 0 first (initial weights come from the run's seed, not from history)
    assert m["bit_identical"] == 1 and m["agreement"] == 1 and m["accuracy_difference"] == 0
    report = last_json(proc.stdout)
    assert report["reproduces_run_id"] == mv.run_id and report["passed"] is True


def _copy_with_one_label_changed(dst):
    dst.mkdir()
    for stem in data.IDX_FILES.values():
        if stem != data.IDX_FILES["y_test"]:
            shutil.copy(data.DEBIAN_DIR / f"{stem}.gz", dst / f"{stem}.gz")
    labels = bytearray(gzip.decompress((data.DEBIAN_DIR / f"{data.IDX_FILES['y_test']}.gz").read_bytes()))
    labels[8] = (labels[8] + 1) % 10  # the first test label (after the 8-byte IDX header)
    (dst / data.IDX_FILES["y_test"]).write_bytes(bytes(labels))


def test_runs_uri_reproduces_and_other_data_is_refused(tracking, tmp_path, dataset, capsys):
    if not data.DEBIAN_DIR.is_dir():
        pytest.skip("needs Debian's dataset-fashion-mnist to make a modified copy")
    p = P.network("mlp", TINY_MLP)
    original = job.train_run(dataset, p)
    uri = f"runs:/{original.run_id}/model"
    other = tmp_path / "other-data"
    _copy_with_one_label_changed(other)

    code, _, err = reproduce_here(capsys, "--model_uri", uri, "--data_dir", str(other))
    assert code == 2, err[-2000:]
    assert "is not the data run" in err and "nothing was trained" in err
    assert len(runs()) == 1, "refused before any run started"

    # same machine, code, data and seed: bit for bit the original (bench/bench_determinism.py), so exact holds
    code, out, err = reproduce_here(capsys, "--model_uri", uri, "--exact", "true")
    assert code == 0, err[-3000:]
    [rebuild] = runs(f"tags.reproduces_run_id = '{original.run_id}'")
    assert rebuild.info.run_name == f"reproduce {uri}" and rebuild.data.tags["reproduce_verdict"] == "passed"
    report = last_json(out)
    assert report["original_test_accuracy"] == pytest.approx(original.metrics["test_accuracy"], abs=1e-6)
    assert report["bit_identical"] == 1 and report["agreement"] == 1 and report["accuracy_difference"] == 0
    assert report["run_id"] == rebuild.info.run_id


def test_parameters_added_later_at_their_old_value_are_not_reported_unrecorded():
    """A run logged before tta_shift and bn_settle existed trained without them: reproduce fills in the values
    it trained with (not today's defaults: bn_settle is on today) and does not warn that it filled them in; a
    parameter whose default could differ is still left to the default; levers that left since, logged at the
    value that trains as today, read as absent (params/migrations.py)."""
    logged = {k: str(v) for k, v in P.network("mlp", TINY_MLP).flat().items() if k not in ("tta_shift", "bn_settle")}
    names = [p.name for p in P.table.family_params("mlp")]
    recorded = reproduce.as_trained(names, logged)
    assert recorded["tta_shift"] == 0 and recorded["bn_settle"] is False
    assert set(names) <= set(recorded)
    assert "label_smoothing" not in reproduce.as_trained(names, {k: v for k, v in logged.items()
                                                                 if k != "label_smoothing"})
    earlier = {**logged, "ema": "0.0", "optimizer": "adam", "lr_schedule": "cosine", "lr_patience": "2",
               "lr_factor": "0.5", "aug_erase": "0.0", "aug_erase_shape": "keras"}
    assert reproduce.as_trained(names, earlier) == recorded
    cnn = {k: str(v) for k, v in P.network("cnn").flat().items()}
    assert reproduce.as_trained([p.name for p in P.table.family_params("cnn")], {**cnn, "residual": "False"}) == \
        reproduce.as_trained([p.name for p in P.table.family_params("cnn")], cnn)


def test_version_tags_redact_the_storage_password(tracking):
    with mlflow.start_run() as parent:
        mlflow.log_param("optuna_storage", "postgresql://fmnist:s3cret@db.example:5432/optuna")
    with mlflow.start_run() as source:
        mlflow.log_params({"data_sha256": "ab" * 32, "data_source": "/data"})
        mlflow.set_tag("mlflow.source.git.commit", "c0ffee")  # what `mlflow run` records
    tags = version_tags(source.info.run_id, parent.info.run_id)
    assert tags["optuna_storage"].startswith("postgresql") and tags["optuna_storage"].endswith("://fmnist:***@db.example:5432/optuna")
    assert "s3cret" not in json.dumps(tags)
    assert tags["git_commit"] == "c0ffee" and tags["git_dirty"] == "unknown"
    assert tags["data_sha256"] == "ab" * 32


def test_rebuild_trains_in_the_precision_auto_chose_for_the_original():
    """``auto`` depends on the machine and on the code version (earlier code chose float32 where later
    code chooses bfloat16 on CPUs that have it): a rebuild trains in the precision the original used
    wherever it runs natively here."""
    import dataclasses

    from fmnist_exp.data import FASHION_MNIST
    from fmnist_exp.train.precision import gpu_visible

    orig = reproduce.Original(
        uri="runs:/r/model", run_id="r", family="cnn", params=P.network("cnn", {"precision": "auto"}),
        unrecorded=(), data_sha256="", data_source="", split_digests={}, code={}, keras_uri="",
        test_accuracy=float("nan"), precision_used="float32")
    here, there = P.command("reproduce", {}), P.command("reproduce", {"data_dir": "d"})
    assert reproduce.rebuild_params(orig, there, FASHION_MNIST).precision == "float32"  # auto: float32 on a CPU then
    assert reproduce.rebuild_params(orig, there, FASHION_MNIST).data_dir == "d"
    gpu = dataclasses.replace(orig, precision_used="mixed_float16")  # trained on a GPU, rebuilt here
    assert reproduce.rebuild_params(gpu, here, FASHION_MNIST).precision == (
        "mixed_float16" if gpu_visible() else "auto")
    named = dataclasses.replace(orig, params=P.replaced(orig.params, precision="mixed_bfloat16"))
    assert reproduce.rebuild_params(named, here, FASHION_MNIST).precision == "mixed_bfloat16"  # named: it stays
    # filters not given (a cnn run that `mlflow run` started) are the widths that fit the data, made concrete
    assert reproduce.rebuild_params(orig, here, FASHION_MNIST).filters == (32, 64, 128, 256)


def test_a_run_of_a_retired_lever_is_refused_with_the_commit_that_rebuilds_it(tracking, capsys):
    """Weight averaging (ema) did not pay and left the package (params/migrations.py, step 8): a run that
    trained with it (its parameters as that code logged them) is refused before any run starts, naming the
    commit that trains it as it did."""
    with mlflow.start_run(run_name="weight average") as run:
        mlflow.log_params({**P.network("mlp", TINY_MLP).logged(), "ema": "0.9", "data_sha256": "0" * 64})
        mlflow.set_tag("model_uri", f"runs:/{run.info.run_id}/model")
    code, _, err = reproduce_here(capsys, "--model_uri", f"runs:/{run.info.run_id}/model")
    assert code == 2, err[-2000:]
    assert "ema=0.9: that parameter has left the package" in err and "git checkout 55dbc2bb573b" in err
    assert "nothing was trained" in err
    assert len(runs()) == 1, "refused before any run started"


def test_a_logged_models_id_names_the_run_that_logged_it(tracking, capsys):
    """A study's trial logs one model, the classifier, and its model_uri tag is that model's models:/<model id>:
    reproduce takes it as the run that logged it (the same run as its runs:/<run>/classifier)."""
    with mlflow.start_run(run_name="trial 0") as run:
        logged = mlflow.initialize_logged_model(name="classifier", source_run_id=run.info.run_id)
    assert reproduce.source_run_id(f"models:/{logged.model_id}") == (run.info.run_id, pytest.approx(float("nan"),
                                                                                                     nan_ok=True))
    orphan = mlflow.initialize_logged_model(name="classifier")  # logged with no run
    code, _, err = reproduce_here(capsys, "--model_uri", f"models:/{orphan.model_id}")
    assert code == 2 and "that logged model names no source run" in err
    code, _, err = reproduce_here(capsys, "--model_uri", "models:/fmnist-classifier")  # a name, no version
    assert code == 2 and "no logged model has that id; pass models:/<name>/<version>" in err
    assert len(runs()) == 1, "refused before any run started"


def test_unknown_model_refused_before_work(tracking, capsys):
    code, _, err = reproduce_here(capsys, "--model_uri", "models:/no-such-model/3")
    assert code == 2 and "model_uri=models:/no-such-model/3" in err
    code, _, err = reproduce_here(capsys, "--model_uri", "s3://bucket/model")
    assert code == 2 and "not a models:/" in err


DISTILL = "{epochs: 1, seeds: 2, ensemble: true, distill: 0.8}"


def study_store(tmp_path_factory, migrated_store, name: str, final: str):
    """The tiny study ``name`` with ``final`` (no reference), run once in a store of its own for the tests that
    start from it: its root, the study's summary and what it printed; each test works on a copy (study_copy),
    and the store is checked unchanged at teardown."""
    import mlflow.tracking.fluent

    root = tmp_path_factory.mktemp(f"{name}-store")
    (root / f"{name}.yaml").write_text(STUDY.replace("final: {epochs: 2}", f"final: {final}") + "reference: off\n")
    with store_at(root, migrated_store), contextlib.redirect_stdout(io.StringIO()) as said:
        summary = tune.run(P.tune_args({"family": "mlp", "study": str(root / f"{name}.yaml"), "data": "digits"})).flat()
    mlflow.tracking.fluent._active_experiment_id = None  # as conftest's _no_active_experiment leaves a test
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    before = store_fingerprint(root)
    yield root, summary, said.getvalue()
    assert store_fingerprint(root) == before, "a test changed the shared store instead of its copy"


@pytest.fixture(scope="module")
def ensemble_store(tmp_path_factory, migrated_store):
    """The tiny study 'ens' with two seeds averaged."""
    yield from study_store(tmp_path_factory, migrated_store, "ens", SEEDS_2)


@pytest.fixture(scope="module")
def distilled_store(tmp_path_factory, migrated_store):
    """The tiny study 'dis' with two seeds averaged and one network distilled from their average."""
    yield from study_store(tmp_path_factory, migrated_store, "dis", DISTILL)


def study_copy(store, tmp_path, monkeypatch):
    """This test's own copy of a study_store, in use: the study's summary and what it printed."""
    root, summary, out = store
    with store_copy(root, tmp_path, monkeypatch):
        yield summary, out


@pytest.fixture
def ensemble_copy(ensemble_store, tmp_path, monkeypatch):
    yield from study_copy(ensemble_store, tmp_path, monkeypatch)


@pytest.fixture
def distilled_copy(distilled_store, tmp_path, monkeypatch):
    yield from study_copy(distilled_store, tmp_path, monkeypatch)


def test_seed_ensemble_is_registered_served_and_reproduced(ensemble_copy, tmp_path, digits, capsys):
    """final.ensemble: the registered model is the average of the seeds' models, its validation
    accuracy is measured on images no member trained on, and `reproduce` rebuilds every member."""
    from fmnist_exp.study import ensemble

    summary, out = ensemble_copy
    assert "registered: their average (ensemble)" in out
    assert summary["candidate"] == "ensemble of final retrains" and summary["final_seed_registered"] == "ensemble"
    finals = sorted(runs("tags.final_seed != ''"), key=lambda r: r.data.tags["final_seed"])
    [ens] = runs(f"tags.{lineage.MEMBERS_TAG} != '' and tags.optuna_study = 'ens'")
    assert ens.info.run_name == "ensemble (trial 0, seeds 42-43)" and ens.info.status == "FINISHED"
    assert ens.data.tags[lineage.MEMBERS_TAG] == ",".join(r.info.run_id for r in finals)
    assert ens.data.params["ensemble_seeds"] == "42,43" and "seed" not in ens.data.params
    x_val, y_val = ensemble.held_out_by_all(digits, 0.1, [42, 43])
    assert ens.data.metrics["val_final_images"] == len(y_val) and 0 < len(y_val) < 1000
    mv = MlflowClient().get_model_version(MODEL, str(summary["registered_version"]))
    assert mv.tags["source_run_id"] == ens.info.run_id and mv.aliases == ["champion"]
    # lineage: the data, code and the two splits the ensemble itself was judged on
    assert mv.tags["data_sha256"] == digits.sha256 and mv.tags["git_commit"] == head_commit()
    assert mv.tags["data_digest_validation"] == lineage.split_digest(x_val, y_val)
    assert mv.tags["data_digest_test"] == lineage.split_digest(digits.x_test, digits.y_test)
    # it costs what both members cost: every multiply-accumulate counted twice, and on the version
    member_macs = [r.data.metrics["cost_mmacs_per_image"] for r in finals]
    assert ens.data.metrics["cost_mmacs_per_image"] == pytest.approx(sum(member_macs)) == pytest.approx(
        2 * member_macs[0])
    assert float(mv.tags["cost_mmacs_per_image"]) == pytest.approx(ens.data.metrics["cost_mmacs_per_image"], rel=5e-6)

    # the served classifier answers the mean of the two members' probabilities
    probs = lambda uri: np.stack(classifier_answers(uri, digits.x_test[:64])["probabilities"])  # noqa: E731
    members = [probs(r.data.tags["classifier_uri"]) for r in finals]
    registered = probs(f"models:/{MODEL}/{mv.version}")
    assert np.allclose(registered, (members[0] + members[1]) / 2, atol=1e-6)
    assert not np.allclose(members[0], members[1])
    # what averaging bought over the seed that would have been registered alone, paired on test
    by_val = max(finals, key=lambda r: r.data.metrics["val_final_accuracy"])
    seed_labels = classifier_answers(by_val.data.tags["classifier_uri"], digits.x_test)["label"].to_numpy()
    ens_labels = classifier_answers(f"models:/{MODEL}/{mv.version}", digits.x_test)["label"].to_numpy()
    parent = MlflowClient().get_run(ens.data.tags["mlflow.parentRunId"]).data
    assert parent.metrics["ensemble_gain_seed"] == int(by_val.data.params["seed"]) == summary["ensemble_gain_seed"]
    assert parent.metrics["ensemble_gain_diff"] == pytest.approx(
        np.mean(ens_labels == digits.y_test) - np.mean(seed_labels == digits.y_test))
    assert parent.metrics["ensemble_gain_b"] == np.sum((ens_labels == digits.y_test) & (seed_labels != digits.y_test))
    assert parent.tags["ensemble_gain"] == summary["ensemble_gain"]
    assert f"[tune] ensemble over seed {by_val.data.params['seed']} (the best validation accuracy): " \
           f"{summary['ensemble_gain']}" in out
    page = MlflowClient().download_artifacts(ens.data.tags["mlflow.parentRunId"], "study/report.html", str(tmp_path))
    html = open(page).read()  # the study's report shows the same comparison
    assert "The seeds' average against one seed" in html
    assert f"{100 * parent.metrics['ensemble_gain_diff']:+.2f} points" in html
    assert ens.data.metrics["val_final_accuracy"] == pytest.approx(
        float(np.mean(np.stack(classifier_answers(ens.data.tags["classifier_uri"], x_val)["label"]) == y_val)))

    code, out, err = reproduce_here(capsys, "--model_uri", f"models:/{MODEL}@champion", "--exact", "true")
    assert code == 0, err[-3000:]
    [rebuild] = runs(f"tags.reproduces_run_id = '{ens.info.run_id}'")
    kids = runs(f"tags.mlflow.parentRunId = '{rebuild.info.run_id}'")
    assert sorted(r.data.tags["reproduces_run_id"] for r in kids) == sorted(r.info.run_id for r in finals)
    assert sorted(r.data.params["seed"] for r in kids) == ["42", "43"]
    report = last_json(out)  # same machine, code, data and seeds: both members bit for bit, so the average
    assert report["bit_identical"] == 1 and report["accuracy_difference"] == 0 and report["passed"] is True
    assert report["original_test_accuracy"] == pytest.approx(float(mv.tags["test_accuracy"]), abs=1e-6)
    # a member that is gone (an id no run has) is named together with the ensemble that was asked for
    with pytest.raises(reproduce.ReproduceError, match=rf"models:/{MODEL}@champion is an ensemble .*"
                                                       rf"runs:/{'0' * 32}/model: its source run .* cannot be read"):
        reproduce.read_member(f"models:/{MODEL}@champion", "0" * 32)


def test_seeds_sharing_one_split_are_validated_on_all_of_it_and_reproduced(ensemble_copy, tmp_path, digits,
                                                                           capsys):
    """final.split_seed: every seed trains on the same images and holds out the same validation
    split (so three seeds leave all of it, not ~1/1000), starting from its own initialisation. The
    study registered again with it reuses only the seed whose split it already was, and a
    reproduction rebuilds the members on that split."""
    from fmnist_exp.study import ensemble

    # the study 'ens' of two seeds, each on its own split (ensemble_store), registered again with split_seed
    before = {r.data.tags["final_seed"]: r.info.run_id for r in runs("tags.final_seed != ''")}
    study = tmp_path / "ens.yaml"
    study.write_text(study.read_text().replace("seeds: 2, ensemble: true", "seeds: 3, ensemble: true, split_seed: 42"))
    summary = tune.register_only(P.command("register", {"family": "mlp", "study": str(study), "data": "digits"})).flat()
    assert summary["final_seed_registered"] == "ensemble"
    finals = [r for r in runs("tags.final_seed != ''") if r.info.run_id != before["43"]]
    finals.sort(key=lambda r: r.data.tags["final_seed"])
    assert finals[0].info.run_id == before["42"]  # split 42 is seed 42's own: the same recipe, not trained again
    assert [(r.data.params["seed"], r.data.params.get("split_seed")) for r in finals] == [
        ("42", ""), ("43", "42"), ("44", "42")]
    digests = [lineage.split_digests(r) for r in finals]
    assert digests[0]["validation"] == digests[1]["validation"] == digests[2]["validation"]
    assert digests[0]["training"] == digests[2]["training"]
    [ens] = runs(f"tags.{lineage.MEMBERS_TAG} = '{','.join(r.info.run_id for r in finals)}'")
    x_val, y_val = ensemble.held_out_by_all(digits, 0.1, [42, 42, 42])
    assert len(y_val) == round(0.1 * len(digits.y_train)) == ens.data.metrics["val_final_images"]
    assert lineage.split_digests(ens)["validation"] == digests[0]["validation"] == lineage.split_digest(x_val, y_val)
    assert "warning" not in capsys.readouterr().err
    answers = [np.stack(classifier_answers(r.data.tags["classifier_uri"], digits.x_test[:32])["probabilities"])
               for r in finals]
    assert not np.allclose(answers[0], answers[1])  # each seed its own start and order

    code, out, err = reproduce_here(capsys, "--model_uri", f"models:/{MODEL}/{summary['registered_version']}",
                                    "--exact", "true")
    assert code == 0, err[-3000:]
    report = last_json(out)
    assert report["bit_identical"] == 1 and report["passed"] is True
    [rebuild] = runs(f"tags.reproduces_run_id = '{ens.info.run_id}'")  # validated on all of the one split again
    assert rebuild.data.metrics["val_final_images"] == len(y_val)


def test_distilled_network_is_registered_compared_and_reproduced(distilled_copy, tmp_path, digits, capsys):
    """final.distill: one more network (the first seed's images and start) is fitted to the seeds'
    average, registered at one network's cost, compared with its teacher and the best-validated seed
    on the parent run and in the report, and `reproduce` trains it again from the same teacher (the study
    'dis': distilled_store, on a copy)."""
    from fmnist_exp.study.candidate import DISTILLED_NETWORK
    from fmnist_exp.train.distill import DISTILL_WEIGHT, DISTILLED_FROM, TEACHER_URI

    summary, out = distilled_copy
    assert "registered: one network distilled from their average" in out
    assert summary["candidate"] == DISTILLED_NETWORK and summary["final_seed_registered"] == "distilled"
    [ens] = runs(f"tags.{lineage.MEMBERS_TAG} != '' and tags.optuna_study = 'dis'")
    [student] = runs(f"tags.{DISTILLED_FROM} != ''")
    finals = sorted(runs("tags.final_seed != ''"), key=lambda r: r.data.tags["final_seed"])
    assert [r.data.tags["final_seed"] for r in finals] == ["42", "43"]  # the student is not taken for a seed
    assert student.info.run_name == "distilled (trial 0, seed 42)" and student.info.status == "FINISHED"
    assert student.data.tags[DISTILLED_FROM] == ens.info.run_id
    assert student.data.tags[TEACHER_URI] == ens.data.tags["model_uri"]
    assert student.data.params[DISTILL_WEIGHT] == "0.8" and student.data.params["seed"] == "42"
    assert student.data.tags["mlflow.parentRunId"] == ens.data.tags["mlflow.parentRunId"]
    # validation beside the ensemble's, on the images no seed trained on
    from fmnist_exp.study import ensemble
    from fmnist_exp.study.finals import VAL_HELD_OUT_BY_ALL

    x_val, y_val = ensemble.held_out_by_all(digits, 0.1, [42, 43])
    held_out = np.mean(classifier_answers(student.data.tags["classifier_uri"], x_val)["label"].to_numpy() == y_val)
    assert student.data.metrics[VAL_HELD_OUT_BY_ALL] == pytest.approx(held_out)
    assert summary["best_val_accuracy"] == pytest.approx(held_out)  # as a candidate: the ensemble's kind of figure
    assert (f"[tune] distilled network: validation accuracy {held_out:.4f} on the {len(y_val)} images no seed trained "
            f"on (the ensemble's {ens.data.metrics['val_final_accuracy']:.4f})") in out
    mv = MlflowClient().get_model_version(MODEL, str(summary["registered_version"]))
    assert mv.tags["source_run_id"] == student.info.run_id and mv.aliases == ["champion"]
    # one network's cost, half the ensemble's
    assert student.data.metrics["cost_mmacs_per_image"] == pytest.approx(finals[0].data.metrics["cost_mmacs_per_image"])
    assert ens.data.metrics["cost_mmacs_per_image"] == pytest.approx(2 * student.data.metrics["cost_mmacs_per_image"])
    # the same seed, images and start as the first member: only the targets differ
    labels = lambda uri: classifier_answers(uri, digits.x_test)["label"].to_numpy()  # noqa: E731
    student_labels, ens_labels = labels(f"models:/{MODEL}/{mv.version}"), labels(ens.data.tags["classifier_uri"])
    probs = lambda uri: np.stack(classifier_answers(uri, digits.x_test[:64])["probabilities"])  # noqa: E731
    assert not np.allclose(probs(student.data.tags["classifier_uri"]), probs(finals[0].data.tags["classifier_uri"]))
    # against the teacher and the best-validated seed, paired on the test images, on the parent run
    parent = MlflowClient().get_run(student.data.tags["mlflow.parentRunId"]).data
    by_val = max(finals, key=lambda r: r.data.metrics["val_final_accuracy"])
    seed_labels = labels(by_val.data.tags["classifier_uri"])
    right = lambda a: a == digits.y_test  # noqa: E731
    assert parent.metrics["distilled_vs_ensemble_diff"] == pytest.approx(
        np.mean(right(student_labels)) - np.mean(right(ens_labels)))
    assert parent.metrics["distilled_vs_ensemble_b"] == np.sum(right(student_labels) & ~right(ens_labels))
    assert parent.metrics["distilled_vs_seed_diff"] == pytest.approx(
        np.mean(right(student_labels)) - np.mean(right(seed_labels)))
    assert parent.metrics["distilled_vs_seed_c"] == np.sum(~right(student_labels) & right(seed_labels))
    assert parent.tags["distilled_vs_ensemble"] == summary["distilled_vs_ensemble"]
    assert f"[tune] distilled network against the ensemble: {summary['distilled_vs_ensemble']}" in out
    page = MlflowClient().download_artifacts(student.data.tags["mlflow.parentRunId"], "study/report.html",
                                             str(tmp_path))
    html = open(page).read()
    assert "The distilled network's teacher averages" in html
    section = html.split("One network distilled from the average")[1].split("<h2>")[0]
    assert f"best-validated seed ({by_val.data.params['seed']})" in section
    for key in ("distilled_vs_ensemble_diff", "distilled_vs_seed_diff"):
        assert f"{100 * parent.metrics[key]:+.2f} points" in section

    code, out, err = reproduce_here(capsys, "--model_uri", f"models:/{MODEL}@champion", "--exact", "true")
    assert code == 0, err[-3000:]
    [rebuild] = runs(f"tags.reproduces_run_id = '{student.info.run_id}'")
    assert rebuild.data.tags[DISTILLED_FROM] == ens.info.run_id and rebuild.data.params[DISTILL_WEIGHT] == "0.8"
    report = last_json(out)  # the same teacher's answers, seed and data: the same student, bit for bit
    assert report["bit_identical"] == 1 and report["passed"] is True


def test_student_of_its_own_shape_is_registered_reused_and_reproduced(distilled_copy, tmp_path, capsys):
    """final.student: the distilled network trains with its own parameters (a wider layer here) on the
    first seed's images; its run, the parent run, the console and the report say which, it costs what
    its shape costs, a resumed study reuses a distilled network only for the same student, and `reproduce`
    rebuilds it. The study 'dis' (distilled_store, on a copy: its seeds and a network of the final recipe
    distilled from their average) registered again with the student: only the student trains."""
    from fmnist_exp.train.distill import DISTILLED_FROM

    study = tmp_path / "dis.yaml"
    first = study.read_text()
    [plain] = runs(f"tags.{DISTILLED_FROM} != ''")  # the first session's, without a student

    def resumed(student: str) -> tuple[dict, str]:
        """The study registered again with ``student`` in its file: its summary and what it printed."""
        study.write_text(first.replace("distill: 0.8}", f"distill: 0.8{student}}}"))
        capsys.readouterr()
        summary = tune.register_only(P.command("register", {"family": "mlp", "study": str(study), "data": "digits"}))
        return summary.flat(), capsys.readouterr().out

    def distilled() -> list[str]:
        return sorted(r.info.run_id for r in runs(f"tags.{DISTILLED_FROM} != ''"))

    summary, out = resumed(", student: {hidden_units: '128'}")
    [student] = [r for r in runs(f"tags.{DISTILLED_FROM} != ''") if r.info.run_id != plain.info.run_id]
    finals = runs("tags.final_seed != ''")
    assert student.data.params["hidden_units"] == "128" and student.data.params["seed"] == "42"
    assert [r.data.params["hidden_units"] for r in finals] == ["64", "64"]
    assert student.data.tags["distill_student"] == "hidden_units=128"
    parent = MlflowClient().get_run(student.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["distill_student"] == "hidden_units=128"
    assert "into one network (hidden_units=128), seed 42: targets 0.8 its answers" in out
    assert student.data.metrics["cost_mmacs_per_image"] > 1.9 * finals[0].data.metrics["cost_mmacs_per_image"]
    mv = MlflowClient().get_model_version(MODEL, str(summary["registered_version"]))
    assert mv.tags["source_run_id"] == student.info.run_id
    page = MlflowClient().download_artifacts(parent.info.run_id, "study/report.html", str(tmp_path))
    assert ("one network of the final recipe with hidden_units=128 (<code>final.student</code>) fitted to the "
            "average's answers (<code>final.distill</code>): its own shape's inference cost") in open(page).read()

    assert "registered: one network (hidden_units=128) distilled from their average" in out
    assert summary["distill_student"] == "hidden_units=128"

    # a network of the final recipe distilled without a student (the first session's) was not taken for the
    # student; the same student (spelt otherwise) is not trained again; without one the first session's network
    # is the one, and a student that changes nothing is that network
    assert plain.data.params["hidden_units"] == "64" and "distill_student" not in plain.data.tags
    both = sorted([student.info.run_id, plain.info.run_id])
    assert distilled() == both

    def registered(again: tuple[dict, str]) -> str:
        """The run of the version a registration ended on (a new one, or the one already there)."""
        return MlflowClient().get_model_version(MODEL, str(again[0]["registered_version"])).tags["source_run_id"]

    assert registered(resumed(", student: {hidden_units: 128}")) == student.info.run_id
    assert distilled() == both
    assert registered(resumed("")) == plain.info.run_id  # no student: the student's network is not reused
    assert distilled() == both
    assert registered(resumed(", student: {hidden_units: '64'}")) == plain.info.run_id
    assert distilled() == both

    code, out, err = reproduce_here(capsys, "--model_uri", student.data.tags["model_uri"], "--exact", "true")
    assert code == 0, err[-3000:]
    [rebuild] = runs(f"tags.reproduces_run_id = '{student.info.run_id}'")
    assert rebuild.data.params["hidden_units"] == "128"
    assert last_json(out)["bit_identical"] == 1


def test_student_over_the_cost_bounds_is_refused_before_the_retrains(tracking, tmp_path, capsys):
    """A student the study's cost bounds (known before training) would not let be registered is
    refused after the search, before any final retrain trains."""
    study = tmp_path / "big.yaml"
    final = "final: {epochs: 1, seeds: 2, ensemble: true, distill: 0.8, student: {hidden_units: '1024'}}"
    # on digits' 8x8 images: the trial's network has ~4,900 parameters, the student ~77,000
    study.write_text(STUDY.replace("final: {epochs: 2}", final) + "reference: off\nconstraints: {params: 50000}\n")
    with pytest.raises(P.ConfigError, match=r"final.student \(hidden_units=1024\) would cost params 7\.\d+e\+04 > "
                                            r"50000, over the study's constraints"):
        tune.run(P.tune_args({"family": "mlp", "study": str(study), "data": "digits"}))
    assert runs("tags.trial_state = 'COMPLETE'") and not runs("tags.final_seed != ''")


def test_distill_targets_mix_the_teacher_and_the_label():
    from fmnist_exp.train.distill import distill_targets

    teacher = np.full((2, 10), 0.1, dtype="float32")
    mixed = distill_targets(teacher, np.array([3, 7]), 0.8)
    assert mixed.dtype == np.float32 and np.allclose(mixed.sum(1), 1.0)
    assert mixed[0, 3] == pytest.approx(0.8 * 0.1 + 0.2) and mixed[0, 4] == pytest.approx(0.08)
    assert np.array_equal(distill_targets(teacher, np.array([3, 7]), 1.0), teacher)
