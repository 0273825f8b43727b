"""A model that learned nothing says so and is never registered: its validation answers against always
answering the majority class, by a one-sided exact binomial test (stats.chance), on its run, its console line
and at the gate; a study's difference from a reference at chance is not called a gain."""

from __future__ import annotations

import json
import math

import mlflow
import numpy as np
import pytest
from PIL import Image

from fmnist_exp import stats
from fmnist_exp.study import report, summary

STUDY = """description: a folder whose images say nothing of their labels
family: mlp
budget: {n_trials: 1, epochs: 1, timeout: 0}
fixed: {early_stopping_patience: 0, hidden_units: '16'}
space:
  dropout: {type: float, low: 0.0, high: 0.2}
pruner: {type: none}
reference: off
"""


def test_the_binomial_test_by_hand():
    y = np.array([0] * 5 + [1] * 5)  # the majority class's share: 0.5
    nine = stats.chance(y, np.r_[y[:9], 1 - y[9:]])  # 9 of 10 right: P(X >= 9) = 11/1024
    assert (nine.right, nine.n, nine.share) == (9, 10, 0.5)
    assert nine.p_value == pytest.approx(11 / 1024) and not nine.at_chance(0.05) and nine.at_chance(0.01)
    majority = stats.chance(y, np.zeros(10, int))  # one class always: its share, P(X >= 5) = 638/1024
    assert majority.p_value == pytest.approx(638 / 1024) and majority.at_chance(0.05)
    skewed = stats.chance(np.array([0] * 8 + [1] * 2), np.zeros(10, int))  # 80% by answering 0 every time
    assert skewed.share == 0.8 and skewed.p_value == pytest.approx(math.comb(10, 8) * 0.8**8 * 0.2**2
                                                                   + 10 * 0.8**9 * 0.2 + 0.8**10)
    assert skewed.describe(0.05).startswith("at chance: validation accuracy 0.8000 against the majority class's "
                                            "share 0.8000 of 10 images, one-sided exact binomial p=")


def test_a_model_that_learned_nothing_is_not_registered(tracking, tmp_path, capsys):
    """A folder of black squares in two classes: every image answers alike, so the network answers one class
    for all, its share of the validation images at most. The trial says `at chance` on its run and console
    line; the study ends without a champion, exit code 0, in one line naming the test."""
    from fmnist_exp import cli

    for split, n in (("train", 60), ("test", 20)):
        for name in ("a", "b"):
            (tmp_path / "blank" / split / name).mkdir(parents=True)
            for i in range(n // 2):
                Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "blank" / split / name / f"{i}.png")
    study = tmp_path / "blank.yaml"
    study.write_text(STUDY)
    code = cli.main(["tune", "--data", str(tmp_path / "blank"), "--study", str(study), "--system_metrics", "false"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    [trial_line] = [line for line in out.splitlines() if line.startswith("[tune] trial 0")]
    assert "at chance" in trial_line
    [refused] = [line for line in out.splitlines() if line.startswith("[tune] no new champion")]
    assert "is not registered, at chance: validation accuracy " in refused and "one-sided exact binomial p=" in refused
    assert "promote_alpha=0.05" in refused
    assert "registered_version" not in json.loads(out.strip().splitlines()[-1])
    assert mlflow.MlflowClient().search_registered_models() == []
    runs = {r.info.run_name: r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")}
    trial = runs["trial 0"]
    assert trial.data.tags["at_chance"] == "true" and trial.data.metrics["val_chance_p"] >= 0.05
    assert trial.data.tags["at_chance_alpha"] == "0.05"  # the study's promote_alpha (its default here)
    assert trial.data.metrics["val_final_accuracy"] <= trial.data.metrics["val_majority_share"]
    assert runs["tune blank"].data.tags["registration"].startswith("not registered: at chance")
    assert runs["tune blank"].data.tags["final_seed_registered"] == "none (at chance)"
    assert all(r.info.status == "FINISHED" for r in runs.values())

    # the level is the study's: at promote_alpha 0.9 the same answers (p 0.66) are above chance, and registered
    code = cli.main(["tune", "--data", str(tmp_path / "blank"), "--study", str(study), "--study_name", "loose",
                     "--promote_alpha", "0.9", "--system_metrics", "false"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    [trial] = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
               if r.data.tags.get("optuna_study") == "loose" and r.info.run_name == "trial 0"]
    assert (trial.data.tags["at_chance"], trial.data.tags["at_chance_alpha"]) == ("false", "0.9")
    assert json.loads(out.strip().splitlines()[-1])["registered_version"] == 1


def test_a_model_of_random_labels_is_refused_at_the_studys_level(tracking, tmp_path, capsys):
    """Real images (scikit-learn's digits) under random labels in two classes: whatever the network fits, its
    validation answers are at chance, so at the study's promote_alpha (0.001 here: a model at chance passes with
    probability 0.001 at most, whatever bits this machine trains) the gate refuses it and registers nothing."""
    from sklearn.datasets import load_digits

    from fmnist_exp import cli

    images = (load_digits().images * 255 / 16).astype(np.uint8)
    labels = np.random.default_rng(0).integers(0, 2, len(images))
    for split, (lo, hi) in (("train", (0, 600)), ("test", (600, 800))):
        for i in range(lo, hi):
            folder = tmp_path / "random" / split / "ab"[labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(folder / f"{i}.png")
    study = tmp_path / "random.yaml"
    study.write_text(STUDY.replace("epochs: 1", "epochs: 10").replace("images say nothing", "labels say nothing"))
    code = cli.main(["tune", "--data", str(tmp_path / "random"), "--study", str(study), "--promote_alpha", "0.001",
                     "--system_metrics", "false"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    [refused] = [line for line in out.splitlines() if line.startswith("[tune] no new champion")]
    assert "is not registered, at chance:" in refused and "promote_alpha=0.001" in refused
    assert mlflow.MlflowClient().search_registered_models() == []
    [trial] = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
               if r.info.run_name == "trial 0"]
    assert (trial.data.tags["at_chance"], trial.data.tags["at_chance_alpha"]) == ("true", "0.001")
    assert trial.data.metrics["val_chance_p"] >= 0.001


def test_a_difference_from_a_reference_at_chance_is_not_called_a_gain(capsys):
    cmp = stats.compare(np.array([0, 1] * 50), np.array([0, 1] * 50), np.zeros(100, int), n_resamples=100)
    counts = summary.Counts(study_name="s", experiment_id="1", n_trials_total=1, n_trials_this_run=1, n_complete=1,
                            n_pruned=0, n_failed=0, epochs_run=1, epochs_budget=1)
    for at_chance, said in ((False, "[tune] gain over the plain recipe"),
                            (True, "[tune] over a reference at chance (not a gain), the plain recipe")):
        gain = summary.Gain("the plain recipe", "r1", 2, cmp, reference_at_chance=at_chance)
        summary.print_summary(summary.StudySummary(counts, "m", gain=gain))
        assert said in capsys.readouterr().out
        assert gain.flat().get("reference_at_chance", False) is at_chance
    assert report._reference({"gain_reference": "the plain recipe", "gain_reference_at_chance": "true"}) == (
        "the plain recipe, at chance (it learned nothing: the difference below is not a gain)")
