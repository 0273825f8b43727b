"""Parameters are typed and resolved once, in one stated order.

The tables below are the order, case by case: the table's defaults, then the family's own, the
study file's fixed values and budget, the values a trial sampled, the command line, the final
retrain; and, for a study's budget, what "not given" and 0 mean on the command line and in a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from fmnist_exp import params as P
from fmnist_exp.params import typed
from fmnist_exp.study.setup import study_layers
from fmnist_exp.study.spec import Budget, parse


@pytest.mark.parametrize("layers,epochs", [
    (P.Layers(), None),  # not given: the cnn's own 9, raised on small data when a run starts (with_epochs)
    (P.Layers(fixed={"epochs": 4}), 4),
    (P.Layers(fixed={"epochs": 4}, budget={"epochs": 3}), 3),
    (P.Layers(budget={"epochs": 3}, sampled={"epochs": 6}), 6),
    (P.Layers(sampled={"epochs": 6}, command_line={"epochs": 2}), 2),
    (P.Layers(fixed={"epochs": 4}, budget={"epochs": 3}, sampled={"epochs": 6}, command_line={"epochs": 2},
              final={"epochs": 12}), 12),
    (P.Layers(fixed={"epochs": 4}, command_line={"seed": 7}), 4),  # a layer that does not name it leaves it
])
def test_each_layer_overrides_those_before_it(layers, epochs):
    assert P.compose("cnn", layers).epochs == epochs
    assert P.network("custom", {"model": "net.py:build"}).epochs == 15  # the table's default: a builder's


def test_a_built_in_familys_epochs_not_given_follow_its_training_images():
    """Not given, a built-in family trains its own number of epochs, more where an epoch is so few optimizer steps
    that training would take fewer than MIN_STEPS (said in one line); given epochs (a test's, a study's budget)
    and a user's builder's recipe stay as they are."""
    assert P.table.MIN_STEPS == 200 and P.table.EPOCHS == {"mlp": 15, "cnn": 9}
    cnn, mlp = P.network("cnn"), P.network("mlp")
    assert (cnn.epochs, mlp.epochs) == (None, None)
    assert P.with_epochs(cnn, 54_000) == (P.replaced(cnn, epochs=9), None)  # Fashion-MNIST: 422 steps an epoch
    assert P.with_epochs(cnn, 9_000)[0].epochs == 9  # the default study's trials' images (71 steps: 639)
    scenes, note = P.with_epochs(cnn, 864)  # 7 steps an epoch
    assert scenes.epochs == 29 and note == ("864 training images are 7 optimizer steps an epoch at batch 128: up to 29 "
                                            "epochs (200 steps or more), not 9; give epochs to choose (docs/data.md)")
    assert P.with_epochs(mlp, 1_000)[0].epochs == 25 and P.with_epochs(mlp, 5_000)[0].epochs == 15
    assert P.with_epochs(P.replaced(cnn, batch_size=32), 864)[0].epochs == 9  # 27 steps an epoch
    assert P.with_epochs(P.replaced(cnn, epochs=2), 100) == (P.replaced(cnn, epochs=2), None)
    assert P.with_epochs(P.replaced(mlp, train_samples=100), 100)[0].epochs == 200  # one step an epoch
    own = P.network("custom", {"model": "net.py:build"})
    assert P.with_epochs(own, 100) == (own, None)


STUDY = """
description: order test
family: mlp
budget: {{n_trials: 5, timeout: {timeout}, epochs: 3, train_samples: 2000}}
fixed: {{epochs: 4, dropout: 0.1}}
space:
  l2: {{type: float, low: 0.0, high: 0.001}}
"""


def _spec(timeout: int):
    return parse(STUDY.format(timeout=timeout), Path("order.yaml"))


@pytest.mark.parametrize("given,n_trials,timeout,epochs,train_samples", [
    ({}, 5, 300, 3, 2000),  # nothing given: the study file's budget
    ({"n_trials": "", "timeout": "", "epochs": "", "train_samples": ""}, 5, 300, 3, 2000),  # MLproject's ''
    ({"n_trials": 2, "epochs": 1, "train_samples": 500, "timeout": 60}, 2, 60, 1, 500),  # given: the command line
    ({"timeout": 0}, 5, None, 3, 2000),  # 0 lifts the file's limit, as 0 means in a file
    ({"train_samples": 0}, 5, 300, 3, 0),  # 0 = all images, as in a file
])
def test_a_studys_budget_from_file_and_command_line(given, n_trials, timeout, epochs, train_samples):
    spec = _spec(timeout=300)
    args = P.tune_args(given)
    assert spec.budget.with_command_line(args) == Budget(n_trials, timeout, epochs, train_samples)
    # a trial's epochs and images: the budget (command line where given) over the file's fixed epochs
    trial = P.compose("mlp", study_layers(args, spec, sampled={"l2": 1e-4}))
    assert (trial.epochs, trial.train_samples, trial.dropout, trial.l2) == (epochs, train_samples, 0.1, 1e-4)


def test_a_file_timeout_of_zero_is_no_limit():
    assert _spec(timeout=0).budget.timeout is None
    assert _spec(timeout=0).budget.with_command_line(P.tune_args({"timeout": 30})).timeout == 30


def test_the_final_retrain_and_its_seed_come_last():
    spec = _spec(timeout=0)
    args = P.tune_args({"seed": 7, "epochs": 2})
    final = P.compose("mlp", study_layers(args, spec, sampled={"l2": 1e-5}, final={"epochs": 20, "seed": 8}))
    assert (final.epochs, final.seed, final.l2, final.train_samples) == (20, 8, 1e-5, 2000)


@pytest.mark.parametrize("cls,params", [
    (typed.BaselineParams, P.table.family_params("baseline")),
    (typed.MlpParams, P.table.family_params("mlp")),
    (typed.CnnParams, P.table.family_params("cnn")),
    (typed.TuneArgs, P.table.TUNE_PARAMS),
    (typed.ReproduceArgs, P.commands.REPRODUCE_PARAMS),
    (typed.DashboardArgs, P.commands.DASHBOARD_PARAMS),
    (typed.ProxyArgs, P.commands.PROXY_PARAMS),
    (typed.PredictArgs, P.commands.PREDICT_PARAMS),
    (typed.ServeArgs, P.commands.SERVE_PARAMS),
    (typed.PromoteArgs, P.commands.PROMOTE_PARAMS),
])
def test_typed_values_have_exactly_the_tables_parameters(cls, params):
    assert {f.name for f in dataclasses.fields(cls)} == {p.name for p in params}


def test_values_are_frozen_checked_and_flat_only_where_logged():
    p = P.network("cnn", {"filters": "16, 32", "data_dir": ""})
    assert p.filters == (16, 32) and p.data_dir is None  # '' from MLproject is "not given"
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.epochs = 3  # type: ignore[misc]
    flat = p.flat()
    assert flat["filters"] == "16,32" and flat["data_dir"] == "" and flat["epochs"] == ""  # not given
    assert P.network("cnn", flat) == p  # what a run logged resolves to the same value (reproduce reads it)
    with pytest.raises(P.ConfigError, match="epochs=0: must be in"):
        P.replaced(p, epochs=0)
    with pytest.raises(P.ConfigError, match="timeout=-5: must be in"):
        P.tune_args({"timeout": -5})
    # 0 once meant "the study file's budget" (an earlier MLproject forwarded it): now said, not guessed
    with pytest.raises(P.ConfigError, match=r"n_trials=0: must be in \[1, 100000\] \(leave it out for the study"):
        P.tune_args({"n_trials": 0})


def test_a_parameter_added_later_keeps_earlier_digests_while_off():
    """Digests stored by code that predates a parameter (a study's reference key, a trial's recipe) are found
    again while it holds the value that trained before, and those stored before a lever left (params/migrations.py,
    step 8) while it trains as today; another value is another recipe. A split seed equal to the seed draws the
    split the seed alone draws: the same recipe."""
    p = P.network("cnn", {"epochs": 3, "filters": "32,64,128,256"})  # filters not given: these, on 28x28 images
    added = ("tta_shift", "split_seed", "data")
    # what earlier code digested: the levers since retired at the values that train as today
    before = {**{k: v for k, v in p.logged().items() if k not in added},
              "lr_schedule": "cosine", "lr_patience": 2, "lr_factor": 0.5, "aug_erase": 0.0}
    assert p.digest() == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert p.digest() == "42171ab4fe199802"  # what the code before step 8 (55dbc2b) gave
    assert P.replaced(p, tta_shift=1).digest() != p.digest() == P.replaced(p, split_seed=p.seed).digest()
    assert P.replaced(p, data="digits").digest() != p.digest() == P.replaced(p, data="fashion-mnist").digest()
    # bn_settle is on by default, unlike the runs before it: the recipe before it has the digest earlier code stored
    off = P.replaced(p, bn_settle=False)
    earlier = {k: v for k, v in before.items() if k != "bn_settle"}
    assert off.digest() == hashlib.sha256(json.dumps(earlier, sort_keys=True).encode()).hexdigest()[:16] != p.digest()
    assert off.digest() == "a3509892df850d9c"  # 55dbc2b's
    # "not given" as `mlflow run` records it ('') reads back as not given
    recorded = P.network("cnn", {"split_seed": "''", "filters": "''", "data_dir": "''"})
    assert (recorded.split_seed, recorded.filters, recorded.data_dir) == (None, None, None)
    shared = P.replaced(p, seed=43, split_seed=42)
    assert shared.split_by() == 42 and P.replaced(p, seed=43).split_by() == 43
    assert shared.digest() != P.replaced(p, seed=43).digest()


def test_a_retired_parameter_is_refused_with_the_commit_that_still_trains_it():
    """A parameter that left the package (params/migrations.py): a run that logged it at another value than
    today's training, a command line or study file that gives such a value, a searched one and a builder's
    parameter of its name are refused, naming the commit that still trains it; at the value that trains as
    today (an earlier run, command line or stored study file) it reads as absent."""
    commit = "55dbc2bb573b"  # step 8's
    logged = {k: str(v) for k, v in P.network("cnn", {"augment": True}).flat().items()}
    names = [p.name for p in P.table.family_params("cnn")]
    with pytest.raises(P.ConfigError, match=rf"trained with ema=0.999: .*git checkout {commit}"):
        P.as_trained(names, {**logged, "ema": "0.999"})
    with pytest.raises(P.ConfigError, match=rf"trained with optimizer=sgd: .*git checkout {commit}"):
        P.as_trained(names, {**logged, "optimizer": "'sgd'"})  # as `mlflow run` records a quoted value
    with pytest.raises(P.ConfigError, match="trained with aug_erase_shape=published: .*git checkout 8c16013b8dbb"):
        P.trained("cnn", {**logged, "aug_erase_shape": "published"})
    with pytest.raises(P.ConfigError, match="trained with lr_schedule=plateau"):
        P.trained("cnn", {**logged, "lr_schedule": "plateau", "lr_patience": "3", "lr_factor": "0.5"})
    # every earlier version's way of logging today's recipe reads as today's
    # (the plateau schedule's settings beside the cosine decay, erasing without augmentation: they changed nothing;
    # a true/false as any earlier command line gave it)
    as_run = {**logged, "ema": "0.0", "residual": "no", "optimizer": "adam", "lr_schedule": "cosine",
              "lr_patience": "3", "lr_factor": "0.2", "aug_erase": "0", "aug_erase_shape": "keras"}
    assert P.trained("cnn", as_run) == P.trained("cnn", logged) == P.trained("cnn", {**logged, "recipe_version": "8"})
    plain = {**logged, "augment": "False"}
    assert P.trained("cnn", {**plain, "aug_erase": "0.5"}) == P.trained("cnn", plain)
    with pytest.raises(P.ConfigError, match="trained with aug_erase=0.5"):
        P.trained("cnn", {**logged, "aug_erase": "0.5"})  # augment: true
    # your own network: a model its builder compiled used none of the recipe's levers (so a value of that name was
    # the builder's own); residual was the cnn family's, never a builder's
    custom = {k: str(v) for k, v in P.network("custom", {"model": "net.py:build"}).flat().items()}
    compiled = {**custom, "family": "custom", "compiled_by": "builder", "optimizer": "sgd", "ema": "0.99"}
    assert P.trained("custom", compiled) == P.trained("custom", custom)
    with pytest.raises(P.ConfigError, match="trained with optimizer=sgd"):
        P.trained("custom", {**custom, "family": "custom", "optimizer": "sgd"})  # the recipe's, uncompiled
    assert P.trained("custom", {**custom, "family": "custom", "residual": "True"}) == P.trained("custom", custom)
    # a later version's run is not read as this one's
    with pytest.raises(P.ConfigError, match="recipe_version=9: logged by a later version"):
        P.trained("cnn", {**logged, "recipe_version": "9"})
    # a run of version 8 logged no retired lever: no step before it applies again
    assert P.as_trained(names, {**logged, "recipe_version": "8"})["bn_settle"] == "True"
    assert P.as_trained(names, {k: v for k, v in logged.items() if k != "bn_settle"})["bn_settle"] is False
    with pytest.raises(P.ConfigError, match=rf"cnn: residual=true: that parameter has left .*{commit}.*leave it out"):
        P.network("cnn", {"residual": "true"})
    assert P.network("cnn", {"residual": "0", "optimizer": "adam", "ema": 0, "lr_schedule": "''"}) == P.network("cnn")
    # given on a command line: whether erasing mattered is read beside the augment given with it
    with pytest.raises(P.ConfigError, match=rf"cnn: aug_erase=0.2: that parameter has left .*{commit}"):
        P.command("cnn", {"augment": "true", "aug_erase": "0.2"})
    assert P.command("cnn", {"augment": "false", "aug_erase": "0.2"}) == P.command("cnn", {"augment": "false"})
    # a retired name on custom's command line (a builder's own values go in hp) is refused naming the commit too
    with pytest.raises(P.ConfigError, match=rf"custom: ema=0.99: .*{commit}.*goes in hp"):
        P.command("custom", {"model": "net.py:build", "ema": "0.99"})
    # a builder's own parameter named as a lever that left is its own (keras-tuner's hp.Choice("optimizer", ...))
    own = P.network("custom", {"model": "net.py:build", "optimizer": "sgd", "residual": True, "lr_schedule": "cosine"})
    assert own.hp_values() == {"optimizer": "sgd", "residual": True}
    assert P.network("custom", {"model": "net.py:build", "hp": "{aug_erase_shape: x}"}).hp_values() == {
        "aug_erase_shape": "x"}
    with pytest.raises(P.ConfigError, match="recipe_version"):
        P.network("custom", {"model": "net.py:build", "hp": "{recipe_version: 1}"})
    text = ("description: refused\nfamily: cnn\nbudget: {n_trials: 1, epochs: 1}\n"
            "fixed: {augment: true, aug_erase: 0.5}\nspace:\n  l2: {type: float, low: 0.0, high: 0.001}\n")
    with pytest.raises(P.ConfigError, match=rf"old.yaml: fixed: aug_erase=0.5: .*{commit}"):
        parse(text, Path("old.yaml"))
    searched = text.replace("fixed: {augment: true, aug_erase: 0.5}", "fixed: {}").replace(
        "space:\n", "space:\n  ema: {type: float, low: 0.9, high: 0.999}\n")
    with pytest.raises(P.ConfigError, match=rf"space.ema: ema=.*{commit}"):
        parse(searched, Path("old.yaml"))
    stored = parse(text.replace("aug_erase: 0.5", "lr_schedule: cosine, aug_erase: 0.0"), Path("old.yaml"), stored=True)
    assert stored.fixed == {"augment": True}
    referenced = text.replace("fixed: {augment: true, aug_erase: 0.5}",
                              "fixed: {}\nreference: {params: {lr_schedule: cosine, dropout: 0.2}}")
    assert parse(referenced, Path("old.yaml"), stored=True).reference.params == {"dropout": 0.2}
    with pytest.raises(P.ConfigError, match=rf"reference params: ema=0.999: .*{commit}"):
        parse(referenced.replace("lr_schedule: cosine", "ema: 0.999"), Path("old.yaml"))
    # the chain is numbered 1, 2, ... and today's runs log its last number
    assert [s.number for s in P.migrations.STEPS] == list(range(1, P.migrations.VERSION + 1))


@pytest.mark.parametrize("section,entry,message", [
    ("space", "seed: {type: int, low: 1, high: 9}", "'seed' is the command line's"),
    ("fixed", "seed: 3", "'seed' is the command line's"),
    ("fixed", "data_dir: /tmp", "'data_dir' is the command line's"),
    ("space", "epochs: {type: int, low: 2, high: 8}", "'epochs' cannot be searched: it is the budget's"),
    ("space", "train_samples: {type: int, low: 500, high: 900}", "'train_samples' cannot be searched"),
    ("space", "val_fraction: {type: float, low: 0.1, high: 0.3}", "'val_fraction' cannot be searched: it decides "
                                                                  "which images validate each trial"),
    ("space", "split_seed: {type: int, low: 1, high: 9}", "'split_seed' cannot be searched: it decides which "
                                                         "images validate each trial"),
])
def test_values_a_layer_above_would_override_are_refused_in_the_file(section, entry, message):
    """A sampled seed would lose to the command line's (never "not given": 42 by default), so Optuna
    would record a seed that did not train: the file may not name it."""
    text = ("description: refused\nfamily: mlp\nbudget: {n_trials: 1, epochs: 1}\n"
            f"{section}:\n  {entry}\n" + ("" if section == "space" else
                                          "space:\n  l2: {type: float, low: 0.0, high: 0.001}\n"))
    with pytest.raises(P.ConfigError, match=message):
        parse(text, Path("refused.yaml"))


def test_the_final_retrain_may_name_its_first_seed(dataset):
    """``final: {seed: N}`` (accepted before the restructuring) starts the final retrain's seeds at N;
    the trials keep the command line's seed. ``final.data_dir`` stays the command line's."""
    from fmnist_exp.study.setup import Setup

    text = ("description: final seed\nfamily: mlp\nbudget: {n_trials: 1, epochs: 1}\n"
            "space:\n  l2: {type: float, low: 0.0, high: 0.001}\nfinal: {epochs: 2, seed: 11, seeds: 2}\n")
    spec = parse(text, Path("final_seed.yaml"))
    args = P.tune_args({"seed": 7})
    setup = Setup(args=args, spec=spec, ds=dataset, **{f.name: None for f in dataclasses.fields(Setup)
                                                       if f.name not in ("args", "spec", "ds")})
    assert setup.final_seeds() == [11, 12]
    assert setup.final_params({"l2": 1e-4}, 11).seed == 11
    with pytest.raises(P.ConfigError, match="'data_dir' is the command line's"):
        parse(text.replace("seed: 11", "data_dir: /tmp"), Path("final_dir.yaml"))


def test_a_study_stored_by_earlier_code_resumes_with_its_sampled_values():
    """Earlier code let a study file search ``epochs`` and trained the sampled value; a study it
    stored resumes, and its trials still train what they record. A new file is refused."""
    text = ("description: old\nfamily: mlp\nbudget: {n_trials: 1, epochs: 1}\n"
            "space:\n  epochs: {type: int, low: 2, high: 8}\n")
    with pytest.raises(P.ConfigError, match="cannot be searched"):
        parse(text, Path("old.yaml"))
    spec = parse(text, Path("old.yaml"), stored=True)
    args = P.tune_args({"epochs": 3})
    assert P.compose("mlp", study_layers(args, spec, sampled={"epochs": 6})).epochs == 6
    assert P.compose("mlp", study_layers(args, spec, sampled={})).epochs == 3
