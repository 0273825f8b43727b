"""After the search: the candidate a study proposes. The best trial's model, or (when the study
file has a ``final``) the best configuration retrained in nested ``final`` runs, one per seed, and
maybe their average (an ensemble). Of several seeds the one with the best *validation* accuracy
is the candidate, never the best test accuracy; ``final.distill`` registers one network trained on
the average's answers instead. A resumed study reuses finished retrains."""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import optuna

from .. import stats
from ..data import Dataset
from ..metrics import TEST_ACC, VAL_FINAL_ACC
from ..model import cost
from ..params import ConfigError
from ..train import job, tracking
from ..train.builder_fit import without_compile
from ..train.distill import DISTILL_WEIGHT, DISTILLED_FROM, Teacher
from ..train.evaluate import AT_CHANCE, AT_CHANCE_ALPHA, log_chance, validated
from . import ensemble, goals
from .candidate import (
    BEST_TRIAL,
    DISTILLED_NETWORK,
    ENSEMBLE_OF_FINALS,
    FINAL_RETRAIN,
    Candidate,
    cost_metrics,
    finished,
)
from .objective import static_costs
from .setup import Setup
from .summary import DISTILL_STUDENT, DISTILL_VS_ENSEMBLE, DISTILL_VS_SEED, DISTILLED, ENSEMBLE, SeedStats


def pick_candidate(setup: Setup, study: optuna.Study) -> tuple[Candidate, SeedStats | None] | None:
    """The candidate (None without a complete trial) and, for several final seeds, their spread."""
    best = goals.choose(study, setup.spec.goals)
    if best is None:
        return None
    if not setup.spec.retrains:
        return Candidate(best.user_attrs["mlflow_run_id"], best.user_attrs["model_uri"],
                         best.user_attrs["classifier_uri"], best.values[0], best.number, BEST_TRIAL), None
    seeds = setup.final_seeds()
    student = student_tag(setup, best.user_attrs["config"], seeds[0]) if setup.spec.final.distill else ""
    finals = [final_run(setup, best, seed) for seed in seeds]
    by_val = max(finals, key=lambda cand: cand.val_accuracy)
    chosen = ensemble_run(setup, best, finals, seeds) if setup.spec.final.ensemble else by_val
    teacher = chosen
    if setup.spec.final.distill:
        chosen = distilled_run(setup, best, teacher, seeds[0], student)
    if len(finals) <= 1:
        return chosen, None
    # the spread a seed alone makes, next to the gain a study claims
    for cand in finals:
        cand.score(setup.ds)
    accs = [cand.test_metrics[TEST_ACC] for cand in finals]
    registered: int | str = (DISTILLED if setup.spec.final.distill else ENSEMBLE if setup.spec.final.ensemble
                             else seeds[finals.index(by_val)])
    mean, std = float(np.mean(accs)), float(np.std(accs, ddof=1))
    mlflow.log_metrics({"final_seeds_n": len(accs), "final_seeds_test_accuracy_mean": mean,
                        "final_seeds_test_accuracy_std": std})
    mlflow.set_tag("final_seed_registered", str(registered))
    gain, gain_seed, vs_ensemble, vs_seed = None, None, None, None
    if setup.spec.final.ensemble:
        gain_seed = seeds[finals.index(by_val)]
        gain = ensemble_gain(teacher, by_val, gain_seed, setup.ds)
    if setup.spec.final.distill:
        # what one network kept of the average, against it and against the best-validated seed
        vs_ensemble = paired_report(chosen, teacher, setup.ds, DISTILL_VS_ENSEMBLE, ("distilled", "ensemble"),
                                    "distilled network against the ensemble")
        vs_seed = paired_report(chosen, by_val, setup.ds, DISTILL_VS_SEED, ("distilled", "seed"),
                                f"distilled network against the seed {gain_seed}")
    return chosen, SeedStats(seeds, [c.val_accuracy for c in finals], accs, mean, std, registered, gain, gain_seed,
                             vs_ensemble, vs_seed, student)


def ensemble_gain(ens: Candidate, seed_model: Candidate, seed: int, ds: Dataset) -> stats.PairedComparison:
    """What averaging bought: the ensemble against the seed that would have been registered
    without it (the best validation accuracy), paired on the test images, on the parent run.
    A report, not a choice: ``final.ensemble`` was decided in the study file."""
    mlflow.log_metric("ensemble_gain_seed", seed)
    return paired_report(ens, seed_model, ds, "ensemble_gain_", ("ensemble", "seed"),
                         f"ensemble over seed {seed} (the best validation accuracy)")


def paired_report(a: Candidate, b: Candidate, ds: Dataset, prefix: str, names: tuple[str, str],
                  line: str) -> stats.PairedComparison:
    """``a`` against ``b`` on the test images, on the parent run (metrics ``prefix...``, tag
    ``prefix`` without its underscore) and on the console after ``line``: a report, not a choice."""
    cmp = stats.compare(ds.y_test, a.score(ds), b.score(ds))
    mlflow.log_metrics(cmp.fields(prefix, *names))
    mlflow.set_tag(prefix.rstrip("_"), cmp.describe())
    print(f"[tune] {line}: {cmp.describe()}", flush=True)
    return cmp


VAL_HELD_OUT_BY_ALL = "val_accuracy_held_out_by_all_seeds"


def student_tag(setup: Setup, config: dict[str, Any], seed: int) -> str:
    """What ``final.student`` changes of the final recipe, as the student trains with it
    ("filters=32,64,192,384"; "" for no change): resolved values, so that two spellings of one value
    are one student. Refused before the final retrains when the study's cost bounds that are known
    before training (e.g. ``mmacs_per_image``) would not let the student be registered."""
    p = setup.student_params(config, seed)
    student, final = p.flat(), setup.final_params(config, seed).flat()
    changed = ", ".join(f"{key}={student[key]}" for key in sorted(setup.spec.final.student)
                        if student[key] != final[key])
    study_goals = setup.spec.goals
    broken = study_goals.broken(static_costs(p, setup.ds.info)) if changed and study_goals.static_constraints() else []
    if broken:
        raise ConfigError(f"{setup.spec.path}: final.student ({changed}) would cost {'; '.join(broken)}, over the "
                          "study's constraints, so the network distilled with it could not be registered; nothing "
                          "was retrained: give final.student a network within them, or drop it, and run again")
    return changed


def distilled_run(setup: Setup, best: optuna.trial.FrozenTrial, teacher: Candidate, seed: int,
                  student: str) -> Candidate:
    """One network of the final recipe with ``final.student``'s changes (``seed``: the first seed's
    images and start) fitted to the ensemble's answers (``final.distill``), in a nested run of its
    own (``student``: what it changes, :func:`student_tag`); a resumed study reuses it (same teacher,
    weight and student). As a candidate its validation accuracy is that on the images no seed trained
    on, like the ensemble's: unless the seeds share one split, the others trained on most of its own."""
    study_name = setup.study_name
    weight = float(setup.spec.final.distill)
    p = setup.student_params(best.user_attrs["config"], seed)
    tags = {"optuna_study": study_name, "final_of_trial": str(best.number), "distilled_seed": str(seed),
            DISTILLED_FROM: teacher.run_id, **({DISTILL_STUDENT: student} if student else {})}
    if student:  # on the parent run too, for the report
        mlflow.set_tag(DISTILL_STUDENT, student)
    # the same teacher, weight and student's own parameters (a run that had none has no such tag)
    done = finished(f"tags.optuna_study = '{study_name}' and tags.{DISTILLED_FROM} = '{teacher.run_id}' "
                    f"and params.{DISTILL_WEIGHT} = '{weight}'"
                    + (f" and tags.{DISTILL_STUDENT} = '{student}'" if student else ""),
                    best.number, DISTILLED_NETWORK, VAL_HELD_OUT_BY_ALL,
                    without_tag=None if student else DISTILL_STUDENT, recipe=p)
    if done:
        return done
    shape = f" ({student})" if student else ""
    print(f"[tune] distilling the ensemble (run {teacher.run_id}) into one network{shape}, seed {seed}: targets "
          f"{weight:g} its answers, {1 - weight:g} the labels", flush=True)
    with mlflow.start_run(run_name=f"distilled (trial {best.number}, seed {seed})", nested=True, tags=tags) as run:
        res = job.train_in_run(setup.ds, p, job.Hooks(tags=tags, evaluate_test=False, echo="[tune] distilled",
                                                      teacher=Teacher(teacher.model_uri, teacher.run_id, weight),
                                                      chance_alpha=setup.args.promote_alpha))
        # beside the ensemble's, on the same images: those no seed trained on (study/ensemble.py); its chance test
        # too, on the images its validation accuracy as a candidate is read on
        x_val, y_val = ensemble.held_out_by_all(setup.ds, p.val_fraction, setup.final_split_seeds())
        scored, chance = validated(mlflow.keras.load_model(res.model_uri), x_val, y_val)
        val = scored[VAL_FINAL_ACC]
        log_chance(chance, "[tune] distilled", setup.args.promote_alpha)
        mlflow.log_metric(VAL_HELD_OUT_BY_ALL, val)
    print(f"[tune] distilled network: validation accuracy {val:.4f} on the {len(y_val)} images no seed trained on "
          f"(the ensemble's {teacher.val_accuracy:.4f})", flush=True)
    # its validation accuracy as a candidate is the ensemble's kind: on images no seed trained on
    return Candidate(run.info.run_id, res.model_uri, res.classifier_uri, val, best.number, DISTILLED_NETWORK)


def final_run(setup: Setup, best: optuna.trial.FrozenTrial, seed: int) -> Candidate:
    """One final retrain of the best configuration with ``seed``; a resumed study with the same
    best reuses its finished run instead of training it again."""
    study_name, spec = setup.study_name, setup.spec
    p = setup.final_params(best.user_attrs["config"], seed)
    tags = {"optuna_study": study_name, "final_of_trial": str(best.number), "final_seed": str(seed)}
    done = finished(f"tags.optuna_study = '{study_name}' and tags.final_of_trial = '{best.number}' "
                    f"and tags.final_seed = '{seed}'", best.number, FINAL_RETRAIN, recipe=p)
    if done:
        return done
    name = f"final (trial {best.number})" if spec.final.seeds == 1 else f"final (trial {best.number}, seed {seed})"
    print(f"[tune] {name}: retraining with {spec.final.params}", flush=True)
    with mlflow.start_run(run_name=name, nested=True, tags=tags) as run:
        res = job.train_in_run(setup.ds, p, job.Hooks(tags=tags, evaluate_test=False, echo="[tune] final",
                                                      chance_alpha=setup.args.promote_alpha))
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
    # without what trained them: a member logged before 058a7e1 loads with its optimizer, which the ensemble would save
    models = [without_compile(mlflow.keras.load_model(c.model_uri)) for c in finals]
    with mlflow.start_run(run_name=f"ensemble (trial {best.number}, seeds {seeds[0]}-{seeds[-1]})", nested=True,
                          tags=tags) as run:
        res, _ = ensemble.log_in_run(p, models, seeds, setup.ds, split_seeds=setup.final_split_seeds(),
                                     member_run_ids=[c.run_id for c in finals], echo="[tune]")
    return Candidate(run.info.run_id, res.model_uri, res.classifier_uri, res.val_accuracy, best.number,
                     ENSEMBLE_OF_FINALS)


def at_chance(cand: Candidate, alpha: float) -> str | None:
    """Why the candidate is not registered: its validation answers not shown above the majority class's share at
    the gate's level ``alpha`` (the test its run logged, train/evaluate.py log_chance; the run's at_chance tag
    is set to this verdict). None: it learned, or its run is from before the test."""
    client = mlflow.MlflowClient()
    metrics = client.get_run(cand.run_id).data.metrics
    if "val_chance_p" not in metrics:
        print(f"[tune] the candidate (run {cand.run_id}) predates the chance test (trained by earlier code): not "
              "tested against the majority class's share", flush=True)
        return None
    at, p = not metrics["val_chance_p"] < alpha, metrics["val_chance_p"]
    client.set_tag(cand.run_id, AT_CHANCE, str(at).lower())
    client.set_tag(cand.run_id, AT_CHANCE_ALPHA, f"{alpha:g}")
    if not at:
        return None
    return (f"at chance: validation accuracy {cand.val_accuracy:.4f} against the majority class's share "
            f"{metrics['val_majority_share']:.4f}, one-sided exact binomial p={p:.3g} (promote_alpha={alpha:g})")


def time_candidate(cand: Candidate) -> None:
    """The candidate's serving times, measured now where its run logged only its deterministic costs (a trial
    of a study whose goals read no time: train.job.Hooks.timed_cost), on its run and its models: the version
    registered from it states them (registry.versions)."""
    if "ms_per_image_b1" not in cost_metrics(cand.run_id):  # the deterministic costs stay as the trial logged them
        timed = cost.measure_once(mlflow.keras.load_model(cand.model_uri)).metrics(times_only=True)
        tracking.log_model_metrics(cand.run_id, timed)


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

