"""Serving budgets: the non-inferiority test, study files with several objectives and constraints
(refused before any work when Optuna cannot do what they ask), the promotion gate on real registered
models whose answers and costs differ in known ways, and a real two-objective tiny-MLP study."""

from __future__ import annotations

import math

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient
from test_gate import labelled, log_fixed

from fmnist_exp import params as P
from fmnist_exp import stats
from fmnist_exp.commands import tune
from fmnist_exp.params import ConfigError
from fmnist_exp.registry import gate
from fmnist_exp.study import front, goals, setup
from fmnist_exp.study import spec as S

# ----------------------------------------------------------------------------- non-inferiority


def test_non_inferiority_by_hand():
    # at delta0 = 0 Tango's statistic is McNemar's z, (b - c) / sqrt(b + c)
    assert stats.tango_z(40, 20, 160, 0.0) == pytest.approx(20 / math.sqrt(60))
    # exactly at the margin: no evidence either way
    y, a, b = labelled(b=100, c=130, both_right=9000, both_wrong=770)
    at = stats.non_inferiority(y, a, b, margin=0.003, alpha=0.05)
    assert at.diff == pytest.approx(-0.003) and at.z == pytest.approx(0.0, abs=1e-9)
    assert at.p_value == pytest.approx(0.5)
    assert not at.non_inferior and "not shown non-inferior" in at.describe()
    # many discordant images: close to the Wald test on the paired difference
    y, a, b = labelled(b=300, c=310, both_right=9000, both_wrong=390)
    r = stats.non_inferiority(y, a, b, margin=0.01, alpha=0.05)
    d, n = -0.001, 10_000
    wald = (d + 0.01) / (math.sqrt((610 / n - d * d) / n))
    assert r.z == pytest.approx(wald, rel=0.02) and r.non_inferior
    # the one-sided bound and the p-value say the same: p < alpha exactly when lower > -margin
    for bb, cc in [(0, 0), (5, 0), (0, 10), (50, 80), (200, 260), (10, 60)]:
        y, a, b = labelled(b=bb, c=cc, both_right=9500, both_wrong=10_000 - 9500 - bb - cc)
        r = stats.non_inferiority(y, a, b, margin=0.003, alpha=0.05)
        assert r.non_inferior == (r.lower > -0.003), (bb, cc)
        assert stats.tango_z(bb, cc, n, r.lower) == pytest.approx(1.6448536, abs=1e-4)
    # identical answers are non-inferior for any margin
    assert stats.non_inferiority(y, a, a, margin=0.001, alpha=0.05).non_inferior


# ----------------------------------------------------------------------------- study files

BASE = """description: budget test study
family: mlp
budget: {n_trials: 2, epochs: 1, train_samples: 1000, timeout: 0}
fixed: {early_stopping_patience: 0}
space:
  hidden_units: {type: categorical, choices: ["32", "64"]}
"""


def parsed(tmp_path, extra: str) -> S.StudySpec:
    path = tmp_path / "s.yaml"
    path.write_text(BASE + extra)
    return S.load(str(path), None)


def test_a_plain_study_file_stays_plain(tmp_path):
    spec = parsed(tmp_path, "")
    assert spec.goals.plain and spec.goals == goals.Goals() and spec.pruner == {"type": "median"}
    assert parsed(tmp_path, "objective: val_accuracy\n").goals.plain
    for name in ("cnn", "cnn_long", "cnn_long_distill", "mlp"):  # the shipped files
        assert S.load(name, None).goals.plain


def test_goals_parsed(tmp_path):
    spec = parsed(tmp_path, "objectives: [val_accuracy, mmacs_per_image, size_mb]\n"
                            "constraints: {ms_per_image_b1: 2.0, size_mb: 1}\n"
                            "promote: {non_inferior_margin: 0.003}\n")
    g = spec.goals
    assert g.multi and g.costs == ("mmacs_per_image", "size_mb") and g.cheaper_on == "mmacs_per_image"
    assert g.directions == ["maximize", "minimize", "minimize"]
    assert g.constraints == {"ms_per_image_b1": 2.0, "size_mb": 1.0} and g.static_constraints() == {"size_mb": 1.0}
    assert spec.pruner == {"type": "none"}, "several objectives: no pruner unless one is named"
    assert g.verdict({"ms_per_image_b1": 1.5, "size_mb": 0.4}).startswith("within budget")
    assert g.verdict({"ms_per_image_b1": 2.5, "size_mb": 0.4}) == "over budget: ms_per_image_b1 2.5 > 2"
    assert g.verdict({"size_mb": 0.4}) == "over budget: cost not measured (ms_per_image_b1)"
    assert g.non_inferior_margin == 0.003
    # the trials are timed where a time is read: here a bound on one; not for exact costs alone, nor a plain study
    assert g.timed and not goals.Goals(objectives=("val_accuracy", "mmacs_per_image"), constraints={"size_mb": 1}).timed
    assert goals.Goals(objectives=("val_accuracy", "ms_per_image_b256")).timed and not goals.Goals().timed


@pytest.mark.parametrize("extra, said", [
    ("objectives: [val_accuracy, watts]\n", "objective 'watts' is not produced"),
    ("objectives: [mmacs_per_image, val_accuracy]\n", "must be a list starting with val_accuracy"),
    ("objective: test_accuracy\n", "must be a list starting with val_accuracy"),
    ("objective: val_accuracy\nobjectives: [val_accuracy]\n", "not both"),
    ("constraints: {latency: 2}\n", "constraint 'latency' is not a cost"),
    ("constraints: {size_mb: -1}\n", "must be a positive number"),
    ("objectives: [val_accuracy, size_mb]\npruner: {type: median}\n", "Optuna prunes single-objective studies only"),
    ("constraints: {size_mb: 1}\nsampler: {type: random}\n", "sampler 'random' ignores constraints"),
    ("promote: {non_inferior_margin: 0.3}\n", "0.003 is 0.3 points"),
    ("choose: cheapest\n", "choose 'cheapest'"),
    ("choose: cheapest_feasible\n", "needs a cost objective"),
])
def test_goals_refused_before_any_work(tmp_path, extra, said):
    with pytest.raises(ConfigError, match=said):
        parsed(tmp_path, extra)


def test_constrained_sampler_and_pruned_single_objective_allowed(tmp_path):
    spec = parsed(tmp_path, "constraints: {size_mb: 1}\nsampler: {type: nsga2, population_size: 4}\n")
    assert isinstance(spec.make_sampler(0), optuna.samplers.NSGAIISampler) and not spec.goals.multi
    assert parsed(tmp_path, "constraints: {size_mb: 1}\n").pruner == {"type": "median"}


# ----------------------------------------------------------------------------- the gate with a budget

MODEL = "fmnist-budget"


def test_gate_respects_budget_and_promotes_cheaper_non_inferior(tracking, dataset):
    client = MlflowClient()
    champion_wrong = set(range(700))  # 93.00%

    def register(wrong, budget, name=MODEL, cost=None):
        tags = {"study": "budget", **({"cost_mmacs_per_image": str(cost)} if cost is not None else {})}
        return gate.register(log_fixed(dataset, wrong), name, dataset, tags, promote_alpha=0.05, budget=budget)

    def tags(version, name=MODEL):
        return client.get_model_version(name, str(version)).tags

    def champion(name=MODEL):
        return int(client.get_model_version_by_alias(name, "champion").version)

    # over budget with no champion yet: still not champion
    first = register(champion_wrong, gate.CostVerdict("over budget: size_mb 3.2 > 1"), name="fmnist-lonely")
    assert first.alias == "challenger" and "never champion" in first.decision
    assert tags(1, "fmnist-lonely")["budget_verdict"] == "over budget: size_mb 3.2 > 1"

    within = "within budget: size_mb 0.1 <= 1"
    v1 = register(champion_wrong, gate.CostVerdict(within, costs={"mmacs_per_image": 10.0}), cost=10.0)
    assert (v1.version, v1.alias) == (1, "champion") and tags(1)["budget_verdict"] == within

    # far better but over budget: challenger, the broken bound said on the version
    over = register(champion_wrong - set(range(400)), gate.CostVerdict("over budget: ms_per_image_b1 3.1 > 2"),
                    cost=4.0)
    assert over.alias == "challenger" and champion() == 1
    assert "over budget: ms_per_image_b1 3.1 > 2" in tags(2)["alias_decision"]
    assert float(tags(2)["gate_p_value"]) < 1e-30, "the accuracy comparison is still recorded"

    margin = dict(non_inferior_margin=0.003, cheaper_on="mmacs_per_image")
    # cheaper and 10 images worse (0.1 points, within 0.3): the champion moves
    cheap = register(champion_wrong | set(range(700, 710)), gate.CostVerdict(within, costs={"mmacs_per_image": 2.0},
                                                                        **margin), cost=2.0)
    assert cheap.alias == "champion" and champion() == 3 and cheap.non_inferiority is not None
    t = tags(3)
    assert (int(t["noninf_b"]), int(t["noninf_c"]), int(t["noninf_n"])) == (0, 10, 10_000)
    assert float(t["noninf_margin"]) == 0.003 and float(t["noninf_alpha"]) == 0.05
    assert float(t["noninf_p_value"]) < 0.05 and -0.003 < float(t["noninf_lower"]) < -0.001
    assert (t["cheaper_on"], float(t["candidate_cost"]), float(t["champion_cost"])) == ("mmacs_per_image", 2.0, 10.0)
    assert "Tango" in t["noninf_test"] and "cheaper (mmacs_per_image 2 < champion's 10)" in t["alias_decision"]
    assert t["gate_b"] == "0" and t["gate_c"] == "10", "the gate's own comparison beside it"

    # cheaper still, but 100 images worse than the new champion: not shown non-inferior
    worse = register(champion_wrong | set(range(700, 810)), gate.CostVerdict(within, costs={"mmacs_per_image": 1.0},
                                                                        **margin), cost=1.0)
    assert worse.alias == "challenger" and champion() == 3
    assert "not shown non-inferior" in tags(4)["alias_decision"] and float(tags(4)["noninf_p_value"]) > 0.05

    # as accurate but not cheaper: the first rule's answer stands
    dearer = register(champion_wrong | set(range(700, 710)), gate.CostVerdict(within, costs={"mmacs_per_image": 5.0},
                                                                         **margin), cost=5.0)
    assert dearer.alias == "challenger" and "not cheaper than the champion" in tags(5)["alias_decision"]
    assert "noninf_p_value" not in tags(5)


# ----------------------------------------------------------------------------- a two-objective study

TWO = """description: Which hidden width gives the best accuracy for its multiply-accumulates, within 0.1 MB?
family: mlp
budget: {n_trials: 4, epochs: 1, train_samples: 1000, timeout: 0}
fixed: {early_stopping_patience: 0}
space:
  hidden_units: {type: categorical, choices: ["32", "64", "1024"]}
enqueue: [{hidden_units: "1024"}, {hidden_units: "32"}, {hidden_units: "64"}]
objectives: [val_accuracy, mmacs_per_image]
constraints: {size_mb: 0.1, ms_per_image_b1: 1000.0}
reference: off
"""


def test_two_objective_study(tracking, tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text(TWO)
    # on digits (8x8 images, 360 test images): a budget, a front and a pruned point are the same on any data
    summary = tune.run(P.tune_args({"family": "mlp", "study": str(path), "data": "digits"})).flat()
    study = optuna.load_study(study_name="two", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_accuracy", "mmacs_per_image"]  # optuna-dashboard's axis names
    by_width = {t.params["hidden_units"]: t for t in study.trials[:3]}

    # the fourth trial draws one of the three points again (only three exist): not trained again, since
    # the same seed and data would give the same bits; a pruned point is judged again (it costs nothing)
    again = study.trials[3]
    first = by_width[again.params["hidden_units"]]
    if first.state == optuna.trial.TrialState.PRUNED:
        assert again.state == optuna.trial.TrialState.PRUNED and "same_as_trial" not in again.user_attrs
    else:
        assert again.state == optuna.trial.TrialState.COMPLETE
        assert again.user_attrs["same_as_trial"] == first.number
        assert again.values == first.values and again.constraints == first.constraints
        assert again.user_attrs["model_uri"] == first.user_attrs["model_uri"]
        again_run = MlflowClient().get_run(again.user_attrs["mlflow_run_id"])
        # no training curves, no cost measured again: its answer and its trained twin's chance test (for the gate)
        assert set(again_run.data.metrics) == {"val_accuracy", "val_chance_p", "val_majority_share"}
        assert again_run.data.tags["same_as_run"] == first.user_attrs["mlflow_run_id"]
        assert again_run.data.params["hidden_units"] == first.params["hidden_units"]

    # 64 x 1024 weights (0.3 MB) are over 0.1 MB before training: pruned, untrained, its constraint value set
    big = by_width["1024"]
    assert big.state == optuna.trial.TrialState.PRUNED and big.values is None
    assert big.user_attrs["over_budget"].startswith("over budget, not trained: size_mb")
    assert big.constraints["size_mb"] > 0 and "ms_per_image_b1" not in big.constraints
    big_run = MlflowClient().get_run(big.user_attrs["mlflow_run_id"])
    assert big_run.data.tags["trial_state"] == "PRUNED" and "epochs_run" not in big_run.data.metrics
    assert big_run.data.metrics["cost_size_mb"] > 0.1

    small = [by_width["32"], by_width["64"]]
    for t in small:
        assert t.state == optuna.trial.TrialState.COMPLETE and len(t.values) == 2 and not t.intermediate_values
        assert set(t.constraints) == {"size_mb", "ms_per_image_b1"} and goals.feasible(t)
        assert t.values[1] == t.user_attrs["costs"]["mmacs_per_image"] > 0
        assert t.constraints["size_mb"] == pytest.approx(t.user_attrs["costs"]["size_mb"] - 0.1)
    assert small[0].values[1] < small[1].values[1], "twice the hidden width, about twice the MACs"

    # the choice: the most accurate feasible complete trial, by validation accuracy
    chosen = max(small, key=lambda t: (t.values[0], -t.number))
    assert summary["best_trial"] == chosen.number and summary["best_val_accuracy"] == chosen.values[0]
    parent = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                filter_string="attributes.run_name = 'tune two'")[0]
    pid = parent.info.run_id
    assert parent.data.tags["budget_verdict"].startswith("within budget: size_mb")
    assert parent.data.params["objectives"] == "val_accuracy,mmacs_per_image"
    version = MlflowClient().get_model_version(summary["model_name"], str(summary["registered_version"]))
    assert version.tags["budget_verdict"] == parent.data.tags["budget_verdict"] and summary["alias"] == "champion"
    assert f"**Study's budget:** {version.tags['budget_verdict']}." in version.description

    # the front on the parent run: a table and Optuna's plot, and in the report with links to the runs
    table = mlflow.artifacts.load_text(f"runs:/{pid}/{front.FRONT_CSV}").splitlines()
    assert table[0].startswith("trial,mlflow_run_id,val_accuracy,mmacs_per_image,cost_params,cost_size_mb")
    assert table[0].endswith("feasible,on_front") and len(table) == 3, "the two complete trials"
    on_front = {t.number for t in study.best_trials}
    assert chosen.number in on_front
    for row in table[1:]:
        number, run_id = row.split(",")[:2]
        assert run_id == by_width[study.trials[int(number)].params["hidden_units"]].user_attrs["mlflow_run_id"]
        assert row.endswith(f"True,{int(number) in on_front}")
    local = mlflow.artifacts.download_artifacts(f"runs:/{pid}/{front.FRONT_PNG}", dst_path=str(tmp_path))
    assert open(local, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    page = mlflow.artifacts.load_text(f"runs:/{pid}/study/report.html")
    assert "Accuracy and cost: the front" in page and "size_mb &le; 0.1," in page
    for t in small:
        assert f'data-front-trial="{t.number}"' in page and t.user_attrs["mlflow_run_id"] in page


def test_a_stored_study_keeps_its_objectives(tracking, tmp_path):
    # a study created with one objective, then its file given a second: refused with what to do, before
    # any trial, rather than trials that fail one after another on answers of the wrong length. The study is
    # made as `tune` makes it (setup.open_study: its directions and its file recorded), without a search
    # before it: what is refused is the stored study's objectives, whatever trials it holds.
    path = tmp_path / "switch.yaml"
    path.write_text(BASE.replace("n_trials: 2", "n_trials: 1") + "reference: off\n")
    args = P.tune_args({"family": "mlp", "study": str(path), "register": False, "data": "digits"})
    made = setup.open_study(setup.prepare(args), args.seed)
    assert [d.name for d in made.directions] == ["MAXIMIZE"] and made.user_attrs[setup.STUDY_TEXT] == path.read_text()
    path.write_text(path.read_text() + "objectives: [val_accuracy, mmacs_per_image]\npruner: {type: none}\n")
    with pytest.raises(ConfigError, match=r"created with 1 objective\(s\) \(maximize\).*new study_name"):
        tune.run(P.tune_args({"family": "mlp", "study": str(path), "register": False}))
    study = optuna.load_study(study_name="switch", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert study.trials == [] and len(study.directions) == 1, "refused before any trial"
    running = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                 filter_string="attributes.status = 'RUNNING'")
    assert running == []
