"""What a study bought: its candidate against a reference on the same test images.

The reference (study-file key ``reference``, see space.py) is the family's default recipe, a
named configuration, an already-measured run, or off. A trained reference keeps its own epochs
(the family default's, or the ones its params name) and gets the candidate's training images
(``final``'s train_samples, else the trials', and val_fraction) and seed, in a nested run
``reference``; a resumed study reuses a FINISHED one with the same recipe (a study begun before
references kept their own epochs trains a new one). The gain is the
paired difference in test accuracy with its bootstrap 95% interval and exact McNemar p-value
(stats.py), on the parent run as ``gain_*`` metrics and in the summary.

A lone worker trains the reference in a second process (:class:`Background`, started before the
final retrain) so that the two trainings share the machine's cores. What that buys depends on how
much of the machine one TensorFlow training leaves idle: on this project's 2-core Intel machine
little (the pair ran at ~1.1x the throughput of one process; BENCHMARKS.md, issue 16 run 3). Workers
that share a study through a database already fill the cores with each other; there the reference
is trained in-process, once, under the registration lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from . import config as C
from . import data as D
from . import experiment, registry, space, stats, tracking


def recipe(spec: space.StudySpec, base: dict) -> dict:
    """The reference's parameters: the family defaults (``fixed`` not applied) or the named ones, their
    own epochs included, with the candidate's training images and seed."""
    budget = C.resolve(spec.family, {**base, **spec.final})
    return C.resolve(spec.family, {**spec.reference.params, **{k: budget[k] for k in space.REFERENCE_BUDGET}})


def check_run(spec: space.StudySpec) -> None:
    """A ``{run_id: ...}`` reference must exist and carry a logged model; said before the search."""
    if spec.reference.kind != "run":
        return
    try:
        run = mlflow.MlflowClient().get_run(spec.reference.run_id)
    except MlflowException:
        raise C.ConfigError(f"{spec.path}: reference run {spec.reference.run_id!r} is not in the tracking store "
                            f"{mlflow.get_tracking_uri()}; give the id of a finished mlp or cnn run") from None
    tags = run.data.tags
    if not (tags.get("model_uri") and tags.get("classifier_uri")):  # e.g. a baseline run: no Keras model
        raise C.ConfigError(f"{spec.path}: reference run {spec.reference.run_id!r} has no logged Keras model "
                            "(model_uri and classifier_uri tags); give the id of a finished mlp or cnn run")


@dataclass(frozen=True)
class Job:
    """A reference to train: its resolved parameters and the tags that find it again."""

    family: str
    params: dict
    tags: dict

    @classmethod
    def of(cls, spec: space.StudySpec, base: dict, study_name: str) -> Job:
        p = recipe(spec, base)
        key = hashlib.sha256(json.dumps({"family": spec.family, **p}, sort_keys=True).encode()).hexdigest()[:16]
        return cls(spec.family, p, {"optuna_study": study_name, "study_reference": "true", "reference_key": key})

    def finished(self):
        """The study's FINISHED reference run with this recipe and a logged classifier, or None."""
        runs = mlflow.search_runs(
            filter_string=f"tags.optuna_study = '{self.tags['optuna_study']}' and tags.study_reference = 'true' "
                          f"and tags.reference_key = '{self.tags['reference_key']}' and attributes.status = 'FINISHED'",
            output_format="list")
        return next((r for r in runs if r.data.tags.get("classifier_uri")), None)

    def train(self, ds: D.Dataset | None = None, *, parent_run_id: str | None = None) -> tuple[str, str]:
        """Train it in a nested run ``reference``; (run id, classifier URI)."""
        p = self.params
        print(f"[tune] reference: training with epochs={p['epochs']} train_samples={p['train_samples']} "
              f"seed={p['seed']}", flush=True)
        with tracking.run_that_ends(run_name="reference", nested=parent_run_id is None, parent_run_id=parent_run_id,
                                    tags=self.tags) as run:
            res = experiment.train_in_run(self.family, p, ds=ds, evaluate_test=False, extra_tags=self.tags,
                                          echo="[tune] reference")
        return run.info.run_id, res.classifier_uri


class Background:
    """The reference trained by ``python -m fmnist_exp.reference`` beside this process.

    The child gets one intra-op thread (TF_NUM_INTRAOP_THREADS), so that with this process's
    two the pair does not oversubscribe two cores. It logs its nested run under the
    parent itself; :func:`report` waits for it, and trains in-process if it failed. It is sent
    SIGTERM (its run then ends FAILED) when this process stops first, and dies with this process
    (PR_SET_PDEATHSIG) when that is killed outright."""

    def __init__(self, job: Job, parent_run_id: str):
        self.job = job
        order = {"family": job.family, "params": job.params, "tags": job.tags, "parent_run_id": parent_run_id,
                 "experiment_id": mlflow.get_run(parent_run_id).info.experiment_id,
                 "tracking_uri": mlflow.get_tracking_uri()}
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}  # set by `mlflow run`: the parent's
        env.update(TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "fmnist_exp.reference", json.dumps(order)], env=env,
                                     preexec_fn=_die_with_parent)

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


def start_background(spec: space.StudySpec, base: dict, study_name: str, parent_run_id: str) -> Background | None:
    """Start training the study's reference beside this process, when there is one to train."""
    if spec.reference.kind not in ("default", "params"):
        return None
    job = Job.of(spec, base, study_name)
    return None if job.finished() else Background(job, parent_run_id)


def _trained(spec: space.StudySpec, base: dict, ds: D.Dataset, study_name: str,
             background: Background | None) -> tuple[str, np.ndarray, int]:
    """(run id, test labels, epochs) of the study's reference run: the one a resumed study or the
    background process finished, else trained now."""
    job = Job.of(spec, base, study_name)
    done = job.finished()
    if done is None and background is not None:
        code = background.wait()
        done = job.finished()
        if done is None:
            print(f"[tune] reference: the second process failed (exit {code}); training it here", flush=True)
    if done is not None:
        run_id, classifier_uri = done.info.run_id, done.data.tags["classifier_uri"]
    else:
        run_id, classifier_uri = job.train(ds)
    labels, _ = registry.score_on_test(run_id, classifier_uri, ds, "reference")
    return run_id, labels, job.params["epochs"]


def _measured(run_id: str, ds: D.Dataset) -> np.ndarray:
    """Test labels of an existing run's classifier (the path the candidate is scored through);
    nothing is trained or logged."""
    uri = mlflow.MlflowClient().get_run(run_id).data.tags["classifier_uri"]
    return registry.classifier_answers(uri, ds.x_test)["label"].to_numpy()


def report(spec: space.StudySpec, base: dict, ds: D.Dataset, study_name: str, candidate: registry.Candidate,
           parent_run_id: str, background: Background | None = None) -> dict:
    """Compare the (already scored) candidate with the reference; log and return the gain fields."""
    ref = spec.reference
    if ref.kind == "off":
        registry.record(parent_run_id, {}, {"gain_reference": "off"})
        return {"reference": "off"}
    if ref.kind == "run":
        run_id, labels, epochs = ref.run_id, _measured(ref.run_id, ds), None
    else:  # a trained reference: the gain depends on how long it trained, so say it
        run_id, labels, epochs = _trained(spec, base, ds, study_name, background)
    cmp = stats.compare(ds.y_test, candidate.test_labels, labels)
    fields = cmp.fields("gain_", "candidate", "reference")
    length = {} if epochs is None else {"reference_epochs": epochs}
    out = {"reference": ref.describe(), "reference_run_id": run_id, **length, **fields, "gain": cmp.describe()}
    registry.record(parent_run_id, fields, {"gain_reference": ref.describe(), "gain_reference_run_id": run_id,
                                            **{f"gain_{k}": str(v) for k, v in length.items()}, "gain": cmp.describe()})
    trained = "" if epochs is None else f", {epochs} epochs"
    print(f"[tune] gain over {ref.describe()} (run {run_id}{trained}): {cmp.describe()}", flush=True)
    return out


def _child_main(order: dict) -> None:
    """The second process: train the reference as a nested run of the study's parent run."""
    mlflow.set_tracking_uri(order["tracking_uri"])
    mlflow.set_experiment(experiment_id=order["experiment_id"])
    with tracking.interrupts_end_runs():
        tags = {**order["tags"], "reference_background": "true"}  # found by reference_key like any other
        Job(order["family"], order["params"], tags).train(parent_run_id=order["parent_run_id"])


if __name__ == "__main__":
    from fmnist_exp import reference as _module  # the package's module, not this __main__ copy

    _module._child_main(json.loads(sys.argv[1]))
