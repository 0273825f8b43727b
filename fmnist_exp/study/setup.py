"""Before a study runs: everything that can be wrong is checked (tracking server, storage, study,
study file, budget, data) before any work and before any MLflow run starts; then the study is
created or joined once (what it is recorded on it: stored.py), and the parent run records how it was set up."""

from __future__ import annotations

import random
import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mlflow
import optuna

from .. import data as D
from .. import params as P
from ..model.builder import load as load_builder
from ..model.networks import fit_to_data
from ..params import ConfigError, TuneArgs
from ..scale.health import shown_uri
from ..scale.storage import StorageURL, preflight
from ..train import tracking
from ..train.builder_fit import check_builder
from ..train.job import log_data_facts
from . import spec as S
from .space import as_trial_params
from .stored import (
    STUDY_BUILDER,
    STUDY_DATA,
    STUDY_DATA_ARG,
    STUDY_DATA_NAME,
    STUDY_FAMILY,
    STUDY_FILE,
    STUDY_TEXT,
    check_same_builder,
    check_study_data,
    creation_lock,
    stored_study,
)


@dataclass(frozen=True)
class Setup:
    """A study ready to run: its file, budget, data and storage, checked."""

    args: TuneArgs
    spec: S.StudySpec
    budget: S.Budget
    ds: D.Dataset
    study_name: str
    storage: StorageURL
    optuna_storage: optuna.storages.BaseStorage  # opened once, shared by every step
    model_name: str  # the registered name: model_name, else the dataset's (default_model_name)

    def layers(self, sampled: dict[str, Any] | None = None, final: dict[str, Any] | None = None) -> P.Layers:
        return study_layers(self.args, self.spec, sampled, final)

    def recipe(self, layers: P.Layers) -> P.NetworkParams:
        """The network ``layers`` compose, made concrete for the study's images (networks.fit_to_data)."""
        return fit_to_data(P.compose(self.spec.family, layers), self.ds.info)[0]

    def trial_params(self, sampled: dict[str, Any] | None = None) -> P.NetworkParams:
        return self.recipe(self.layers(sampled))

    def final_params(self, config: dict[str, Any], seed: int) -> P.NetworkParams:
        """The best configuration retrained with the study file's ``final`` and ``seed``."""
        return self.recipe(self.layers(config, {**self.spec.final.params, "seed": seed}))

    def student_params(self, config: dict[str, Any], seed: int) -> P.NetworkParams:
        """The distilled network's: the final retrain's with the study file's ``final.student``."""
        final = {**self.spec.final.params, **self.spec.final.student, "seed": seed}
        return self.recipe(self.layers(config, final))

    def final_seeds(self) -> list[int]:
        """seed, seed+1, ... for ``final.seeds`` retrains; ``final`` may name the first seed."""
        first = self.spec.final.params.get("seed", self.args.seed)
        return list(range(first, first + self.spec.final.seeds))

    def final_split_seeds(self) -> list[int]:
        """The seed each final retrain draws its validation split with (one for all with ``split_seed``)."""
        return [self.final_params({}, seed).split_by() for seed in self.final_seeds()]


def study_layers(args: TuneArgs, spec: S.StudySpec, sampled: dict[str, Any] | None = None,
                 final: dict[str, Any] | None = None) -> P.Layers:
    """A study's layers for a trial (``sampled``) or a final retrain (``final``), in the one order
    :func:`params.compose` applies: the command line's budget only where it was given."""
    given = {"epochs": args.epochs, "train_samples": args.train_samples}
    command_line = {**{k: v for k, v in given.items() if v is not None}, "seed": args.seed, "data": args.data,
                    "data_dir": args.data_dir}
    # Only a study stored by earlier code samples these (a new file may not): there the sampled value
    # trained, as it did then, so that a resumed study's recorded values stay true.
    kept = set(sampled or {}) & {*S.RUN_ONLY, *S.BUDGET_ONLY}
    return P.Layers(
        fixed=spec.fixed,
        budget={"epochs": spec.budget.epochs, "train_samples": spec.budget.train_samples},
        sampled=sampled or {},
        command_line={k: v for k, v in command_line.items() if k not in kept},
        final=final or {},
    )


def reference_recipe(args: TuneArgs, spec: S.StudySpec, info: D.DatasetInfo) -> P.NetworkParams:
    """The reference's parameters: the family defaults (``fixed`` not applied) or the named ones, their
    own epochs included, with the candidate's training images and seed; on small images the default
    recipe's blocks that fit (as the cnn entry point trains it there), a named one refused if they do not."""
    candidate = P.compose(spec.family, study_layers(args, spec, final=spec.final.params))
    p = P.replaced(P.network(spec.reference_family, spec.reference.params),
                   **{k: getattr(candidate, k) for k in S.REFERENCE_BUDGET})
    return fit_to_data(p, info)[0]


def prepare(args: TuneArgs, *, must_exist: bool = False) -> Setup:
    """Check everything that can be wrong before any work, and before any MLflow run is started."""
    url = preflight(args.storage)
    opened = url.open()  # under a lock: workers started together create the tables once (scale/locks.py)
    named = stored_study(url, opened, args.study_name) if args.study_name else None
    args, ds = study_for_data(args, stored=named is not None)
    study_name = args.study_name or S.resolve_path(args.study, args.family).stem
    stored = named if args.study_name else stored_study(url, opened, study_name)
    if stored is None and must_exist:
        raise ConfigError(f"no study {study_name!r} in {url.where}: check study_name and storage")
    spec = study_spec(args, study_name, stored)
    budget = spec.budget.with_command_line(args)
    # not given: the study's own data (so `register` needs only the study's name and storage)
    args = replace(args, data=args.data or (stored or {}).get(STUDY_DATA_ARG) or D.FASHION_MNIST.name)
    P.compose(spec.family, study_layers(args, spec))  # what every trial shares: refused now, not in trial 0
    ds = ds or D.load_dataset(args.data, args.data_dir)
    for note in ds.notes:
        print(f"[data] {note}", flush=True)
    setup = Setup(args, spec, budget, ds, study_name, url, opened, args.model_name or default_model_name(ds.info))
    check_reference_run(spec, ds)
    check_data(setup, stored)
    check_ensemble_validation(setup)
    return setup


def study_for_data(args: TuneArgs, *, stored: bool = False) -> tuple[TuneArgs, D.Dataset | None]:
    """A new cnn study of data the command line names, with no study file given, gets the study file for its
    images (spec.for_data), said in one line; the dataset comes back loaded. Otherwise (a study file, a study
    of that study_name already ``stored``, Fashion-MNIST, another family) ``args`` unchanged and no dataset."""
    if args.study or stored or args.data in (None, D.FASHION_MNIST.name) or args.family not in (None, P.DEFAULT_FAMILY):
        return args, None
    ds = D.load_dataset(args.data, args.data_dir)
    name, why = S.for_data(ds.info)
    print(f"[tune] no study file given: study={name} (experiments/{name}.yaml), {why}; docs/studies.md, "
          "'A study for your data'", flush=True)
    return replace(args, study=name), ds


def default_model_name(info: D.DatasetInfo) -> str:
    """The registered name a dataset's models go under unless model_name says: one name, one dataset."""
    return "fmnist-classifier" if info.name == D.FASHION_MNIST.name else f"{info.name}-classifier"


def check_data(setup: Setup, stored: dict[str, Any] | None) -> None:
    """What the study's data allows, refused before any training: a study created on other data (its
    trials would be compared across datasets), a registered name whose champion holds another dataset,
    a validation split the classes cannot fill, and any recipe the study can train (each searched
    value's extremes, the enqueued points, the final retrain, the student, the reference) that the
    images do not allow (networks.check_recipe)."""
    ds, spec, where = setup.ds, setup.spec, str(setup.spec.path)
    check_study_data(setup.study_name, ds, stored)
    check_champion_data(setup.model_name, ds, given=setup.args.model_name is not None)
    base = {key: dist.corners()[0] for key, dist in spec.space.items()}
    points = [base, *({**base, key: value} for key, dist in spec.space.items() for value in dist.corners()),
              *spec.enqueue]
    try:
        # made concrete for the images, and checked (networks.fit_to_data)
        recipes = [setup.trial_params(point) for point in points]
        first = setup.final_seeds()[0]
        recipes.append(setup.final_params(base, first))
        # val_fraction is fixed for the trials (a space may not search it); the final may give its own
        for val_fraction in {recipes[0].val_fraction, recipes[-1].val_fraction}:
            D.check_split(ds, val_fraction)
        if spec.final.distill:
            recipes.append(setup.student_params(base, first))
        if spec.reference.kind in ("default", "params"):
            reference_recipe(setup.args, spec, ds.info)
        # a user's network: built once per point, every parameter read, no name defined twice
        check_builder(recipes, ds.info, searched=spec.space, fixed=spec.fixed)
    except ConfigError as e:
        raise ConfigError(f"{where} on {ds.info.name}: {e}") from None
    check_same_builder(setup.study_name, setup.trial_params(), stored)


def check_champion_data(model_name: str, ds: D.Dataset, *, given: bool = True) -> None:
    """Refuse a registered name whose @champion was trained on another dataset: the gate would score
    that champion on this data's test images, and one name would hold two datasets' models. ``given``:
    the user named it (else it is the dataset's default name, and the advice differs)."""
    from mlflow.exceptions import MlflowException

    try:
        champion = mlflow.MlflowClient().get_model_version_by_alias(model_name, "champion")
    except MlflowException:
        return  # no such model, or no champion yet
    theirs = champion.tags.get("data_sha256")
    if theirs not in (None, "unknown", ds.sha256):
        name = champion.tags.get("data_name", "another dataset")
        default = default_model_name(ds.info)
        advice = (f"leave model_name out (this data's models go under {default}) or give another"
                  if given and default != model_name else
                  "give model_name a name of its own (a folder whose images changed is another dataset, with "
                  "another digest; a folder's dataset.yaml may also give it another name)")
        raise ConfigError(f"model_name={model_name}: its @champion (version {champion.version}) was trained on {name} "
                          f"(sha256 {theirs[:12]}...), not on {ds.info.name} (sha256 {ds.sha256[:12]}...); one "
                          f"registered name holds one dataset: {advice}")


FEW_HELD_OUT = 200  # one standard error of a ~95% accuracy is ~1.5 points on 200 images


def check_ensemble_validation(setup: Setup) -> None:
    """An ensemble (and a network distilled from it) is validated on the images that no seed's
    split trained on (study/ensemble.py); unless they share one (``split_seed``), each seed holds out
    its own ``val_fraction``, so k seeds leave about ``val_fraction ** k`` of the training set (584
    images for 2 seeds at 0.1, 51 for 3, 7 for 4, none for 5). Refuse, before any training, seeds
    that leave none; warn when they leave so few that the ensemble's validation accuracy tells little."""
    if not setup.spec.final.ensemble or len(set(setup.final_split_seeds())) == 1:
        return  # one shared split: the ensemble is validated on all of it, as each seed is
    from .ensemble import held_out_by_all

    seeds = setup.final_seeds()
    val_fraction = setup.final_params({}, seeds[0]).val_fraction
    n = len(held_out_by_all(setup.ds, val_fraction, setup.final_split_seeds())[1])
    k = len(seeds)
    # about len(y_train) * f**k images are held out by all k splits: the f that leaves FEW_HELD_OUT
    enough = (FEW_HELD_OUT / len(setup.ds.y_train)) ** (1 / k)
    said = (f"final.seeds={k} with ensemble: {n or 'no'} training images are held out by all {k} seeds' validation "
            f"splits (each seed holds out its own {val_fraction:.0%}, val_fraction {val_fraction:g})")
    shared = round(len(setup.ds.y_train) * val_fraction)
    larger = (f", or give the retrains a larger share, e.g. final: {{val_fraction: {enough:.2f}}} (about "
              f"{FEW_HELD_OUT} images held out by all {k}; the trials keep theirs)" if enough <= 0.5 else "")
    advice = (f"share one split, final: {{split_seed: {seeds[0]}}} (every seed then holds out the same {shared:,} "
              f"images){',' if larger else ' or'} use fewer seeds{larger}")
    if not n:
        raise ConfigError(f"{setup.spec.path}: {said}, so the ensemble could not be validated: {advice}")
    if n < FEW_HELD_OUT:
        print(f"[tune] warning: {said}: the ensemble's (and a distilled network's) validation accuracy rests on "
              f"them alone; {advice}", file=sys.stderr, flush=True)


def study_spec(args: TuneArgs, study_name: str, stored: dict[str, Any] | None) -> S.StudySpec:
    """The study file a command works with. An existing study carries its own (stored when it was
    created): its family wins, a contradicting ``family`` is refused, and without a ``study``
    argument its stored file is used, so `register` needs only study_name and storage."""
    if not stored or STUDY_TEXT not in stored:
        return S.load(args.study, args.family)  # a new study, or one made before files were stored
    family = stored[STUDY_FAMILY]
    if args.family and args.family != family:
        raise ConfigError(f"study {study_name!r} tunes family {family!r} (recorded on the study when it was "
                          f"created), not family={args.family!r}: leave family empty to use the study's")
    if args.study:
        return S.load(args.study, family)
    return S.parse(stored[STUDY_TEXT], Path(stored[STUDY_FILE]), family, stored=True)


def check_reference_run(spec: S.StudySpec, ds: D.Dataset) -> None:
    """A ``{run_id: ...}`` reference must exist, carry a logged model and have been trained on the study's
    data (its answers are compared with the candidate's on these test images); said before the search."""
    from mlflow.exceptions import MlflowException

    if spec.reference.kind != "run":
        return
    try:
        run = mlflow.MlflowClient().get_run(spec.reference.run_id)
    except MlflowException:
        raise ConfigError(f"{spec.path}: reference run {spec.reference.run_id!r} is not in the tracking store "
                          f"{shown_uri(mlflow.get_tracking_uri())}; give the id of a finished mlp, cnn or custom "
                          "run") from None
    tags = run.data.tags
    if not (tags.get("model_uri") and tags.get("classifier_uri")):  # e.g. a baseline run: no Keras model
        raise ConfigError(f"{spec.path}: reference run {spec.reference.run_id!r} has no logged Keras model "
                          "(model_uri and classifier_uri tags); give the id of a finished mlp, cnn or custom run")
    theirs = run.data.params.get("data_sha256")
    if theirs not in (None, ds.sha256):
        raise ConfigError(f"{spec.path}: reference run {spec.reference.run_id!r} was trained on other data "
                          f"({D.recorded(run.data.params)['data_name']}, sha256 {theirs[:12]}...) than this "
                          f"study's ({ds.info.name}, sha256 {ds.sha256[:12]}...); give a run trained on the same data")


def sampler_seed(seed: int, url: StorageURL, before: int = 0) -> int:
    """The sampler's seed. A lone worker (SQLite) uses ``seed``, so its search replays; resuming a study of
    ``before`` trials, ``seed + before``: with ``seed`` again it would propose the first session's points
    again (trained once: the objective's twins). Workers sharing a database draw one each: with one seed
    they would all propose the same random startup configurations, and TPE's the same answers to the same
    history, training each one N times. The seed is logged on the worker's parent run (``sampler_seed``)."""
    return seed + before if url.is_sqlite else random.SystemRandom().randrange(2**31)


def make_study(setup: Setup, seed: int) -> optuna.Study:
    """Create the study (or load one half made) and record what it is, its study file last: the
    caller holds its creation_lock."""
    goals = setup.spec.goals
    direction: dict[str, Any] = {"directions": goals.directions} if goals.multi else {"direction": "maximize"}
    study = optuna.create_study(
        study_name=setup.study_name, storage=setup.optuna_storage, load_if_exists=True,
        sampler=setup.spec.make_sampler(seed), pruner=setup.spec.make_pruner(), **direction,
    )
    if STUDY_TEXT not in study.user_attrs:
        for point in setup.spec.enqueue:  # known-good starting points, once per study
            study.enqueue_trial(as_trial_params(setup.spec.space, point), skip_if_exists=True)
        if goals.multi:  # optuna-dashboard and Optuna's plots name the axes by them
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(list(goals.objectives))
        study.set_user_attr(STUDY_FAMILY, setup.spec.family)
        study.set_user_attr(STUDY_DATA, setup.ds.sha256)
        study.set_user_attr(STUDY_DATA_NAME, setup.ds.info.name)
        study.set_user_attr(STUDY_DATA_ARG, setup.args.data)
        if not (builder := load_builder(setup.trial_params().builder)).pinned:  # a user's: its file, as created
            study.set_user_attr(STUDY_BUILDER, builder.sha256)
        study.set_user_attr(STUDY_FILE, setup.spec.path.name)
        study.set_user_attr(STUDY_TEXT, setup.spec.text)  # last: the study is made
    return study


def open_study(setup: Setup, seed: int) -> optuna.Study:
    """Create or join the study; a study created here records its family and study file."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress lines say it better

    def created() -> optuna.Study | None:
        """The study, if a worker has made it completely: its file is recorded last."""
        try:
            study = optuna.load_study(study_name=setup.study_name, storage=setup.optuna_storage,
                                      sampler=setup.spec.make_sampler(seed), pruner=setup.spec.make_pruner())
        except KeyError:
            return None
        return study if STUDY_TEXT in study.user_attrs else None

    # One worker at a time makes the study: creates it, enqueues its starting points (skip_if_exists
    # reads, then writes: two at once would enqueue each point twice) and records its file. A study
    # made already is joined without the lock: a hundred workers started together would otherwise
    # queue for it one by one (through a busy storage proxy, seconds each).
    study = created()
    if study is None:
        with creation_lock(setup.storage, setup.study_name):
            study = make_study(setup, seed)
    # a worker that found no study in prepare and joins one made beside it since checks now
    check_study_data(setup.study_name, setup.ds, study.user_attrs)
    check_same_builder(setup.study_name, setup.trial_params(), study.user_attrs)
    goals = setup.spec.goals
    stored = [d.name.lower() for d in study.directions]
    if stored != [d.lower() for d in (goals.directions if goals.multi else ["maximize"])]:
        raise ConfigError(
            f"study {setup.study_name!r} was created with {len(stored)} objective(s) ({', '.join(stored)}) and "
            f"{setup.spec.path.name} now asks for {', '.join(goals.objectives)}: a stored study keeps its objectives; "
            "give this study file a new study_name, or go back to the file the study was created with")
    return study


def trials_started(study: optuna.Study) -> int:
    """Trials that ran or run; enqueued ones still WAITING do not make a study 'resumed'."""
    return sum(t.state != optuna.trial.TrialState.WAITING for t in study.trials)


def log_setup(setup: Setup, before: int, sampler_seed: int | None = None) -> None:
    """What the parent run records of the study's setup (the storage redacted)."""
    spec = setup.spec
    mlflow.set_tags({"family": spec.family, "arch": f"optuna study {setup.study_name}",
                     "optuna_study": setup.study_name, "study_description": spec.description,
                     "resumed": str(before > 0).lower()})
    # storage: the redacted form (under `mlflow run` MLflow has logged the -P value itself already)
    tracking.log_params({**setup.args.flat(), "family": spec.family, "storage": str(setup.storage),
                         "study_file": str(spec.path)})
    tracking.log_params({f"budget_{k}": v for k, v in setup.budget.flat().items()})
    tracking.log_params({"pruner": spec.make_pruner().__class__.__name__, "pruner_config": spec.pruner,
                         "sampler": spec.make_sampler(0).__class__.__name__,
                         "optuna_storage": str(setup.storage), "trials_before": before,
                         **({"sampler_seed": sampler_seed} if sampler_seed is not None else {})})
    log_data_facts(setup.ds)
    if not spec.goals.plain:
        tracking.log_params(spec.goals.flat())
    mlflow.log_text(spec.text, f"study/{spec.path.name}")
