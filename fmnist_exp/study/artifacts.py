"""The study's comparison artifacts on a parent run: the trials table, Optuna's plots, the counts,
and the data its trials saw."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import optuna
from mlflow.tracking import MlflowClient

from ..metrics import EPOCHS_RUN, VAL_ACC
from ..train import job, lineage, plots
from .setup import Setup
from .summary import Counts


def log_optuna_plots(study: optuna.Study, run_id: str) -> list[str]:
    """Optuna's own figures of the study as PNGs under study/; a figure Optuna cannot draw yet (e.g.
    importances before two complete trials) is tagged ``plot_skipped_<name>`` with the reason."""
    from optuna.visualization import matplotlib as ovm

    client, logged = MlflowClient(), []
    # several objectives: Optuna draws one at a time; validation accuracy is the one these figures are about
    multi = len(study.directions) > 1
    target: dict[str, Any] = {"target": lambda t: t.values[0], "target_name": VAL_ACC} if multi else {}
    for name, fn, kwargs in (("optimization_history", ovm.plot_optimization_history, target),
                             ("param_importances", ovm.plot_param_importances, target),
                             ("parallel_coordinate", ovm.plot_parallel_coordinate, target),
                             ("intermediate_values", ovm.plot_intermediate_values, {})):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax: Any = fn(study, **kwargs)  # one Axes, or an array of them
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            client.set_tag(run_id, f"plot_skipped_{name}", str(e)[:500])
            continue
        fig = np.atleast_1d(ax).ravel()[0].figure
        fig.set_size_inches(10, 6)
        fig.tight_layout()
        client.log_figure(run_id, fig, f"study/{name}.png")
        plots.close(fig)
        logged.append(name)
    return logged


REPORT_ATTR = "study_report"  # on the study: the run holding the latest report, and for how many trials


def count_trials(study: optuna.Study, parent_run_id: str, *, epochs_per_trial: int) -> Counts:
    """The study's trials by state, logged as metrics on this worker's parent run (cheap: every
    worker does it)."""
    client = MlflowClient()
    TS = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    finished = [t for t in trials if t.state in (TS.COMPLETE, TS.PRUNED)]
    counts = Counts(
        study_name=study.study_name,
        experiment_id=client.get_run(parent_run_id).info.experiment_id,
        n_trials_total=len(states),
        n_trials_this_run=sum(t.user_attrs.get("mlflow_parent_run_id") == parent_run_id for t in trials),
        n_complete=states.count(TS.COMPLETE), n_pruned=states.count(TS.PRUNED), n_failed=states.count(TS.FAIL),
        epochs_run=sum(t.user_attrs.get(EPOCHS_RUN, len(t.intermediate_values)) for t in finished),
        epochs_budget=len(finished) * epochs_per_trial,
    )
    for k in ("n_trials_total", "n_complete", "n_pruned", "n_failed", "epochs_run", "epochs_budget"):
        client.log_metric(parent_run_id, k, getattr(counts, k))
    return counts


def claim_report(study: optuna.Study, parent_run_id: str, *, registered_new: bool) -> bool:
    """Should this process render the study-level views (trials table, Optuna's plots, the report)?
    At a hundred workers each rendering them at its end is the same work done a hundred times, each
    a different snapshot. So: the process that registers a new version renders (the page explains
    that version), and so does the last worker to finish (no trial running), once per set of finished
    trials. Callers hold the registration lock, which orders the claims; the claim is kept on the study."""
    trials = study.get_trials(deepcopy=False)
    if not registered_new and any(t.state == optuna.trial.TrialState.RUNNING for t in trials):
        return False
    finished = sum(t.state.is_finished() for t in trials)
    claimed = study.user_attrs.get(REPORT_ATTR) or {}
    if not registered_new and claimed.get("n_finished") == finished:
        return False
    study.set_user_attr(REPORT_ATTR, {"run_id": parent_run_id, "n_finished": finished})
    return True


def release_report(study: optuna.Study, parent_run_id: str) -> None:
    """Give back this run's claim when its rendering failed, so the next worker to finish makes the page."""
    if (study.user_attrs.get(REPORT_ATTR) or {}).get("run_id") == parent_run_id:
        study.set_user_attr(REPORT_ATTR, {})


def log_study_views(study: optuna.Study, parent_run_id: str) -> None:
    """The study-level views on a parent run: the trials table and Optuna's plots."""
    MlflowClient().log_text(parent_run_id, study.trials_dataframe().to_csv(index=False), "study/trials.csv")
    log_optuna_plots(study, parent_run_id)


# What each split depends on: a space that samples one of these gives each trial a split of its own.
SPLIT_INPUTS = {"training": {"data", "data_dir", "val_fraction", "seed", "split_seed", "train_samples"},
                "validation": {"data", "data_dir", "val_fraction", "seed", "split_seed"}, "test": {"data", "data_dir"}}


def log_study_inputs(setup: Setup) -> dict[str, str]:
    """The splits the study's trials train, validate and are tested on, as dataset inputs of the
    active (parent) run: the same datasets, digests and contexts each trial logs (train.lineage),
    so the runs table's Dataset column shows the study's data on its own row. A split that the
    space samples (a ``seed``, a ``train_samples``) differs per trial and is left to the trials.
    Returns context -> digest."""
    splits = job.splits(setup.ds, setup.trial_params())
    shared = {context: dataset for context, dataset in lineage.split_datasets(setup.ds.source, splits).items()
              if not SPLIT_INPUTS[context] & set(setup.spec.space)}
    return lineage.log_inputs(shared) if shared else {}
