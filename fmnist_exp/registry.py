"""After a study: score the best trial on the test split once, register it, move aliases,
and leave comparison artifacts (trials table, Optuna plots, leaderboard) on the parent run.

Alias rule: ``champion`` moves to the new version only if its test accuracy beats the current
champion's; otherwise the new version becomes ``challenger`` and the champion stays.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import mlflow
import numpy as np
import optuna
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from . import config as C
from . import data as D
from . import plots

CHAMPION, CHALLENGER = "champion", "challenger"
LEADERBOARD_FAMILIES = ("baseline", "mlp", "cnn")


def test_evaluation(run_id: str, model_uri: str, ds: D.Dataset) -> dict:
    """Score a logged Keras model on the test split once and log the results to its run."""
    from .experiment import log_test_evaluation

    model = mlflow.keras.load_model(model_uri)
    probs = model.predict(ds.x_test.astype("float32"), batch_size=1024, verbose=0)
    return log_test_evaluation(run_id, ds.x_test, ds.y_test, probs, "best trial")


def current_champion(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None  # no registered model, or no champion yet


def register(model_uri: str, name: str, test_accuracy: float, tags: dict) -> dict:
    """Register ``model_uri`` as a new version and decide champion vs challenger."""
    client = MlflowClient()
    champ = current_champion(client, name)
    champ_acc = float(champ.tags.get("test_accuracy", "nan")) if champ else float("nan")
    mv = mlflow.register_model(model_uri, name, tags={**tags, "test_accuracy": f"{test_accuracy:.6f}"})
    wins = champ is None or not np.isfinite(champ_acc) or test_accuracy > champ_acc
    alias = CHAMPION if wins else CHALLENGER
    client.set_registered_model_alias(name, alias, mv.version)
    decision = (f"v{mv.version} test_accuracy {test_accuracy:.4f} "
                + ("beats" if wins else "does not beat")
                + (f" champion v{champ.version} ({champ_acc:.4f})" if champ else " (no champion before)"))
    client.set_model_version_tag(name, mv.version, "alias_decision", decision)
    return {"registered_version": int(mv.version), "alias": alias, "decision": decision,
            "previous_champion_version": int(champ.version) if champ else 0,
            "previous_champion_test_accuracy": champ_acc}


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
    """Best run per family (by test accuracy) in the experiment, best first."""
    rows = []
    for family in LEADERBOARD_FAMILIES:
        runs = mlflow.search_runs(
            [experiment_id], filter_string=f"tags.family = '{family}' and metrics.{C.TEST_ACC} > 0",
            order_by=[f"metrics.{C.TEST_ACC} DESC"], max_results=1,
        )
        if len(runs):
            r = runs.iloc[0]
            rows.append({"family": family, "run_id": r["run_id"], "run_name": r.get("tags.mlflow.runName"),
                         "arch": r.get("tags.arch"), C.TEST_ACC: r[f"metrics.{C.TEST_ACC}"],
                         C.TEST_F1: r.get(f"metrics.{C.TEST_F1}")})
    import pandas as pd

    return pd.DataFrame(rows).sort_values(C.TEST_ACC, ascending=False) if rows else pd.DataFrame(rows)


@dataclass
class Candidate:
    """The model a study proposes: its run, model URI, validation accuracy and origin."""

    run_id: str
    model_uri: str  # the Keras model (scored on the test split)
    classifier_uri: str  # the servable pyfunc around it (registered)
    val_accuracy: float
    trial_number: int
    origin: str  # "best trial" or "final retrain"


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


def register_candidate(cand: Candidate, ds: D.Dataset, *, model_name: str, study_name: str, family: str,
                       parent_run_id: str) -> dict:
    """Score the candidate on the test split once, register it and decide its alias."""
    client = MlflowClient()
    out = {"model_name": model_name, "best_trial": cand.trial_number, "best_val_accuracy": cand.val_accuracy,
           "best_run_id": cand.run_id, "candidate": cand.origin}
    if (mv := already_registered(model_name, cand.run_id)) is not None:
        # A resumed study whose best did not change: nothing new to score or register.
        aliases = client.get_model_version(model_name, mv.version).aliases  # search results omit aliases
        out.update(registered_version=int(mv.version), alias=",".join(aliases) or "none",
                   decision=f"unchanged: best model already registered as v{mv.version}",
                   test_accuracy=float(mv.tags.get("test_accuracy", "nan")))
        client.set_tag(parent_run_id, "registration", out["decision"])
        return out
    test = test_evaluation(cand.run_id, cand.model_uri, ds)
    from . import lineage  # imported here to keep this edit to the tag lines (issue 12)

    tags = {"study": study_name, "trial_number": str(cand.trial_number), "val_accuracy": f"{cand.val_accuracy:.6f}",
            "source_run_id": cand.run_id, "family": family, "candidate": cand.origin,
            **lineage.version_tags(cand.run_id, parent_run_id)}
    out.update(register(cand.classifier_uri, model_name, test[C.TEST_ACC], tags),
               test_accuracy=test[C.TEST_ACC], test_macro_f1=test[C.TEST_F1])
    lineage.tag_reproduce_command(model_name, out["registered_version"])
    client.log_metric(parent_run_id, "best_val_accuracy", cand.val_accuracy)
    client.log_metric(parent_run_id, "best_test_accuracy", test[C.TEST_ACC])
    if np.isfinite(out["previous_champion_test_accuracy"]):
        client.log_metric(parent_run_id, "previous_champion_test_accuracy", out["previous_champion_test_accuracy"])
    client.set_tag(parent_run_id, "registration", out["decision"])
    client.set_tag(parent_run_id, "registered_model", f"{model_name}/{out['registered_version']}")
    board = leaderboard(client.get_run(parent_run_id).info.experiment_id)
    client.log_text(parent_run_id, board.to_csv(index=False), "leaderboard.csv")
    return out
