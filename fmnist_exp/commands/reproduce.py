"""`reproduce`: rebuild a registered (or logged) model from what its run recorded, and say how
close the rebuild came.

    python -m fmnist_exp reproduce --model_uri models:/fmnist-classifier@champion
    mlflow run . -e reproduce -P model_uri=models:/fmnist-classifier/3

The source run (a registered version's run: the trial or the study's final retrain; or the
run named in a ``runs:/`` URI) holds every parameter, the seed, the data's sha256 and the
code's commit. Data with another digest is refused (exit 2) before any training; another
commit or uncommitted edits only warn. The rebuild is a new run ``reproduce <uri>`` linked to
the original (tags and a parameter); it is scored on the test split and compared with the
original on the same images: accuracy difference with its paired standard error, and the
share of images on which the two models give the same answer. Exit 1 when the difference
is beyond ``tolerance`` or, with ``exact``, when the rebuild is not bit-identical.

On one machine a fit with the same code, data and seed is bit-identical across processes without
TensorFlow's op-determinism switch (which would give other bits than the default kernels, so
turning it on would break replays of models trained without it). Another oneDNN setting or thread
count gives other bits and a test accuracy a few tenths of a point away: hence a tolerance by
default, ``exact`` on request (BENCHMARKS.md, "Lineage and determinism").
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass

import numpy as np

from .. import data as D
from .. import params as P
from ..metrics import TEST_ACC
from ..params import ConfigError, NetworkParams, ReproduceArgs
from ..params.resolve import NOT_GIVEN, as_trained
from ..params.table import family_params
from ..train import lineage
from ..train.distill import DISTILL_WEIGHT, DISTILLED_FROM, TEACHER_URI, Teacher

LINK_TAG, LINK_URI_TAG = "reproduces_run_id", "reproduces_model_uri"


class ReproduceError(ConfigError):
    """The model cannot be rebuilt as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Original:
    """What the source run recorded: enough to train the same model again."""

    uri: str
    run_id: str
    family: str
    params: NetworkParams  # the family's parameters, as recorded
    unrecorded: tuple[str, ...]  # parameters the run predates; they take today's defaults
    data_sha256: str
    data_source: str
    split_digests: dict[str, str]
    code: dict[str, str]  # git_commit, git_dirty
    keras_uri: str
    test_accuracy: float  # as logged (run metric, else the version's tag); nan if never scored
    precision_used: str
    members: tuple[Original, ...] = ()  # of an ensemble (study/ensemble.py): each rebuilt, then averaged
    teacher: Teacher | None = None  # of a distilled network (study/finals.py): the logged teacher, reused
    builder_sha256: str = ""  # of a user's network: its builder file's, as it trained


def source_run_id(uri: str) -> tuple[str, float]:
    """The run behind ``uri`` and, for a registered version, its ``test_accuracy`` tag."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository
    from mlflow.store.artifact.utils.models import get_model_name_and_version
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        if uri.startswith("runs:/"):
            return RunsArtifactRepository.parse_runs_uri(uri)[0], math.nan
        if uri.startswith("models:/"):
            found = get_model_name_and_version(client, uri)
            if len(found) == 1:  # a logged model's id (a trial's model_uri): the run that logged it
                try:
                    logged = client.get_logged_model(found[0])
                except MlflowException as e:  # e.g. a registered model's name without its version
                    if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                        raise
                    raise ReproduceError(f"model_uri={uri}: no logged model has that id; pass "
                                         "models:/<name>/<version>, models:/<name>@<alias>, runs:/<run_id>/model "
                                         "or a logged model's models:/<model id>") from None
                if not logged.source_run_id:
                    raise ReproduceError(f"model_uri={uri}: that logged model names no source run, so nothing "
                                         "records how it was trained")
                return logged.source_run_id, math.nan
            mv = client.get_model_version(*found)
            run_id = mv.run_id or mv.tags.get("source_run_id", "")
            if not run_id:
                raise ReproduceError(f"{uri} (version {mv.version}) names no source run, so nothing records how "
                                     "it was trained")
            return run_id, float(mv.tags.get(TEST_ACC, "nan"))
    except MlflowException as e:
        raise ReproduceError(f"model_uri={uri}: {e.message}. Check the name, version or alias (and "
                             "MLFLOW_TRACKING_URI: it must be the store the model was registered in)") from None
    raise ReproduceError(f"model_uri={uri}: not a models:/<name>/<version>, models:/<name>@<alias>, "
                         "runs:/<run_id>/<path> or models:/<model id> URI")


def recorded_data(logged: dict[str, str]) -> str:
    """The ``data`` a run trained on: its parameter; where that is not given (a reproduction that `mlflow
    run` started without data, which records '' before the code runs) or missing (earlier code:
    Fashion-MNIST), the data its data_name and data_source parameters name."""
    if logged.get("data", "") not in NOT_GIVEN:
        return logged["data"]
    name, source = D.recorded(logged)["data_name"], logged.get("data_source", "")
    if name == D.FASHION_MNIST.name or (name == "digits" and source.startswith("sklearn.")):
        return name
    return source or name


def read_member(ensemble_uri: str, run_id: str) -> Original:
    """One member of an ensemble; a member that cannot be rebuilt is named with the ensemble asked for."""
    try:
        return read_original(f"runs:/{run_id}/model")
    except ReproduceError as e:
        raise ReproduceError(f"{ensemble_uri} is an ensemble (tag {lineage.MEMBERS_TAG}); one of its members "
                             f"cannot be rebuilt: {e}") from None


def read_original(uri: str) -> Original:
    """Everything the rebuild needs from the source run; refuses runs that trained no network."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    run_id, version_acc = source_run_id(uri)
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException as e:
        raise ReproduceError(f"{uri}: its source run {run_id} cannot be read ({e.message})") from None
    logged, tags = run.data.params, run.data.tags
    family = logged.get("family") or tags.get("family", "")
    if family not in P.NETWORK_FAMILIES or "model_uri" not in tags:
        raise ReproduceError(
            f"{uri}: run {run_id} ({tags.get('mlflow.runName', '?')}) holds no trained mlp, cnn or custom model "
            f"(family {family or 'unknown'!r}); pass a training run, a trial or a registered version")
    names = [p.name for p in family_params(family)]
    try:
        trained = as_trained(names, logged)
    except ConfigError as e:
        raise ReproduceError(f"{uri}: run {run_id} cannot be rebuilt by this code, so nothing was trained: {e}; "
                             f"reproduce it there") from None
    recorded = {**trained, "data": recorded_data(logged)}
    if "data_sha256" not in logged:
        raise ReproduceError(f"{uri}: run {run_id} recorded no data_sha256, so the data it saw cannot be checked")
    test_acc = run.data.metrics.get(TEST_ACC, version_acc)
    members = tuple(read_member(uri, rid) for rid in tags.get(lineage.MEMBERS_TAG, "").split(",") if rid)
    teacher = None
    if DISTILLED_FROM in tags:
        if TEACHER_URI not in tags or DISTILL_WEIGHT not in logged:
            raise ReproduceError(f"{uri}: run {run_id} was distilled from run {tags[DISTILLED_FROM]} but recorded no "
                                 f"{TEACHER_URI} tag or {DISTILL_WEIGHT} parameter, so its targets cannot be rebuilt")
        teacher = Teacher(tags[TEACHER_URI], tags[DISTILLED_FROM], float(logged[DISTILL_WEIGHT]))
    return Original(uri=uri, run_id=run_id, family=family, params=P.network(family, recorded),
                    unrecorded=tuple(k for k in names if k not in recorded), data_sha256=logged["data_sha256"],
                    data_source=logged.get("data_source", "?"), split_digests=lineage.split_digests(run),
                    code=lineage.recorded_code_version(run), keras_uri=tags["model_uri"],
                    test_accuracy=float(test_acc), precision_used=logged.get("precision_used", ""), members=members,
                    teacher=teacher, builder_sha256=logged.get(lineage.BUILDER_SHA256, ""))


def check_builder_unchanged(orig: Original) -> None:
    """A user's network is rebuilt by the same builder: an edited (or missing) builder file is named
    before any training, with where the source that trained is kept."""
    from ..model import builder as user

    kept = f"runs:/{orig.run_id}/{lineage.BUILDER_SOURCE_DIR}/"
    try:
        now = user.load(orig.params.builder)
    except user.BuilderError as e:
        raise ReproduceError(f"{e}; the source run {orig.run_id} trained with the copy kept at {kept}") from None
    if now.pinned:  # the package's own: its code version is the run's (migrations read an earlier one)
        return
    if now.sha256 != orig.builder_sha256:
        raise ReproduceError(
            f"the builder {orig.params.builder} changed since run {orig.run_id} trained with it: {now.file} has sha256 "
            f"{now.sha256[:16]}..., the run recorded {orig.builder_sha256[:16] or 'none'}...; nothing was trained. "
            f"Restore the file as it was (the run keeps that source at {kept}{now.file.name}; e.g. `mlflow artifacts "
            f"download -u {kept}{now.file.name}`), or train the edited builder as a new run")


def check_data(orig: Original, ds: D.Dataset) -> None:
    if ds.sha256 != orig.data_sha256:
        where = "--data_dir (-P data_dir=...)" if ds.info.name == D.FASHION_MNIST.name else "--data (-P data=...)"
        raise ReproduceError(
            f"the data found now ({ds.source}, sha256 {ds.sha256[:16]}...) is not the data run {orig.run_id} "
            f"trained on ({orig.data_source}, sha256 {orig.data_sha256[:16]}...); nothing was trained. "
            f"Point {where} at the original files")


def data_of(orig: Original, args: ReproduceArgs) -> str:
    """The images the original trained on: ``data`` where the user says they are now, else where its run
    recorded them (data=fashion-mnist for a run that predates the parameter)."""
    return args.data or orig.params.data


def rebuild_params(orig: Original, args: ReproduceArgs, info: D.DatasetInfo) -> NetworkParams:
    """The original's parameters for the rebuild, concrete for its images (a cnn run by `mlflow run` that
    was not given filters recorded none: it trained the default widths that fit). ``precision=auto``
    chooses by machine and by code version (earlier code chose float32 where later code chooses
    bfloat16), so the rebuild trains in the precision the original actually used wherever this
    machine runs it natively; elsewhere ``auto`` stays and ``warnings_for`` names the difference."""
    from ..model.networks import fit_to_data
    from ..train.precision import cpu_has_bfloat16, gpu_visible

    p = fit_to_data(P.replaced(orig.params, data=data_of(orig, args), data_dir=args.data_dir), info)[0]
    used = orig.precision_used
    native = {"float32": True, "mixed_bfloat16": gpu_visible() or bool(cpu_has_bfloat16()),
              "mixed_float16": gpu_visible()}
    if p.precision == "auto" and native.get(used, False):
        p = P.replaced(p, precision=used)
    return p


def warnings_for(orig: Original, splits: D.Splits, precision_now: str) -> list[str]:
    """What may make the rebuild differ although the data is the same."""
    out = []
    now = lineage.git_state()
    then = orig.code
    if lineage.UNKNOWN in (now[lineage.GIT_COMMIT_TAG], then[lineage.GIT_COMMIT_TAG]):
        out.append(f"code version unknown (original {then[lineage.GIT_COMMIT_TAG]}, now "
                   f"{now[lineage.GIT_COMMIT_TAG]}): cannot tell whether the code changed")
    elif now[lineage.GIT_COMMIT_TAG] != then[lineage.GIT_COMMIT_TAG]:
        out.append(f"code differs: the original was trained at commit {then[lineage.GIT_COMMIT_TAG][:12]}, "
                   f"this is {now[lineage.GIT_COMMIT_TAG][:12]} (git checkout the original for a faithful rebuild)")
    for who, state in (("the original was trained from", then), ("this rebuild runs from", now)):
        if state[lineage.GIT_DIRTY_TAG] == "true":
            out.append(f"{who} a working tree with uncommitted edits: the commit alone does not pin the code")
    if orig.unrecorded:
        out.append(f"the original run did not record {', '.join(orig.unrecorded)}: today's defaults are used")
    digests = {"training": lineage.split_digest(splits.x_train, splits.y_train),
               "validation": lineage.split_digest(splits.x_val, splits.y_val)}
    if orig.split_digests and any(orig.split_digests.get(k) not in (None, v) for k, v in digests.items()):
        out.append("same data, but the training/validation split differs from the original's "
                   "(another scikit-learn version?)")
    if orig.precision_used and precision_now != orig.precision_used:
        out.append(f"the original trained in {orig.precision_used}, this machine trains in {precision_now}")
    return out


def compare(y: np.ndarray, orig_probs: np.ndarray, new_probs: np.ndarray) -> dict[str, float]:
    """Paired on the same test images: the accuracy difference (new - original) with its
    standard error, and the share of images both models answer alike."""
    orig_ok = orig_probs.argmax(1) == y
    new_ok = new_probs.argmax(1) == y
    d = new_ok.astype(float) - orig_ok.astype(float)
    return {"original_test_accuracy_now": float(orig_ok.mean()), "paired_difference_se": float(d.std(ddof=1) /
            math.sqrt(len(d))), "agreement": float((orig_probs.argmax(1) == new_probs.argmax(1)).mean()),
            "bit_identical": float(orig_probs.shape == new_probs.shape and np.array_equal(orig_probs, new_probs))}


def main(args: ReproduceArgs) -> int:
    """The ``reproduce`` entry point; returns the exit code (0 passed, 1 beyond tolerance / not exact)."""
    import mlflow

    from ..registry.names import with_registered_model
    from ..train import job, runs, tracking
    from ..train.evaluate import predict_proba
    from ..train.precision import resolve_precision

    args = with_registered_model(args, "reproduce")  # the model meant where none is named
    orig = read_original(args.model_uri)
    trained = orig.members or (orig,)  # the networks to train again
    ds = D.load_dataset(data_of(trained[0], args), args.data_dir)
    warned = []
    for one in trained:
        check_builder_unchanged(one)
        check_data(one, ds)
        p = rebuild_params(one, args, ds.info)
        splits = job.splits(ds, p)
        warned += warnings_for(one, splits, resolve_precision(p.precision))
    for w in dict.fromkeys(warned):  # an ensemble's members share most of theirs
        print(f"warning: {w}", file=sys.stderr, flush=True)
    link = {LINK_TAG: orig.run_id, LINK_URI_TAG: orig.uri}
    tracking.use_experiment(args.experiment, f"fmnist-{orig.family}")
    with runs.run_that_ends(run_name=f"reproduce {orig.uri}", tags=link,
                            description=f"Rebuild of {orig.uri} from run {orig.run_id}'s recorded parameters"):
        # keys `mlflow run` logged stay as they are; "not given" is left to the run's recipe (its data, say)
        tracking.log_params({**{k: v for k, v in args.flat().items() if v != ""}, LINK_TAG: orig.run_id})
        if orig.members:
            result = _rebuild_ensemble(orig, ds, args)
        else:
            result = job.train_in_run(ds, p, job.Hooks(tags=link, echo="[reproduce]", teacher=orig.teacher))
        new_probs = predict_proba(mlflow.keras.load_model(result.model_uri), ds.x_test)
        orig_probs = predict_proba(mlflow.keras.load_model(orig.keras_uri), ds.x_test)
        report = compare(ds.y_test, orig_probs, new_probs)
        original_acc = orig.test_accuracy if math.isfinite(orig.test_accuracy) else report["original_test_accuracy_now"]
        diff = result.metrics[TEST_ACC] - original_acc
        failure = judge(diff, report, tolerance=args.tolerance, exact=args.exact)
        mlflow.log_metrics({"original_test_accuracy": original_acc, "accuracy_difference": diff, **report})
        mlflow.set_tag("reproduce_verdict", failure or "passed")
    print(json.dumps({"run_id": result.run_id, LINK_TAG: orig.run_id, "model_uri": orig.uri,
                      TEST_ACC: round(result.metrics[TEST_ACC], 6), "original_test_accuracy": round(original_acc, 6),
                      "accuracy_difference": round(diff, 6), **{k: round(v, 6) for k, v in report.items()},
                      "tolerance": args.tolerance, "exact": args.exact, "passed": not failure}))
    if failure:
        print(f"error: {failure}", file=sys.stderr)
        return 1
    return 0


def _rebuild_ensemble(orig: Original, ds: D.Dataset, args: ReproduceArgs):
    """Each member trained again from its own run's record, in a nested run linked to it, then
    averaged and logged into the active (reproduce) run as the original ensemble was."""
    import mlflow

    from ..study import ensemble
    from ..train import job

    members, run_ids, seeds, split_seeds = [], [], [], []
    for one in orig.members:
        p = rebuild_params(one, args, ds.info)
        tags = {LINK_TAG: one.run_id}
        with mlflow.start_run(run_name=f"reproduce member (seed {p.seed})", nested=True, tags=tags) as run:
            res = job.train_in_run(ds, p, job.Hooks(tags=tags, evaluate_test=False, echo=f"[reproduce] seed {p.seed}"))
        members.append(mlflow.keras.load_model(res.model_uri))
        run_ids.append(run.info.run_id)
        seeds.append(p.seed)
        split_seeds.append(p.split_by())
    p = rebuild_params(orig.members[0], args, ds.info)
    result, _ = ensemble.log_in_run(p, members, seeds, ds, split_seeds=split_seeds, member_run_ids=run_ids,
                                    evaluate_test=True, echo="[reproduce]")
    return result


def judge(diff: float, report: dict, *, tolerance: float, exact: bool) -> str:
    """'' when the rebuild passes, else what failed."""
    if exact and not report["bit_identical"]:
        return (f"exact=true, but the rebuild's test-set probabilities are not bit-identical to the original's "
                f"({report['agreement']:.2%} of answers agree, accuracy difference {diff * 100:+.2f} points); "
                "another CPU, thread count or TensorFlow build changes the bits: use exact=false and a tolerance")
    if not exact and abs(diff) > tolerance:
        return (f"the rebuild's test accuracy differs from the original's by {diff * 100:+.2f} points (paired "
                f"standard error {report['paired_difference_se'] * 100:.2f}), beyond the tolerance of "
                f"{tolerance * 100:.2f} points")
    return ""
