"""The promotion gate: register a version and decide, by a paired test, whether it becomes @champion.

Alias rule (the promotion gate): ``champion`` moves to the new version only when there is no
champion yet, or when the new version is better on the same test images by an exact McNemar
test (two-sided p < ``promote_alpha``) AND gets more of them right. Both models answer the
10,000 test images at decision time; two logged numbers are never compared, because on 10,000
images a raw difference of a few tenths of a point is noise. Otherwise the new version becomes
``challenger`` and the version's tags say why.

A study with a budget (study/goals.py) adds two rules. A candidate whose measured cost breaks the
budget never becomes champion, whatever its accuracy (``budget_verdict`` on the version says which
bound). A study that names ``promote: {non_inferior_margin: m}`` also promotes a candidate that the
rule above turned down when it costs less than the champion (on the study's first cost objective,
else MACs per image) and is not worse by more than ``m``: a one-sided paired test on the same test
images at ``promote_alpha`` (stats.non_inferiority), recorded on the version as ``noninf_*``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .. import stats
from ..data import Dataset
from ..metrics import TEST_ACC
from ..model.cost import as_read
from ..study.candidate import cost_metrics
from ..study.goals import BUDGET_VERDICT_TAG, CHEAPER_ON_TAG, MARGIN_TAG, OVER
from ..study.setup import check_champion_data
from ..train.evaluate import classifier_answers

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class Decision:
    """What the gate made of a new version."""

    version: int
    alias: str
    decision: str  # one sentence: the alias and why
    previous_champion_version: int | None
    comparison: stats.PairedComparison | None  # the new version against that champion
    non_inferiority: stats.NonInferiority | None = None  # a cheaper candidate against that champion


@dataclass(frozen=True)
class CostVerdict:
    """What the candidate's study asks at promotion: its verdict on the candidate's measured cost
    (None: no budget), the non-inferiority margin (None: not asked), the cost "cheaper" is judged on,
    and the candidate's measured costs."""

    verdict: str | None = None
    non_inferior_margin: float | None = None
    cheaper_on: str = "mmacs_per_image"
    costs: dict[str, float] = field(default_factory=dict)

    @property
    def over(self) -> bool:
        return self.verdict is not None and self.verdict.startswith(OVER)

    @classmethod
    def of_run(cls, run_id: str) -> CostVerdict:
        """As the study recorded it on the candidate's run (study/finals.py check_budget)."""
        tags = MlflowClient().get_run(run_id).data.tags
        margin = tags.get(MARGIN_TAG)
        return cls(tags.get(BUDGET_VERDICT_TAG), float(margin) if margin else None,
                   tags.get(CHEAPER_ON_TAG, cls.cheaper_on), cost_metrics(run_id))


def champion_now(client: MlflowClient, name: str):
    """The champion as the registry says now: None only when there is none (an error reading it is raised,
    not taken for "no champion")."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):  # no model, or no such alias
            return None
        raise


def promotes(cmp: stats.PairedComparison | None, promote_alpha: float) -> tuple[bool, str]:
    """The gate: (moves @champion?, why). ``cmp`` is candidate (a) against champion (b)."""
    if cmp is None:
        return True, "no champion before"
    if cmp.b <= cmp.c:
        return False, "not more test images right than the champion"
    if cmp.p_value >= promote_alpha:
        return False, f"not distinguishable from noise (p >= promote_alpha={promote_alpha:g})"
    return True, f"better on the same test images (p < promote_alpha={promote_alpha:g})"


def champion_cost(champ, name: str) -> float | None:
    """The champion's cost ``name``: its version tags ``cost_*``, else its source run's metrics (as this code
    measures them: model/cost.py as_read)."""
    tagged = {k.removeprefix("cost_"): float(v) for k, v in champ.tags.items() if k.startswith("cost_")}
    if name in tagged:
        return as_read(tagged)[name]
    return cost_metrics(champ.run_id).get(name) if champ.run_id else None


def cheaper_and_non_inferior(budget: CostVerdict, champ, y: np.ndarray, labels: np.ndarray, champ_labels: np.ndarray,
                             promote_alpha: float) -> tuple[bool, str, stats.NonInferiority | None, dict[str, str]]:
    """The second way to the champion alias: (promotes?, why, the test, tags for the version)."""
    assert budget.non_inferior_margin is not None
    on = budget.cheaper_on
    mine, theirs = budget.costs.get(on), champion_cost(champ, on)
    tags = {"cheaper_on": on, "noninf_margin": f"{budget.non_inferior_margin:g}"}
    if mine is None or theirs is None:
        whose = "the candidate" if mine is None else f"champion v{champ.version}"
        return False, f"cost {on} of {whose} unknown, so not compared for non-inferiority", None, tags
    tags.update(candidate_cost=f"{mine:.6g}", champion_cost=f"{theirs:.6g}")
    if not mine < theirs:
        return False, f"not cheaper than the champion ({on} {mine:.4g} >= {theirs:.4g})", None, tags
    ni = stats.non_inferiority(y, labels, champ_labels, margin=budget.non_inferior_margin, alpha=promote_alpha)
    tags.update({k: f"{v:.6g}" for k, v in ni.fields("noninf_").items()})
    tags.update(noninf_test="one-sided Tango score test, paired on the test images", non_inferiority=ni.describe())
    cheaper = f"cheaper ({on} {mine:.4g} < champion's {theirs:.4g})"
    if ni.non_inferior:
        return True, f"{cheaper} and {ni.describe()}", ni, tags
    return False, f"{cheaper} but {ni.describe()}", ni, tags


def register(model_uri: str, name: str, ds: Dataset, tags: dict[str, str], *, promote_alpha: float,
             labels: np.ndarray | None = None, budget: CostVerdict | None = None) -> Decision:
    """Register ``model_uri`` (a pyfunc classifier) as a new version and decide champion vs challenger.

    ``labels`` are the candidate's test answers when the caller has them already; the current
    champion is always asked on the spot. ``budget``: what the candidate's study asks (None: nothing).
    """
    client = MlflowClient()
    if labels is None:
        labels = classifier_answers(model_uri, ds.x_test)["label"].to_numpy()
    accuracy = float(np.mean(labels == ds.y_test))
    champ = champion_now(client, name)  # an error raises: read as "no champion", any candidate would win
    budget = budget or CostVerdict()
    cmp, champ_labels = None, None
    check_champion_data(name, ds)  # a study checks it before it trains; a champion may have moved since
    if champ is not None:  # by version, not alias: the comparison is with exactly this model
        champ_labels = classifier_answers(f"models:/{name}/{champ.version}", ds.x_test)["label"].to_numpy()
        cmp = stats.compare(ds.y_test, labels, champ_labels)
    wins, why = promotes(cmp, promote_alpha)
    ni, budget_tags = None, {BUDGET_VERDICT_TAG: budget.verdict} if budget.verdict else {}
    if budget.over:
        wins, why = False, f"{budget.verdict} (a version over its study's budget is never champion)"
    elif not wins and champ_labels is not None and budget.non_inferior_margin is not None:
        wins, cheap_why, ni, more = cheaper_and_non_inferior(budget, champ, ds.y_test, labels, champ_labels,
                                                             promote_alpha)
        why = cheap_why if wins else f"{why}; {cheap_why}"
        budget_tags.update(more)
    gate = cmp.fields("gate_", "candidate", "champion") if cmp else {}
    version_tags = {**tags, TEST_ACC: f"{accuracy:.6f}", "promote_alpha": f"{promote_alpha:g}",
                    **{k: f"{v:.6g}" for k, v in gate.items()}, **budget_tags}
    if champ is not None and cmp is not None:
        version_tags.update(champion_version=champ.version, gate_comparison=cmp.describe())
    mv = mlflow.register_model(model_uri, name, tags=version_tags)
    now = champion_now(client, name) if wins else None  # a hand move (promote) while this was decided
    if wins and (now and now.version) != (champ and champ.version):
        wins, why = False, (f"{why}, but @champion moved to v{now and now.version} while this was decided against "
                            f"{f'v{champ.version}' if champ else 'no champion'}: left as challenger (promote it by "
                            "hand if it should still win)")
    alias = CHAMPION if wins else CHALLENGER
    client.set_registered_model_alias(name, alias, mv.version)
    against = f"; against champion v{champ.version}: {cmp.describe()}" if champ and cmp else ""
    decision = f"v{mv.version} is @{alias}: {why}" + (against or f" (test accuracy {accuracy:.4f})")
    client.set_model_version_tag(name, mv.version, "alias_decision", decision)
    return Decision(int(mv.version), alias, decision, int(champ.version) if champ else None, cmp, ni)
