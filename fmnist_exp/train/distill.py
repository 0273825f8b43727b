"""Distillation: a network fitted to a logged model's answers (its teacher) mixed with the labels.

``train_in_run(teacher=Teacher(...))`` trains so; the run records the teacher's run and model and
the weight, so ``reproduce`` can train the same student from the same teacher. A study's
``final.distill`` makes the teacher the average of its final seeds (study/finals.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DISTILL_WEIGHT, DISTILLED_FROM, TEACHER_URI = "distill_weight", "distilled_from", "teacher_model_uri"


def distill_targets(teacher_probs: np.ndarray, y: np.ndarray, weight: float) -> np.ndarray:
    """What a student is fitted to: ``weight`` of the teacher's class probabilities and the rest of
    the one-hot label (Hinton et al.'s soft and hard targets, at temperature 1: the teacher answers
    with probabilities, not logits). The loss still smooths them (``label_smoothing``)."""
    one_hot = np.eye(teacher_probs.shape[1], dtype="float32")[y]
    return (weight * teacher_probs + (1.0 - weight) * one_hot).astype("float32")


@dataclass(frozen=True)
class Teacher:
    """A logged model a run distils: its URI, the run that logged it, and the weight of its answers
    in each training target."""

    model_uri: str
    run_id: str
    weight: float

    def tags(self) -> dict[str, str]:
        return {DISTILLED_FROM: self.run_id, TEACHER_URI: self.model_uri}

    def targets(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The teacher's answers on the (unaugmented) images ``x``, as it is served (flip-averaged
        where it was), mixed with the labels ``y``: an augmented image keeps its original's target."""
        import mlflow

        from .evaluate import predict_proba

        return distill_targets(predict_proba(mlflow.keras.load_model(self.model_uri), x), y, self.weight)
