"""After the search: the candidate a study proposes. The best trial's model, or (when the study
file has a ``final``) the best configuration retrained in nested ``final`` runs, one per seed, and
maybe their average (an ensemble). Of several seeds the one with the best *validation* accuracy
is the candidate, never the best test accuracy. A resumed study reuses finished retrains."""

from __future__ import annotations

import mlflow
import numpy as np
import optuna

from .. import stats
from ..data import Dataset
from ..metrics import TEST_ACC
from ..train import job
from . import ensemble, goals
from .candidate import BEST_TRIAL, ENSEMBLE_OF_FINALS, FINAL_RETRAIN, Candidate, cost_metrics, finished
from .setup import Setup
from .summary import ENSEMBLE, SeedStats


def pick_candidate(setup: Setup, study: optuna.Study) -> tuple[Candidate, SeedStats | None] | None:
    """The candidate (None without a complete trial) and, for several final seeds, their spread."""
    best = goals.choose(study, setup.spec.goals)
    if best is None:
        return None
    if not setup.spec.retrains:
        return Candidate(best.user_attrs["mlflow_run_id"], best.user_attrs["model_uri"],
                         best.user_attrs["classifier_uri"], best.values[0], best.number, BEST_TRIAL), None
    seeds = setup.final_seeds()
    finals = [final_run(setup, best, seed) for seed in seeds]
    by_val = max(finals, key=lambda cand: cand.val_accuracy)
    chosen = ensemble_run(setup, best, finals, seeds) if setup.spec.final.ensemble else by_val
    if len(finals) <= 1:
        return chosen, None
    # the spread a seed alone makes, next to the gain a study claims
    for cand in finals:
        cand.score(setup.ds)
    accs = [cand.test_metrics[TEST_ACC] for cand in finals]
    registered: int | str = ENSEMBLE if setup.spec.final.ensemble else seeds[finals.index(by_val)]
    mean, std = float(np.mean(accs)), float(np.std(accs, ddof=1))
    mlflow.log_metrics({"final_seeds_n": len(accs), "final_seeds_test_accuracy_mean": mean,
                        "final_seeds_test_accuracy_std": std})
    mlflow.set_tag("final_seed_registered", str(registered))
    gain, gain_seed = None, None
    if setup.spec.final.ensemble:
        gain_seed = seeds[finals.index(by_val)]
        gain = ensemble_gain(chosen, by_val, gain_seed, setup.ds)
    return chosen, SeedStats(seeds, [c.val_accuracy for c in finals], accs, mean, std, registered, gain, gain_seed)


def ensemble_gain(ens: Candidate, seed_model: Candidate, seed: int, ds: Dataset) -> stats.PairedComparison:
    """What averaging bought: the ensemble against the seed that would have been registered
    without it (the best validation accuracy), paired on the test images, on the parent run.
    A report, not a choice: ``final.ensemble`` was decided in the study file."""
    cmp = stats.compare(ds.y_test, ens.score(ds), seed_model.score(ds))
    mlflow.log_metrics({**cmp.fields("ensemble_gain_", "ensemble", "seed"), "ensemble_gain_seed": seed})
    mlflow.set_tag("ensemble_gain", cmp.describe())
    print(f"[tune] ensemble over seed {seed} (the best validation accuracy): {cmp.describe()}", flush=True)
    return cmp


def final_run(setup: Setup, best: optuna.trial.FrozenTrial, seed: int) -> Candidate:
    """One final retrain of the best configuration with ``seed``; a resumed study with the same
    best reuses its finished run instead of training it again."""
    study_name, spec = setup.study_name, setup.spec
    p = setup.final_params(best.user_attrs["config"], seed)
    tags = {"optuna_study": study_name, "final_of_trial": str(best.number), "final_seed": str(seed)}
    done = finished(f"tags.optuna_study = '{study_name}' and tags.final_of_trial = '{best.number}' "
                    f"and tags.final_seed = '{seed}'", best.number, FINAL_RETRAIN)
    if done:
        return done
    name = f"final (trial {best.number})" if spec.final.seeds == 1 else f"final (trial {best.number}, seed {seed})"
    print(f"[tune] {name}: retraining with {spec.final.params}", flush=True)
    with mlflow.start_run(run_name=name, nested=True, tags=tags) as run:
        res = job.train_in_run(p, ds=setup.ds, evaluate_test=False, extra_tags=tags, echo="[tune] final")
    return Candidate(run.info.run_id, res.model_uri, res.classifier_uri, res.val_accuracy, best.number, FINAL_RETRAIN)


def ensemble_run(setup: Setup, best: optuna.trial.FrozenTrial, finals: list[Candidate],
                 seeds: list[int]) -> Candidate:
    """The average of the final retrains' models (``final.ensemble``), logged in a nested run of
    its own; a resumed study with the same members reuses it."""
    members = ",".join(c.run_id for c in finals)
    tags = {"optuna_study": setup.study_name, "final_of_trial": str(best.number), ensemble.MEMBERS_TAG: members}
    done = finished(f"tags.optuna_study = '{setup.study_name}' and tags.{ensemble.MEMBERS_TAG} = '{members}'",
                    best.number, ENSEMBLE_OF_FINALS)
    if done:
        return done
    p = setup.final_params(best.user_attrs["config"], seeds[0])
    models = [mlflow.keras.load_model(c.model_uri) for c in finals]
    with mlflow.start_run(run_name=f"ensemble (trial {best.number}, seeds {seeds[0]}-{seeds[-1]})", nested=True,
                          tags=tags) as run:
        res, _ = ensemble.log_in_run(p, models, seeds, setup.ds, member_run_ids=[c.run_id for c in finals],
                                     echo="[tune]")
    return Candidate(run.info.run_id, res.model_uri, res.classifier_uri, res.val_accuracy, best.number,
                     ENSEMBLE_OF_FINALS)


def check_budget(setup: Setup, cand: Candidate, parent_run_id: str) -> str | None:
    """The candidate's cost as measured on its own run (the final retrain's, after it trained) against
    the study's budget, before registration: the verdict, and the promotion margin, go on the
    candidate's run (the gate reads them there) and the verdict on the parent run. None: no budget."""
    study_goals = setup.spec.goals
    tags = study_goals.candidate_tags(cost_metrics(cand.run_id))
    if not tags:
        return None
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_tag(cand.run_id, key, value)
    verdict = tags.get(goals.BUDGET_VERDICT_TAG)
    if verdict is not None:
        client.set_tag(parent_run_id, goals.BUDGET_VERDICT_TAG, verdict)
        print(f"[tune] candidate (run {cand.run_id}) {verdict}", flush=True)
    return verdict

