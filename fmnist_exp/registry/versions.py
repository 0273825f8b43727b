"""A study's candidate in the registry: scored once on the test split, registered through the gate,
tagged with everything a rebuild needs, linked from the study's parent run, and a leaderboard."""

from __future__ import annotations

import json
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ..data import Dataset, recorded
from ..metrics import TEST_ACC, TEST_F1, VAL_FINAL_ACC
from ..model.cost import Cost
from ..params import FAMILIES
from ..scale.storage import StorageURL
from ..study.candidate import Candidate
from ..study.goals import BUDGET_VERDICT_TAG
from ..study.summary import Gain, Registration
from ..train import lineage, tracking
from .gate import CostVerdict, register

REPRODUCE_TAG = "reproduce_command"


def version_tags(source_run_id: str, parent_run_id: str | None = None) -> dict[str, str]:
    """What a registered version needs to be rebuilt, read from the run it was registered from
    (and the study's parent run, for the Optuna storage): code version, data digests and where
    the data came from. The study, trial and test accuracy tags are the registry's own."""
    client = MlflowClient()
    run = client.get_run(source_run_id)
    params, data = run.data.params, recorded(run.data.params)
    tags = {**lineage.recorded_code_version(run), "data_sha256": params.get("data_sha256", lineage.UNKNOWN),
            "data_source": params.get("data_source", lineage.UNKNOWN),
            "data_name": data["data_name"], "data_shape": data["data_shape"]}
    tags.update({f"data_digest_{ctx}": digest for ctx, digest in lineage.split_digests(run).items()})
    # what it costs to serve (model/cost.py), as its run measured it: the registry page says it without a click
    tags.update({k: f"{v:.6g}" for k, v in run.data.metrics.items() if k.startswith("cost_")})
    if parent_run_id:
        storage = client.get_run(parent_run_id).data.params.get("optuna_storage")
        if storage:
            tags["optuna_storage"] = str(StorageURL.parse(storage))  # logged redacted; never trust that twice
    return tags


def reproduce_command(name: str, version: int | str) -> str:
    return f"mlflow run . -e reproduce -P model_uri=models:/{name}/{version}"


def tag_reproduce_command(name: str, version: int | str) -> None:
    """Set once the version number exists (registration assigns it)."""
    MlflowClient().set_model_version_tag(name, str(version), REPRODUCE_TAG, reproduce_command(name, version))


def leaderboard(experiment_id: str, data_sha256: str) -> pd.DataFrame:
    """Per family, the scored run on the same images (``data_sha256``) with the best validation accuracy (never
    chosen by test accuracy: a study's seed and reference runs are scored on test too), in the study's experiment,
    the single runs' experiments fmnist-<family> and MLflow's Default (where `mlflow run` files a run given no
    --experiment-name), those that exist; rows are shown best test accuracy first."""
    client = MlflowClient()
    names = [*(f"fmnist-{f}" for f in FAMILIES), "Default"]
    found = (client.get_experiment_by_name(name) for name in names)
    ids = [experiment_id] + [e.experiment_id for e in found if e is not None]
    rows = []
    for family in FAMILIES:
        runs = mlflow.search_runs(
            list(dict.fromkeys(ids)), filter_string=f"tags.family = '{family}' and metrics.{TEST_ACC} > 0 and "
                                                    f"params.data_sha256 = '{data_sha256}'",
            order_by=[f"metrics.{VAL_FINAL_ACC} DESC"], max_results=1,
        )
        if len(runs):
            r = runs.iloc[0]
            rows.append({"family": family, "run_id": r["run_id"], "run_name": r.get("tags.mlflow.runName"),
                         "arch": r.get("tags.arch"), VAL_FINAL_ACC: r.get(f"metrics.{VAL_FINAL_ACC}"),
                         TEST_ACC: r[f"metrics.{TEST_ACC}"], TEST_F1: r.get(f"metrics.{TEST_F1}")})
    return pd.DataFrame(rows).sort_values(TEST_ACC, ascending=False) if rows else pd.DataFrame(rows)


def already_registered(name: str, run_id: str):
    try:
        found = MlflowClient().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        return None
    return found[0] if found else None


MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # on a LoggedModel: the versions registered from it (MLflow's own)
LINKS_TO_TAG = "links_to_model_id"


def link_model(run_id: str, model_uri: str, name: str, version: int | str) -> None:
    """Show the registered model ``name`` ``version`` (logged by a nested run: the study's
    candidate, ``model_uri``) on the study's parent run ``run_id``, in both of MLflow's views.

    The run page lists the run's outputs, so the candidate's LoggedModel becomes one. The runs
    table's Models column reads no outputs (MLflow 3.17's UI, behind a feature flag that is off):
    it lists the LoggedModels whose *source* run is the row's run, named by the versions in their
    ``mlflow.modelVersions`` tag, the versions registered with that run id, and the MLflow 2
    ``mlflow.log-model.history`` tag. So the parent also gets a LoggedModel of its own that holds
    no files and stands for the version: named after the registered model, tagged with it and with
    the candidate's model id, READY. The version keeps its own source run (the candidate's), which
    `reproduce` rebuilds from."""
    if not model_uri.startswith("models:/m-"):  # older or registry URIs name no LoggedModel to link
        return
    model_id = model_uri.removeprefix("models:/")
    client = MlflowClient()
    client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])
    stand_in = client.create_logged_model(
        client.get_run(run_id).info.experiment_id, name=name, source_run_id=run_id, model_type="registered version",
        tags={MODEL_VERSIONS_TAG: json.dumps([{"name": name, "version": str(version)}]), LINKS_TO_TAG: model_id,
              "registered_model_uri": f"models:/{name}/{version}"})
    client.finalize_logged_model(stand_in.model_id, LoggedModelStatus.READY)


def register_candidate(cand: Candidate, ds: Dataset, *, model_name: str, study_name: str, family: str,
                       parent_run_id: str, promote_alpha: float) -> Registration:
    """Score the candidate on the test split once, register it and let the gate decide its alias."""
    client = MlflowClient()
    cand.score(ds)

    def registration(version: int, alias: str, decision: str, **gate: Any) -> Registration:
        return Registration(model_name=model_name, best_trial=cand.trial_number, best_val_accuracy=cand.val_accuracy,
                            best_run_id=cand.run_id, candidate=cand.origin, test_accuracy=cand.test_metrics[TEST_ACC],
                            test_macro_f1=cand.test_metrics[TEST_F1], registered_version=version, alias=alias,
                            decision=decision, **gate)

    if (mv := already_registered(model_name, cand.run_id)) is not None:
        # A resumed study whose best did not change: nothing new to register.
        aliases = client.get_model_version(model_name, mv.version).aliases  # search results omit aliases
        decision = f"unchanged: best model already registered as v{mv.version}"
        client.set_tag(parent_run_id, "registration", decision)
        link_model(parent_run_id, cand.classifier_uri, model_name, mv.version)
        return registration(int(mv.version), ",".join(aliases) or "none", decision)
    tags = {"study": study_name, "trial_number": str(cand.trial_number), "val_accuracy": f"{cand.val_accuracy:.6f}",
            "source_run_id": cand.run_id, "family": family, "candidate": cand.origin,
            **version_tags(cand.run_id, parent_run_id)}
    gate = register(cand.classifier_uri, model_name, ds, tags, promote_alpha=promote_alpha, labels=cand.test_labels,
                    budget=CostVerdict.of_run(cand.run_id))  # as study/finals.py check_budget recorded it
    tag_reproduce_command(model_name, gate.version)
    link_model(parent_run_id, cand.classifier_uri, model_name, gate.version)
    gate_fields = gate.comparison.fields("gate_", "candidate", "champion") if gate.comparison else {}
    tracking.record(parent_run_id, {"best_val_accuracy": cand.val_accuracy,
                                    "best_test_accuracy": cand.test_metrics[TEST_ACC], **gate_fields},
                    {"registration": gate.decision, "gate_decision": gate.alias,
                     "registered_model": f"{model_name}/{gate.version}"})
    board = leaderboard(client.get_run(parent_run_id).info.experiment_id, ds.sha256)
    client.log_text(parent_run_id, board.to_csv(index=False), "leaderboard.csv")
    return registration(gate.version, gate.alias, gate.decision,
                        previous_champion_version=gate.previous_champion_version, gate=gate.comparison)


def record_evidence(study_name: str, registration: Registration, gain: Gain | None) -> None:
    """Put the study's evidence on the version itself, as tags and as its description, so the
    registry page alone answers "why this model?": the gain over the study's reference (accuracy
    of both, difference, 95% CI, McNemar p, discordant counts, reference run) and the gate's
    comparison with the champion it met, if any. Idempotent: a resumed study writes the same."""
    client = MlflowClient()
    name, version = registration.model_name, registration.registered_version
    tags: dict[str, str] = {}
    if gain is not None and gain.comparison is not None:
        tags = {k: f"{v:.6g}" for k, v in gain.comparison.fields("gain_", "candidate", "reference").items()}
        tags.update(gain_reference=gain.reference, gain_reference_run_id=str(gain.reference_run_id),
                    gain=gain.comparison.describe())
        if gain.reference_epochs is not None:
            tags["gain_reference_epochs"] = str(gain.reference_epochs)
        if gain.reference_at_chance:
            tags["gain_reference_at_chance"] = "true"
    elif gain is not None:
        tags = {"gain_reference": gain.reference}
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    version_tags_now = client.get_model_version(name, str(version)).tags
    decision = version_tags_now.get("alias_decision", registration.decision)
    served = Cost.from_metrics({k: float(v) for k, v in version_tags_now.items() if k.startswith("cost_")})
    client.update_model_version(name, str(version),
                                description=describe(study_name, registration, gain, decision, served,
                                                     version_tags_now.get(BUDGET_VERDICT_TAG)))


def describe(study_name: str, r: Registration, gain: Gain | None, decision: str, served: Cost | None = None,
             budget_verdict: str | None = None) -> str:
    """The version's description (markdown, as the registry page renders it)."""
    lines = [f"**Why this model.** Study `{study_name}`'s {r.candidate} "
             f"(trial {r.best_trial}, validation accuracy {r.best_val_accuracy:.4f}, chosen by validation), "
             f"test accuracy {r.test_accuracy:.4f} on the test split.", ""]
    if gain is None or gain.comparison is None:
        lines.append("**Gain over the study's reference:** not measured (`reference: off`).")
    else:
        g = gain.comparison
        trained = "" if gain.reference_epochs is None else f", {gain.reference_epochs} epochs"
        over = "Over the study's reference, at chance (not a gain)" if gain.reference_at_chance else \
            "Gain over the study's reference"
        lines.append(f"**{over}** ({gain.reference}, run `{gain.reference_run_id}`"
                     f"{trained}): test accuracy {g.acc_a:.4f} against {g.acc_b:.4f}, {g.describe()}.")
    lines += ["", f"**Promotion gate:** {decision}"]
    if budget_verdict:
        lines += ["", f"**Study's budget:** {budget_verdict}."]
    if served is not None:
        lines += ["", f"**Serving cost:** {served.mmacs_per_image:.1f} M multiply-accumulates per image, "
                      f"{served.params:,} parameters, {served.size_mb:.2f} MB of weights; "
                      f"{served.ms_per_image_b1:.2f} ms per image at batch 1 and {served.ms_per_image_b256:.3f} ms "
                      "at batch 256, measured in-process on the machine that trained or registered it (tags cost_*)."]
    return "\n".join(lines)
