"""The accuracy-cost front of a study with several objectives, where its user looks: every complete
trial with its objectives, costs and feasibility, and whether it is on the Pareto front, as
``study/front.csv`` on the study's parent run, and Optuna's own Pareto plot (``study/pareto_front.png``,
infeasible points drawn apart). The study report (study/report.py) lists the same points, each
linked to its MLflow run; optuna-dashboard shows the front from the study storage itself.

On the front means in Optuna's ``study.best_trials``: feasible (every constraint value <= 0) and
dominated by no other feasible trial. Trials not trained because their network was already over
budget have no accuracy, so they are no point here; their runs and trials say why.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import pandas as pd
from mlflow.tracking import MlflowClient

from ..model.cost import COSTS
from ..train import plots
from .goals import TWIN_ATTR, Goals, feasible, recorded_costs

FRONT_CSV, FRONT_PNG = "study/front.csv", "study/pareto_front.png"


@dataclass(frozen=True)
class FrontPoint:
    trial: int
    run_id: str | None
    objectives: dict[str, float]  # in the study's order, validation accuracy first
    costs: dict[str, float]  # every cost the trial's run measured
    feasible: bool
    on_front: bool


def points(study: optuna.Study, goals: Goals) -> list[FrontPoint]:
    """The study's complete trials as points, front first, then by validation accuracy; a trial that
    redrew a trained point is that point, not another."""
    front = {t.number for t in study.best_trials}
    out = [FrontPoint(t.number, t.user_attrs.get("mlflow_run_id"), dict(zip(goals.objectives, t.values, strict=True)),
                      recorded_costs(t), feasible(t), t.number in front)
           for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
           if TWIN_ATTR not in t.user_attrs]
    return sorted(out, key=lambda p: (not p.on_front, -p.objectives[goals.objectives[0]], p.trial))


def table(front: list[FrontPoint], goals: Goals) -> pd.DataFrame:
    """One row per point: trial, MLflow run, each objective, each cost, feasible, on_front."""
    return pd.DataFrame([{"trial": p.trial, "mlflow_run_id": p.run_id, **p.objectives,
                          **{f"cost_{c}": p.costs.get(c) for c in COSTS}, "feasible": p.feasible,
                          "on_front": p.on_front} for p in front],
                        columns=["trial", "mlflow_run_id", *goals.objectives, *(f"cost_{c}" for c in COSTS),
                                 "feasible", "on_front"])


def log_front(study: optuna.Study, goals: Goals, run_id: str) -> list[FrontPoint]:
    """The front's table and Optuna's Pareto plot on the parent run ``run_id``; a plot Optuna cannot
    draw (no complete trial, more than three objectives) is tagged ``plot_skipped_pareto_front``."""
    from optuna.visualization import matplotlib as ovm

    client = MlflowClient()
    front = points(study, goals)
    client.log_text(run_id, table(front, goals).to_csv(index=False), FRONT_CSV)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
            ax: Any = ovm.plot_pareto_front(study, target_names=list(goals.objectives))
    except (ValueError, RuntimeError) as e:
        client.set_tag(run_id, "plot_skipped_pareto_front", str(e)[:500])
        return front
    fig = np.atleast_1d(ax).ravel()[0].figure
    fig.set_size_inches(9, 6)
    fig.tight_layout()
    client.log_figure(run_id, fig, FRONT_PNG)
    plots.close(fig)
    return front
