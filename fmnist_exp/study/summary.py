"""What a study invocation reports: counts, the registration, the final seeds, the gain over the
reference, as typed values; ``flat()`` is the one JSON line the command prints (stable keys)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlflow

from ..scale.health import shown_uri
from ..stats import PairedComparison

ENSEMBLE = "ensemble"  # SeedStats.registered when the seeds' average is registered
DISTILLED = "distilled"  # SeedStats.registered when a network distilled from that average is
DISTILL_VS_ENSEMBLE, DISTILL_VS_SEED = "distilled_vs_ensemble_", "distilled_vs_seed_"  # metric prefixes
DISTILL_STUDENT = "distill_student"  # tag: what the distilled network changed of the final recipe (final.student)


@dataclass(frozen=True)
class Counts:
    """The study's trials by state, and the epochs pruning saved (study/artifacts.py count_trials)."""

    study_name: str
    experiment_id: str
    n_trials_total: int
    n_trials_this_run: int  # counted by owner: other workers may add trials meanwhile
    n_complete: int
    n_pruned: int
    n_failed: int
    epochs_run: int  # epochs the finished trials trained
    epochs_budget: int  # what they would have trained without pruning


@dataclass(frozen=True)
class Registration:
    """The candidate and what the registry made of it."""

    model_name: str
    best_trial: int
    best_val_accuracy: float
    best_run_id: str
    candidate: str  # its origin: best trial, final retrain, ensemble of final retrains
    test_accuracy: float
    test_macro_f1: float
    registered_version: int
    alias: str
    decision: str
    previous_champion_version: int | None = None  # None: no champion before, or nothing new registered
    gate: PairedComparison | None = None  # the candidate against that champion

    def flat(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("model_name", "best_trial", "best_val_accuracy", "best_run_id",
                                              "candidate", "test_accuracy", "test_macro_f1", "registered_version",
                                              "alias", "decision")}
        if self.decision.startswith("unchanged"):
            return out
        out["previous_champion_version"] = self.previous_champion_version or 0
        return {**out, **(self.gate.fields("gate_", "candidate", "champion") if self.gate else {})}


@dataclass(frozen=True)
class SeedStats:
    """A final retrain over several seeds: the spread a seed alone makes, and what was registered."""

    seeds: list[int]
    val_accuracy: list[float]
    test_accuracy: list[float]
    mean: float
    std: float
    registered: int | str  # the seed registered, or ENSEMBLE
    ensemble_gain: PairedComparison | None = None  # the average against the best-validated seed
    ensemble_gain_seed: int | None = None
    distilled_vs_ensemble: PairedComparison | None = None  # final.distill: the student against its teacher
    distilled_vs_seed: PairedComparison | None = None  # ... and against the best-validated seed
    distill_student: str = ""  # what the distilled network changed of the final recipe (final.student)

    def flat(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "final_seeds": self.seeds, "final_seeds_val_accuracy": self.val_accuracy,
            "final_seeds_test_accuracy": self.test_accuracy, "final_seeds_test_accuracy_mean": self.mean,
            "final_seeds_test_accuracy_std": self.std, "final_seed_registered": self.registered}
        if self.ensemble_gain is not None:
            out.update({**self.ensemble_gain.fields("ensemble_gain_", "ensemble", "seed"),
                        "ensemble_gain_seed": self.ensemble_gain_seed, "ensemble_gain": self.ensemble_gain.describe()})
        for prefix, other, cmp in ((DISTILL_VS_ENSEMBLE, "ensemble", self.distilled_vs_ensemble),
                                   (DISTILL_VS_SEED, "seed", self.distilled_vs_seed)):
            if cmp is not None:
                out.update({**cmp.fields(prefix, "distilled", other), prefix.rstrip("_"): cmp.describe()})
        if self.distill_student:
            out[DISTILL_STUDENT] = self.distill_student
        return out


@dataclass(frozen=True)
class Gain:
    """What the study bought over its reference, on the same test images (None: ``reference: off``)."""

    reference: str  # its description, or "off"
    reference_run_id: str | None = None
    reference_epochs: int | None = None  # a trained reference's length
    comparison: PairedComparison | None = None
    reference_at_chance: bool = False  # the reference learned nothing (its run's at_chance): no gain over it

    @property
    def over(self) -> str:
        """What the comparison is, in words: a gain, or only a difference from a reference that learned nothing."""
        return "over a reference at chance (not a gain)," if self.reference_at_chance else "gain over"

    def flat(self) -> dict[str, Any]:
        if self.comparison is None:
            return {"reference": self.reference}
        length = {} if self.reference_epochs is None else {"reference_epochs": self.reference_epochs}
        chance = {"reference_at_chance": True} if self.reference_at_chance else {}
        return {"reference": self.reference, "reference_run_id": self.reference_run_id, **length, **chance,
                **self.comparison.fields("gain_", "candidate", "reference"), "gain": self.comparison.describe()}


@dataclass(frozen=True)
class StudySummary:
    counts: Counts
    model_name: str
    registration: Registration | None = None  # None: not registered (register=false, or no complete trial)
    seeds: SeedStats | None = None
    gain: Gain | None = None

    def flat(self) -> dict[str, Any]:
        out: dict[str, Any] = {**vars(self.counts), "model_name": self.model_name}
        for part in (self.registration, self.seeds, self.gain):
            if part is not None:
                out.update(part.flat())
        return out


def print_summary(s: StudySummary) -> None:
    """The end of a study on the console: counts, what was registered, seeds, the gain, where to look."""
    uri = shown_uri(mlflow.get_tracking_uri())
    ui = uri if uri.startswith("http") else "http://127.0.0.1:5000"
    c = s.counts
    lines = [f"[tune] study {c.study_name!r}: {c.n_complete} complete, {c.n_pruned} pruned, "
             f"{c.n_failed} failed trials in total"]
    r = s.registration
    if r is not None:
        lines += [
            f"[tune] best trial {r.best_trial}" + ("" if r.candidate == "best trial" else f"'s {r.candidate}")
            + f": val_accuracy={r.best_val_accuracy:.4f} test_accuracy={r.test_accuracy:.4f}",
            f"[tune] registered {r.model_name} version {r.registered_version} as @{r.alias} ({r.decision})",
            f"[tune] load it with models:/{r.model_name}@champion",
        ]
    if s.seeds is not None:
        each = ", ".join(f"seed {seed} {t:.4f} (val {v:.4f})"
                         for seed, t, v in zip(s.seeds.seeds, s.seeds.test_accuracy, s.seeds.val_accuracy, strict=True))
        student = f" ({s.seeds.distill_student})" if s.seeds.distill_student else ""
        registered = {ENSEMBLE: "registered: their average (ensemble)",
                      DISTILLED: f"registered: one network{student} distilled from their average"}.get(
            str(s.seeds.registered), f"registered seed {s.seeds.registered} (best validation accuracy)")
        lines.append(f"[tune] final retrain over {len(s.seeds.seeds)} seeds: test accuracy mean {s.seeds.mean:.4f}, "
                     f"sd {s.seeds.std:.4f} ({each}); {registered}")
    if s.gain is not None and s.gain.comparison is None:
        lines.append("[tune] reference: off (no gain measured)")
    elif s.gain is not None and s.gain.comparison is not None:
        g = s.gain.comparison
        lines.append(f"[tune] {s.gain.over} {s.gain.reference} (run {s.gain.reference_run_id}): test accuracy "
                     f"{g.acc_a:.4f} vs {g.acc_b:.4f}, {g.describe()}")
    if not uri.startswith("http"):
        lines.append(f"[tune] open the UI: mlflow ui --backend-store-uri {uri} --port 5000")
    lines.append(f"[tune] this experiment's runs: {ui}/#/experiments/{c.experiment_id}/runs"
                 f"?workflowType=machine_learning")
    print("\n".join(lines), flush=True)
