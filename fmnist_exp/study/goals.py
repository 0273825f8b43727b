"""What a study trades and what a model must fit: its objectives (validation accuracy up, serving
costs down), its budgets (constraints), the rule that picks the candidate, and what promotion asks
of a cheaper candidate. Read from the study file's keys::

    objectives: [val_accuracy, mmacs_per_image]   # or the single `objective: val_accuracy`
    constraints: {ms_per_image_b1: 2.0, size_mb: 1.0}
    choose: most_accurate_feasible
    promote: {non_inferior_margin: 0.003}

A cost is one of model.cost.COSTS. A constraint holds when the cost is at most its bound; Optuna's
convention is a value ``cost - bound``, feasible when <= 0 (``Trial.set_constraint``; Optuna 5
deprecates the samplers' ``constraints_func`` for it). A file with none of these keys is a plain
study: one objective, no constraint, exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna

from ..metrics import VAL_ACC
from ..model.cost import COSTS, DETERMINISTIC, as_read
from ..params import ConfigError

GOAL_KEYS = ("objective", "objectives", "constraints", "choose", "promote")
CHOOSE = {
    "most_accurate_feasible": "the highest validation accuracy among feasible complete trials",
    "cheapest_feasible": "the lowest first cost objective among feasible complete trials (ties: more accurate)",
}
COSTS_ATTR, OVER_BUDGET_ATTR = "costs", "over_budget"  # trial user attributes
TWIN_ATTR = "same_as_trial"  # a trial whose point an earlier trial trained (study/objective.py)
# on the candidate's run, for the promotion gate (registry/gate.py): what the study asks of it
BUDGET_VERDICT_TAG, MARGIN_TAG, CHEAPER_ON_TAG = "budget_verdict", "promote_non_inferior_margin", "promote_cheaper_on"
OVER = "over budget"  # how a broken verdict starts
BIG_MARGIN = 0.05  # a share of test images; above this it was most likely written in points


@dataclass(frozen=True)
class Goals:
    objectives: tuple[str, ...] = (VAL_ACC,)  # validation accuracy first, then costs to minimise
    constraints: dict[str, float] = field(default_factory=dict)  # cost -> its bound
    choose: str = "most_accurate_feasible"
    non_inferior_margin: float | None = None  # promote: a cheaper candidate may be this much less accurate

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    @property
    def costs(self) -> tuple[str, ...]:
        """The cost objectives, in the file's order."""
        return self.objectives[1:]

    @property
    def cheaper_on(self) -> str:
        """The cost "cheaper" is judged on at promotion: the first cost objective, else MACs per image."""
        return self.costs[0] if self.costs else "mmacs_per_image"

    @property
    def timed(self) -> bool:
        """Whether a trial's serving times are read: a cost objective or bound on them (not DETERMINISTIC)."""
        return any(name not in DETERMINISTIC for name in (*self.costs, *self.constraints))

    @property
    def directions(self) -> list[str]:
        return ["maximize", *["minimize"] * len(self.costs)]

    @property
    def plain(self) -> bool:
        """One objective, no budget: the study runs as studies always did."""
        return not self.multi and not self.constraints

    def static_constraints(self) -> dict[str, float]:
        """The bounds known before training (on costs of the built, untrained network)."""
        return {k: v for k, v in self.constraints.items() if k in DETERMINISTIC}

    def excess(self, costs: dict[str, float]) -> dict[str, float]:
        """``cost - bound`` per constraint whose cost is known (feasible when all <= 0)."""
        return {k: costs[k] - bound for k, bound in self.constraints.items() if k in costs}

    def broken(self, costs: dict[str, float]) -> list[str]:
        """The bounds ``costs`` break, each said with both numbers."""
        return [f"{k} {costs[k]:.4g} > {self.constraints[k]:g}" for k, e in self.excess(costs).items() if e > 0]

    def verdict(self, costs: dict[str, float]) -> str:
        """One line: within budget, or which bounds are broken. Every constraint's cost must be known."""
        missing = sorted(set(self.constraints) - set(costs))
        if missing:
            return f"{OVER}: cost not measured ({', '.join(missing)})"
        broken = self.broken(costs)
        if broken:
            return f"{OVER}: " + "; ".join(broken)
        return "within budget: " + ", ".join(f"{k} {costs[k]:.4g} <= {b:g}" for k, b in self.constraints.items())

    def candidate_tags(self, costs: dict[str, float]) -> dict[str, str]:
        """What the gate needs to know of the study, on the candidate's run: its verdict on the
        measured ``costs`` and the promotion margin. Empty for a study that asks neither."""
        tags = {BUDGET_VERDICT_TAG: self.verdict(costs)} if self.constraints else {}
        if self.non_inferior_margin is not None:
            tags.update({MARGIN_TAG: f"{self.non_inferior_margin:g}", CHEAPER_ON_TAG: self.cheaper_on})
        return tags

    def flat(self) -> dict[str, Any]:
        """For the parent run's parameters."""
        out: dict[str, Any] = {"objectives": ",".join(self.objectives), "choose": self.choose}
        out.update({f"constraint_{k}": v for k, v in self.constraints.items()})
        if self.non_inferior_margin is not None:
            out["promote_non_inferior_margin"] = self.non_inferior_margin
        return out


def within(excess: dict[str, float]) -> bool:
    return all(v <= 0 for v in excess.values())


def recorded_costs(trial: optuna.trial.FrozenTrial) -> dict[str, float]:
    """The costs a trial recorded (its COSTS_ATTR), as this code measures them (model/cost.py as_read: a study
    resumed across 058a7e1 holds sizes that counted an optimizer); none where it recorded none."""
    return as_read(trial.user_attrs.get(COSTS_ATTR) or {})


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """Optuna's rule: every constraint value the trial set is <= 0 (no constraint: feasible)."""
    return within(trial.constraints)


def parse_goals(raw: dict[str, Any], where: str) -> Goals:
    """The goal keys of a study file, refused with the reason before any work."""
    if "objective" in raw and "objectives" in raw:
        raise ConfigError(f"{where}: give either objective (one) or objectives (a list), not both")
    objectives = raw.get("objectives", [raw.get("objective", VAL_ACC)])
    if not isinstance(objectives, list) or not objectives or objectives[0] != VAL_ACC:
        raise ConfigError(f"{where}: objectives must be a list starting with {VAL_ACC} (maximised), then costs "
                          f"to minimise from {', '.join(COSTS)}; got {objectives!r}")
    for name in objectives[1:]:
        if name not in COSTS:
            raise ConfigError(f"{where}: objective {name!r} is not produced; after {VAL_ACC} name costs from "
                              f"{', '.join(COSTS)}")
    if len(set(objectives)) != len(objectives):
        raise ConfigError(f"{where}: objectives {objectives} names one twice")
    constraints = raw.get("constraints") or {}
    if not isinstance(constraints, dict):
        raise ConfigError(f"{where}: constraints must map costs to bounds, e.g. {{size_mb: 1.0}}; got {constraints!r}")
    for name, bound in constraints.items():
        if name not in COSTS:
            raise ConfigError(f"{where}: constraint {name!r} is not a cost; known: {', '.join(COSTS)}")
        if isinstance(bound, bool) or not isinstance(bound, int | float) or bound <= 0:
            raise ConfigError(f"{where}: constraint {name}: {bound!r} must be a positive number (the most it may cost)")
    choose = raw.get("choose", "most_accurate_feasible")
    if choose not in CHOOSE:
        raise ConfigError(f"{where}: choose {choose!r}: use one of {', '.join(CHOOSE)}")
    if choose == "cheapest_feasible" and len(objectives) < 2:
        raise ConfigError(f"{where}: choose cheapest_feasible needs a cost objective (objectives: [{VAL_ACC}, <cost>])")
    return Goals(tuple(objectives), {k: float(v) for k, v in constraints.items()}, choose,
                 _margin(raw.get("promote"), where))


def _margin(promote: Any, where: str) -> float | None:
    if promote is None:
        return None
    if not isinstance(promote, dict) or set(promote) != {"non_inferior_margin"}:
        raise ConfigError(f"{where}: promote takes one key, non_inferior_margin (e.g. {{non_inferior_margin: 0.003}});"
                          f" got {promote!r}")
    m = promote["non_inferior_margin"]
    if isinstance(m, bool) or not isinstance(m, int | float) or not 0 < m < BIG_MARGIN:
        raise ConfigError(f"{where}: promote.non_inferior_margin={m!r}: a share of test images above 0 and below "
                          f"{BIG_MARGIN} (0.003 is 0.3 points)")
    return float(m)


def check_search(goals: Goals, pruner: str, sampler: str, constrained_samplers: tuple[str, ...], where: str) -> None:
    """What Optuna cannot do with these goals: prune several objectives, or constrain a sampler that
    ignores constraint values."""
    if goals.multi and pruner != "none":
        raise ConfigError(f"{where}: pruner {pruner!r} with {len(goals.objectives)} objectives: Optuna prunes "
                          "single-objective studies only (a trial reports one value per epoch); use "
                          "pruner: {type: none}")
    if goals.constraints and sampler not in constrained_samplers:
        raise ConfigError(f"{where}: sampler {sampler!r} ignores constraints; use one of "
                          f"{', '.join(constrained_samplers)}")


def choose(study: optuna.Study, goals: Goals) -> optuna.trial.FrozenTrial | None:
    """The trial the study file's ``choose`` rule picks (None: no complete trial, or none feasible).
    A plain study takes Optuna's best trial, as it always did. Validation accuracy only, never test."""
    if goals.plain:
        try:
            return study.best_trial
        except ValueError:
            return None
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)) if feasible(t)]
    if not done:
        return None
    if goals.choose == "cheapest_feasible":
        return min(done, key=lambda t: (recorded_costs(t)[goals.cheaper_on], -t.values[0], t.number))
    return max(done, key=lambda t: (t.values[0], -t.number))  # ties: the earlier trial, as Optuna's best_trial
