"""What a study bought: its candidate against a reference on the same test images.

The reference (study-file key ``reference``, see spec.py) is the family's default recipe, a
named configuration, an already-measured run, or off. A trained reference keeps its own epochs
(the family default's, or the ones its params name) and gets the candidate's training images
(``final``'s train_samples, else the trials', and val_fraction) and seed, in a nested run
``reference``; a resumed study reuses a FINISHED one with the same recipe. The gain is the
paired difference in test accuracy with its bootstrap 95% interval and exact McNemar p-value
(stats.py), on the parent run as ``gain_*`` metrics and in the summary.

A lone worker trains the reference in a second process (:class:`Background`, started before the
final retrain) so that the two trainings share the machine's cores. What that buys depends on how
much of the machine one TensorFlow training leaves idle: on a 2-core machine little (BENCHMARKS.md,
"The main job"). Workers
that share a study through a database already fill the cores with each other; there the reference
is trained in-process, once, under the registration lock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Any

import mlflow
import numpy as np

from .. import params as P
from .. import stats
from ..data import Dataset, load_dataset, training_count
from ..params import NetworkParams
from ..train import job, runs, tracking
from ..train.evaluate import AT_CHANCE, classifier_answers, score_on_test
from .candidate import Candidate
from .setup import Setup, reference_recipe
from .summary import Gain


@dataclass(frozen=True)
class Job:
    """A reference to train: its parameters and the tags that find it again."""

    params: NetworkParams
    tags: dict[str, str]

    @classmethod
    def of(cls, setup: Setup) -> Job:
        p = reference_recipe(setup.args, setup.spec, setup.ds.info)
        p = P.with_epochs(p, training_count(setup.ds, val_fraction=p.val_fraction, seed=p.split_by(),
                                            train_samples=p.train_samples))[0]  # as the run will log them
        # the key hashes the parameters as runs log them, so a study resumed across versions finds its run
        return cls(p, {"optuna_study": setup.study_name, "study_reference": "true", "reference_key": p.digest()})

    def finished(self) -> Any:
        """The study's FINISHED reference run with this recipe and a logged classifier, or None."""
        found = mlflow.search_runs(
            filter_string=f"tags.optuna_study = '{self.tags['optuna_study']}' and tags.study_reference = 'true' "
                          f"and tags.reference_key = '{self.tags['reference_key']}' and attributes.status = 'FINISHED'",
            output_format="list")
        return next((r for r in found if r.data.tags.get("classifier_uri")), None)

    def train(self, ds: Dataset | None = None, *, parent_run_id: str | None = None) -> tuple[str, str]:
        """Train it in a nested run ``reference`` (on ``ds``, else the data its parameters name); (run id,
        classifier URI)."""
        p = self.params
        ds = ds or load_dataset(p.data, p.data_dir)
        print(f"[tune] reference: training with epochs={p.epochs} train_samples={p.train_samples} "
              f"seed={p.seed}", flush=True)
        with runs.run_that_ends(run_name="reference", nested=parent_run_id is None, parent_run_id=parent_run_id,
                                tags=self.tags) as run:
            res = job.train_in_run(ds, p, job.Hooks(tags=self.tags, evaluate_test=False, echo="[tune] reference"))
        return run.info.run_id, res.classifier_uri


@dataclass(frozen=True)
class Order:
    """What the second process is told (as JSON on its command line): which reference, under which run.
    The tracking store goes through MLFLOW_TRACKING_URI instead."""

    family: str
    params: dict[str, Any]  # flat, as runs log them
    tags: dict[str, str]
    parent_run_id: str
    experiment_id: str


class Background:
    """The reference trained by ``python -m fmnist_exp.study.reference`` beside this process.

    The child gets one intra-op thread (TF_NUM_INTRAOP_THREADS), so that with this process's
    two the pair does not oversubscribe two cores. It logs its nested run under the
    parent itself; :func:`report` waits for it, and trains in-process if it failed. It is sent
    SIGTERM (its run then ends FAILED) when this process stops first, and dies with this process
    (PR_SET_PDEATHSIG) when that is killed outright."""

    def __init__(self, reference: Job, parent_run_id: str):
        self.job = reference
        order = Order(family=reference.params.FAMILY, params=reference.params.flat(), tags=reference.tags,
                      parent_run_id=parent_run_id, experiment_id=mlflow.get_run(parent_run_id).info.experiment_id)
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}  # set by `mlflow run`: the parent's
        # through the environment, never argv: a tracking URI may hold a password, and `ps` shows argv
        env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
        env.update(TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "fmnist_exp.study.reference", json.dumps(asdict(order))],
                                     env=env, preexec_fn=_die_with_parent)

    def wait(self) -> int:
        print("[tune] reference: waiting for its training in the second process", flush=True)
        return self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the child may outlive a killed parent
        pass


def start_background(setup: Setup, parent_run_id: str) -> Background | None:
    """Start training the study's reference beside this process, when there is one to train."""
    if setup.spec.reference.kind not in ("default", "params"):
        return None
    reference = Job.of(setup)
    return None if reference.finished() else Background(reference, parent_run_id)


def _trained(setup: Setup, background: Background | None) -> tuple[str, np.ndarray, int]:
    """(run id, test labels, epochs) of the study's reference run: the one a resumed study or the
    background process finished, else trained now."""
    reference = Job.of(setup)
    done = reference.finished()
    if done is None and background is not None:
        code = background.wait()
        done = reference.finished()
        if done is None:
            print(f"[tune] reference: the second process failed (exit {code}); training it here", flush=True)
    if done is not None:
        run_id, classifier_uri = done.info.run_id, done.data.tags["classifier_uri"]
    else:
        run_id, classifier_uri = reference.train(setup.ds)
    labels, _ = score_on_test(run_id, classifier_uri, setup.ds, "reference")
    assert reference.params.epochs is not None
    return run_id, labels, reference.params.epochs


def _measured(run_id: str, ds: Dataset) -> np.ndarray:
    """Test labels of an existing run's classifier (the path the candidate is scored through);
    nothing is trained or logged."""
    uri = mlflow.MlflowClient().get_run(run_id).data.tags["classifier_uri"]
    return classifier_answers(uri, ds.x_test)["label"].to_numpy()


def report(setup: Setup, candidate: Candidate, parent_run_id: str, background: Background | None = None) -> Gain:
    """Compare the (already scored) candidate with the reference; log and return the gain."""
    ref = setup.spec.reference
    if ref.kind == "off":
        tracking.record(parent_run_id, {}, {"gain_reference": "off"})
        return Gain("off")
    epochs: int | None
    if ref.kind == "run":
        run_id, labels, epochs = ref.run_id, _measured(ref.run_id, setup.ds), None
    else:  # a trained reference: the gain depends on how long it trained, so say it
        run_id, labels, epochs = _trained(setup, background)
    cmp = stats.compare(setup.ds.y_test, candidate.score(setup.ds), labels)
    # at chance at this study's level: its p-value where the run logged one, else its tag (a run of earlier code
    # logged neither: not flagged)
    logged = mlflow.MlflowClient().get_run(run_id).data
    p_value = logged.metrics.get("val_chance_p")
    at_chance = (not p_value < setup.args.promote_alpha if p_value is not None
                 else logged.tags.get(AT_CHANCE) == "true")
    gain = Gain(ref.describe(), run_id, epochs, cmp, reference_at_chance=at_chance)
    length = {} if epochs is None else {"gain_reference_epochs": str(epochs)}
    chance = {"gain_reference_at_chance": "true"} if gain.reference_at_chance else {}
    tracking.record(parent_run_id, cmp.fields("gain_", "candidate", "reference"),
                    {"gain_reference": ref.describe(), "gain_reference_run_id": run_id, **length, **chance,
                     "gain": cmp.describe()})
    trained = "" if epochs is None else f", {epochs} epochs"
    print(f"[tune] {gain.over} {ref.describe()} (run {run_id}{trained}): {cmp.describe()}", flush=True)
    return gain


def _child_main(order: Order) -> None:
    """The second process: train the reference as a nested run of the study's parent run."""
    mlflow.set_experiment(experiment_id=order.experiment_id)
    with runs.interrupts_end_runs():
        tags = {**order.tags, "reference_background": "true"}  # found by reference_key like any other
        Job(P.network(order.family, order.params), tags).train(parent_run_id=order.parent_run_id)


if __name__ == "__main__":
    from fmnist_exp.study import reference as _module  # the package's module, not this __main__ copy

    _module._child_main(_module.Order(**json.loads(sys.argv[1])))
