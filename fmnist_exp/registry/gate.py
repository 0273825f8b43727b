"""The promotion gate: register a version and decide, by a paired test, whether it becomes @champion.

Alias rule (the promotion gate): ``champion`` moves to the new version only when there is no
champion yet, or when the new version is better on the same test images by an exact McNemar
test (two-sided p < ``promote_alpha``) AND gets more of them right. Both models answer the
10,000 test images at decision time; two logged numbers are never compared, because on 10,000
images a raw difference of a few tenths of a point is noise. Otherwise the new version becomes
``challenger`` and the version's tags say why.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .. import stats
from ..data import Dataset
from ..metrics import TEST_ACC
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


def register(model_uri: str, name: str, ds: Dataset, tags: dict[str, str], *, promote_alpha: float,
             labels: np.ndarray | None = None) -> Decision:
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
    version_tags = {**tags, TEST_ACC: f"{accuracy:.6f}", "promote_alpha": f"{promote_alpha:g}",
                    **{k: f"{v:.6g}" for k, v in gate.items()}}
    if champ is not None and cmp is not None:
        version_tags.update(champion_version=champ.version, gate_comparison=cmp.describe())
    mv = mlflow.register_model(model_uri, name, tags=version_tags)
    alias = CHAMPION if wins else CHALLENGER
    client.set_registered_model_alias(name, alias, mv.version)
    against = f"; against champion v{champ.version}: {cmp.describe()}" if champ and cmp else ""
    decision = f"v{mv.version} is @{alias}: {why}" + (against or f" (test accuracy {accuracy:.4f})")
    client.set_model_version_tag(name, mv.version, "alias_decision", decision)
    return Decision(int(mv.version), alias, decision, int(champ.version) if champ else None, cmp)
