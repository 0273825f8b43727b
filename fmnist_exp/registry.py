"""After a study: score the candidate on the test split once, register it, move aliases by a
paired test, and leave comparison artifacts (trials table, Optuna plots, leaderboard) on the
parent run.

Alias rule (the promotion gate): ``champion`` moves to the new version only when there is no
champion yet, or when the new version is better on the same test images by an exact McNemar
test (two-sided p < ``promote_alpha``) AND gets more of them right. Both models answer the
10,000 test images at decision time; two logged numbers are never compared, because on 10,000
images a raw difference of a few tenths of a point is noise. Otherwise the new version becomes
``challenger`` and the version's tags say why.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import mlflow
import numpy as np
import optuna
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from . import config as C
from . import data as D
from . import lineage, plots, stats
from .serving import MAX_BATCH

CHAMPION, CHALLENGER = "champion", "challenger"
LEADERBOARD_FAMILIES = ("baseline", "mlp", "cnn")


def classifier_answers(model_uri: str, x: np.ndarray) -> pd.DataFrame:
    """A pyfunc classifier's answers (label, class_name, probabilities) for many images, in
    batches it accepts: the served classifier refuses more than MAX_BATCH images at once."""
    model = mlflow.pyfunc.load_model(model_uri)
    return pd.concat([model.predict(x[i:i + MAX_BATCH]) for i in range(0, len(x), MAX_BATCH)], ignore_index=True)


def score_on_test(run_id: str, classifier_uri: str, ds: D.Dataset, title: str) -> tuple[np.ndarray, dict]:
    """The test labels a run's classifier answers, and its test metrics. The metrics and plots are
    logged to the run the first time only, so a resumed study does not log them twice."""
    from .experiment import log_test_evaluation

    answers = classifier_answers(classifier_uri, ds.x_test)
    logged = MlflowClient().get_run(run_id).data.metrics
    if C.TEST_ACC in logged:
        metrics = {k: v for k, v in logged.items() if k.startswith("test_")}
    else:
        probs = np.stack([np.asarray(p) for p in answers["probabilities"]])
        metrics = log_test_evaluation(run_id, ds.x_test, ds.y_test, probs, title)
    return answers["label"].to_numpy(), metrics


def record(run_id: str, metrics: dict, tags: dict | None = None) -> None:
    """Numbers (and readable sentences) on a run, e.g. the gate's or the gain's fields."""
    client = MlflowClient()
    for k, v in metrics.items():
        client.log_metric(run_id, k, float(v))
    for k, v in (tags or {}).items():
        client.set_tag(run_id, k, str(v))


def current_champion(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None  # no registered model, or no champion yet


def promotes(cmp: stats.PairedComparison | None, promote_alpha: float) -> tuple[bool, str]:
    """The gate: (moves @champion?, why). ``cmp`` is candidate (a) against champion (b)."""
    if cmp is None:
        return True, "no champion before"
    if cmp.b <= cmp.c:
        return False, "not more test images right than the champion"
    if cmp.p_value >= promote_alpha:
        return False, f"not distinguishable from noise (p >= promote_alpha={promote_alpha:g})"
    return True, f"better on the same test images (p < promote_alpha={promote_alpha:g})"


def register(model_uri: str, name: str, ds: D.Dataset, tags: dict, *, promote_alpha: float,
             labels: np.ndarray | None = None) -> dict:
    """Register ``model_uri`` (a pyfunc classifier) as a new version and decide champion vs challenger.

    ``labels`` are the candidate's test answers when the caller has them already; the current
    champion is always asked on the spot.
    """
    client = MlflowClient()
    if labels is None:
        labels = classifier_answers(model_uri, ds.x_test)["label"].to_numpy()
    accuracy = float(np.mean(labels == ds.y_test))
    champ = current_champion(client, name)
    cmp = None
    if champ is not None:  # by version, not alias: the comparison is with exactly this model
        champ_labels = classifier_answers(f"models:/{name}/{champ.version}", ds.x_test)["label"].to_numpy()
        cmp = stats.compare(ds.y_test, labels, champ_labels)
    wins, why = promotes(cmp, promote_alpha)
    gate = cmp.fields("gate_", "candidate", "champion") if cmp else {}
    version_tags = {**tags, C.TEST_ACC: f"{accuracy:.6f}", "promote_alpha": f"{promote_alpha:g}",
                    **{k: f"{v:.6g}" for k, v in gate.items()}}
    if champ is not None:
        version_tags.update(champion_version=champ.version, gate_comparison=cmp.describe())
    mv = mlflow.register_model(model_uri, name, tags=version_tags)
    alias = CHAMPION if wins else CHALLENGER
    client.set_registered_model_alias(name, alias, mv.version)
    decision = f"v{mv.version} is @{alias}: {why}" + (
        f"; against champion v{champ.version}: {cmp.describe()}" if champ else f" (test accuracy {accuracy:.4f})")
    client.set_model_version_tag(name, mv.version, "alias_decision", decision)
    return {"registered_version": int(mv.version), "alias": alias, "decision": decision,
            "previous_champion_version": int(champ.version) if champ else 0, **gate}


def _log_optuna_plots(study: optuna.Study, run_id: str) -> list[str]:
    from optuna.visualization import matplotlib as ovm

    client, logged = MlflowClient(), []
    for name, fn in (("optimization_history", ovm.plot_optimization_history),
                     ("param_importances", ovm.plot_param_importances),
                     ("parallel_coordinate", ovm.plot_parallel_coordinate),
                     ("intermediate_values", ovm.plot_intermediate_values)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:  # e.g. importances need 2+ complete trials
            client.set_tag(run_id, f"plot_skipped_{name}", str(e)[:500])
            continue
        fig = np.atleast_1d(ax).ravel()[0].figure
        fig.set_size_inches(10, 6)
        fig.tight_layout()
        client.log_figure(run_id, fig, f"study/{name}.png")
        plots.close(fig)
        logged.append(name)
    return logged


def leaderboard(experiment_id: str):
    """Per family, the scored run with the best validation accuracy (never chosen by test accuracy:
    a study's seed and reference runs are scored on test too), in the study's experiment and the
    single runs' experiments fmnist-baseline, fmnist-mlp and fmnist-cnn (those that exist); rows
    are shown best test accuracy first."""
    client = MlflowClient()
    ids = [experiment_id] + [e.experiment_id for f in LEADERBOARD_FAMILIES
                             if (e := client.get_experiment_by_name(f"fmnist-{f}")) is not None]
    rows = []
    for family in LEADERBOARD_FAMILIES:
        runs = mlflow.search_runs(
            list(dict.fromkeys(ids)), filter_string=f"tags.family = '{family}' and metrics.{C.TEST_ACC} > 0",
            order_by=["metrics.val_final_accuracy DESC"], max_results=1,
        )
        if len(runs):
            r = runs.iloc[0]
            rows.append({"family": family, "run_id": r["run_id"], "run_name": r.get("tags.mlflow.runName"),
                         "arch": r.get("tags.arch"), "val_final_accuracy": r.get("metrics.val_final_accuracy"),
                         C.TEST_ACC: r[f"metrics.{C.TEST_ACC}"],
                         C.TEST_F1: r.get(f"metrics.{C.TEST_F1}")})
    import pandas as pd

    return pd.DataFrame(rows).sort_values(C.TEST_ACC, ascending=False) if rows else pd.DataFrame(rows)


@dataclass
class Candidate:
    """The model a study proposes: its run, model URI, validation accuracy and origin."""

    run_id: str
    model_uri: str  # the Keras model
    classifier_uri: str  # the servable pyfunc around it (scored on the test split, registered)
    val_accuracy: float
    trial_number: int
    origin: str  # "best trial" or "final retrain"
    test_labels: np.ndarray | None = None  # its answers on the test split, once scored
    test_metrics: dict = field(default_factory=dict)
    seed_stats: dict = field(default_factory=dict)  # of a final retrained with several seeds (tune.pick_candidate)


def score_candidate(cand: Candidate, ds: D.Dataset) -> None:
    """Score the candidate's classifier on the test split, once per process and once per run."""
    if cand.test_labels is None:
        cand.test_labels, cand.test_metrics = score_on_test(cand.run_id, cand.classifier_uri, ds, cand.origin)


def log_study_artifacts(study: optuna.Study, parent_run_id: str, *, epochs_per_trial: int) -> dict:
    """Trials table, Optuna plots and counts on the parent run; returns the summary so far."""
    client = MlflowClient()
    TS = optuna.trial.TrialState
    states = [t.state for t in study.trials]
    summary = {
        "study_name": study.study_name,
        "experiment_id": client.get_run(parent_run_id).info.experiment_id,
        "n_trials_total": len(states),
        # counted by owner, not by difference: other workers may add trials meanwhile
        "n_trials_this_run": sum(t.user_attrs.get("mlflow_parent_run_id") == parent_run_id for t in study.trials),
        "n_complete": states.count(TS.COMPLETE), "n_pruned": states.count(TS.PRUNED), "n_failed": states.count(TS.FAIL),
    }
    finished = [t for t in study.trials if t.state in (TS.COMPLETE, TS.PRUNED)]
    # epochs actually trained against what every finished trial would have cost without pruning
    summary["epochs_run"] = sum(t.user_attrs.get("epochs_run", len(t.intermediate_values)) for t in finished)
    summary["epochs_budget"] = len(finished) * epochs_per_trial
    client.log_text(parent_run_id, study.trials_dataframe().to_csv(index=False), "study/trials.csv")
    _log_optuna_plots(study, parent_run_id)
    for k in ("n_trials_total", "n_complete", "n_pruned", "n_failed", "epochs_run", "epochs_budget"):
        client.log_metric(parent_run_id, k, summary[k])
    return summary


def already_registered(name: str, run_id: str):
    try:
        found = MlflowClient().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        return None
    return found[0] if found else None


def link_model(run_id: str, model_uri: str) -> None:
    """Show a model logged by another run (the study's candidate) as this run's output: the
    parent run's Models column then names the model its study registered, with its metrics."""
    from mlflow.entities import LoggedModelOutput

    if model_uri.startswith("models:/m-"):  # a LoggedModel id; older or registry URIs have none to link
        MlflowClient().log_outputs(run_id, [LoggedModelOutput(model_uri.removeprefix("models:/"), step=0)])


def register_candidate(cand: Candidate, ds: D.Dataset, *, model_name: str, study_name: str, family: str,
                       parent_run_id: str, promote_alpha: float) -> dict:
    """Score the candidate on the test split once, register it and let the gate decide its alias."""
    client = MlflowClient()
    score_candidate(cand, ds)
    link_model(parent_run_id, cand.classifier_uri)
    out = {"model_name": model_name, "best_trial": cand.trial_number, "best_val_accuracy": cand.val_accuracy,
           "best_run_id": cand.run_id, "candidate": cand.origin, "test_accuracy": cand.test_metrics[C.TEST_ACC],
           "test_macro_f1": cand.test_metrics[C.TEST_F1]}
    if (mv := already_registered(model_name, cand.run_id)) is not None:
        # A resumed study whose best did not change: nothing new to register.
        aliases = client.get_model_version(model_name, mv.version).aliases  # search results omit aliases
        out.update(registered_version=int(mv.version), alias=",".join(aliases) or "none",
                   decision=f"unchanged: best model already registered as v{mv.version}")
        client.set_tag(parent_run_id, "registration", out["decision"])
        return out
    tags = {"study": study_name, "trial_number": str(cand.trial_number), "val_accuracy": f"{cand.val_accuracy:.6f}",
            "source_run_id": cand.run_id, "family": family, "candidate": cand.origin,
            **lineage.version_tags(cand.run_id, parent_run_id)}
    out.update(register(cand.classifier_uri, model_name, ds, tags, promote_alpha=promote_alpha,
                        labels=cand.test_labels))
    lineage.tag_reproduce_command(model_name, out["registered_version"])
    gate = {k: v for k, v in out.items() if k.startswith("gate_")}
    record(parent_run_id, {"best_val_accuracy": cand.val_accuracy, "best_test_accuracy": out["test_accuracy"], **gate},
           {"registration": out["decision"], "gate_decision": out["alias"],
            "registered_model": f"{model_name}/{out['registered_version']}"})
    board = leaderboard(client.get_run(parent_run_id).info.experiment_id)
    client.log_text(parent_run_id, board.to_csv(index=False), "leaderboard.csv")
    return out
