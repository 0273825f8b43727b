"""Study files: ``experiments/<study>.yaml`` read, checked and turned into a typed :class:`StudySpec`.

A study file says what it asks (``description``), which family it tunes, its budget, the
parameters it fixes, the search space (study/space.py), the pruner and the sampler. Every range
is checked against the family's own parameter checks before the first trial starts, so a typo
costs seconds, not a study. docs/studies.md describes every key; in short:

- ``enqueue``: points in the space tried first (e.g. the family's default recipe), once per study.
- ``final``: a budget (e.g. ``{epochs: 8, train_samples: 0}``) the best configuration is retrained
  with after the search, so trials can be cheap while the registered model gets the full recipe;
  ``seeds: k`` retrains it with seeds seed..seed+k-1 and registers the one with the best
  *validation* accuracy, or with ``ensemble: true`` their average (k times the inference cost);
  ``distill: w`` then trains one more network (the first seed) on the average's answers (share w of
  each target, the label the rest) and registers it: one network's inference cost (study/finals.py);
  ``student: {...}`` gives that network its own parameters (e.g. wider ``filters``), and its own cost.
- ``reference``: what the study's gain is measured against, on the same test images (the paired
  difference with a bootstrap 95% interval and an exact McNemar p-value)::

    reference: default                  # the family's default recipe (``fixed`` not applied); the default
    reference: {params: {dropout: 0.2}} # a named configuration, checked like ``fixed``
    reference: {run_id: "<run id>"}     # a run already measured: its logged Keras model is scored
    reference: off                      # no reference, no gain

  ``default`` and ``params`` are trained with the recipe the family's entry point trains (its own
  epochs, early stopping and schedule) on the candidate's images (``final``'s train_samples, else
  the trials'; the same val_fraction) with its seed, in a nested run named ``reference`` (in a lone
  worker's second process with one TensorFlow thread, so not its bits). The default recipe trained
  as long as the candidate can be worse than the recipe itself (a network without augmentation
  may overfit by then), hence its own epochs; ``{params: {epochs: N}}`` names a length.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
import yaml

from .. import params as P
from ..data import FASHION_MNIST, DatasetInfo
from ..params import ConfigError, TuneArgs
from ..params.migrations import builders_own, drop_retired, refusal, retired
from ..params.table import family_params
from .goals import Goals, check_search, parse_goals
from .space import Dist, parse_space

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"
BUDGET_DEFAULTS = {"n_trials": 10, "timeout": 0, "epochs": 5, "train_samples": 0}
PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "threshold": optuna.pruners.ThresholdPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "none": optuna.pruners.NopPruner,
}
SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
            "nsga2": optuna.samplers.NSGAIISampler}
CONSTRAINED_SAMPLERS = ("tpe", "nsga2")  # those that read the trials' constraint values
# a reference is trained on the candidate's images with its seed, so it may not set these (its epochs
# are its own: the family's default, or what its params name)
REFERENCE_BUDGET = ("train_samples", "val_fraction", "seed", "split_seed", "data", "data_dir")


@dataclass(frozen=True)
class Budget:
    """How much a study invocation may spend: trials, seconds, and each trial's epochs and images."""

    n_trials: int
    timeout: int | None  # seconds after which no new trial starts; None: no limit
    epochs: int  # per trial
    train_samples: int  # per trial; 0 = all

    @classmethod
    def from_file(cls, raw: dict[str, Any]) -> Budget:
        """The file's ``budget`` (keys already checked), where a timeout of 0 means no limit."""
        given = cls(**{**BUDGET_DEFAULTS, **raw})
        return replace(given, timeout=given.timeout or None)

    def with_command_line(self, args: TuneArgs) -> Budget:
        """The command line wins where it gives a value; its timeout 0 lifts the file's limit."""
        timeout = self.timeout if args.timeout is None else (args.timeout or None)
        return Budget(n_trials=self.n_trials if args.n_trials is None else args.n_trials, timeout=timeout,
                      epochs=self.epochs if args.epochs is None else args.epochs,
                      train_samples=self.train_samples if args.train_samples is None else args.train_samples)

    def flat(self) -> dict[str, int]:
        """As a study file writes it (timeout 0 = no limit), for the parent run's budget_* parameters."""
        return {"n_trials": self.n_trials, "timeout": self.timeout or 0, "epochs": self.epochs,
                "train_samples": self.train_samples}


@dataclass(frozen=True)
class Reference:
    """What a study's gain is measured against (the study file's ``reference``)."""

    kind: str  # "default", "params", "run" or "off"
    params: dict[str, Any] = field(default_factory=dict)  # kind "params": family parameters
    run_id: str = ""  # kind "run"

    def describe(self) -> str:
        return {"default": "the default recipe", "params": f"params {self.params}",
                "run": f"run {self.run_id}", "off": "off"}[self.kind]


def parse_reference(value: Any, where: str) -> Reference:
    """``default``, ``off``, ``{params: {...}}`` or ``{run_id: ...}``; anything else is refused."""
    if value is False or value == "off":  # YAML reads a bare off as false
        return Reference("off")
    if value == "default":
        return Reference("default")
    if isinstance(value, dict) and set(value) == {"params"} and isinstance(value["params"], dict):
        return Reference("params", params=dict(value["params"]))
    if isinstance(value, dict) and set(value) == {"run_id"} and isinstance(value["run_id"], str) \
            and value["run_id"].strip():
        return Reference("run", run_id=value["run_id"].strip())
    raise ConfigError(f"{where}: reference must be default, off, {{params: {{...}}}} or {{run_id: \"<MLflow run "
                      f"id>\"}} (quote the id); got {value!r}")


@dataclass(frozen=True)
class Final:
    """The study file's ``final``: family parameters of the retrain, how many seeds, and whether
    their average is registered."""

    params: dict[str, Any] = field(default_factory=dict)
    seeds: int = 1
    ensemble: bool = False
    distill: float = 0.0  # > 0: one more network fitted to the ensemble's answers (this share) is registered
    student: dict[str, Any] = field(default_factory=dict)  # what that network changes of the final recipe


@dataclass(frozen=True)
class StudySpec:
    path: Path
    text: str
    description: str
    family: str
    budget: Budget
    fixed: dict[str, Any]
    space: dict[str, Dist]
    pruner: dict[str, Any]
    sampler: dict[str, Any]
    goals: Goals = field(default_factory=Goals)  # objectives, constraints, choice, promotion (study/goals.py)
    final: Final = field(default_factory=Final)
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    reference: Reference = field(default_factory=lambda: Reference("default"))

    @property
    def reference_family(self) -> str:
        """The family the reference recipe is of: a user's network is measured against the default family's."""
        return P.table.reference_family(self.family)

    @property
    def retrains(self) -> bool:
        """Whether the chosen configuration is retrained after the search (``final``)."""
        return bool(self.final.params) or self.final.seeds > 1

    def make_pruner(self) -> optuna.pruners.BasePruner:
        kind, kwargs = _kind(self.pruner, PRUNERS, "pruner")
        return PRUNERS[kind](**kwargs)

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        kind, kwargs = _kind(self.sampler, SAMPLERS, "sampler")
        return SAMPLERS[kind](**{"seed": seed, **kwargs})


def _kind(spec: dict[str, Any], table: dict[str, Any], what: str) -> tuple[str, dict[str, Any]]:
    kwargs = dict(spec)
    kind = kwargs.pop("type", None)
    if kind not in table:
        raise ConfigError(f"{what} type {kind!r}: choose one of {', '.join(table)}")
    return kind, kwargs


def resolve_path(study: str | None, family: str | None) -> Path:
    """Not given -> experiments/<family>.yaml; a bare name -> experiments/<name>.yaml; else a path."""
    if not study and family and P.table.names_its_builder(family):
        raise ConfigError(f"family={family} tunes your own network, which a study file names "
                          "(model: FILE.py:FUNCTION): give study=, e.g. study=residual (experiments/residual.yaml), "
                          "docs/networks.md")
    if not study:
        return EXPERIMENTS_DIR / f"{family or P.DEFAULT_FAMILY}.yaml"
    p = Path(study)
    if p.suffix not in (".yaml", ".yml") and not p.exists():
        p = EXPERIMENTS_DIR / f"{study}.yaml"
    return p


# The cnn study for data a command names without a study file (docs/studies.md, 'A study for your data'): the
# default study (cnn.yaml) asks for mirror images and 10,000 training images, which a folder seldom allows.
SMALL_SIDE = 16  # images.yaml's widths search four halvings, which need 16x16 images or more


def for_data(info: DatasetInfo) -> tuple[str, str]:
    """The study file (its name in experiments/) a cnn study of ``info``'s images uses when none is given, and
    why, in words."""
    h, w, c = info.shape
    if info.name == FASHION_MNIST.name:
        return "cnn", "the default study, for Fashion-MNIST"
    if min(h, w) < SMALL_SIDE:
        return "digits", f"for images under {SMALL_SIDE} pixels a side ({info.name}: {h}x{w}x{c})"
    return "images", f"for your own images of {SMALL_SIDE}x{SMALL_SIDE} pixels or more ({info.name}: {h}x{w}x{c})"


def load(study: str | None, family: str | None) -> StudySpec:
    """The study file ``study`` (see :func:`resolve_path`); ``family`` None means the file's own."""
    path = resolve_path(study, family)
    if not path.is_file():
        known = ", ".join(sorted(q.stem for q in EXPERIMENTS_DIR.glob("*.yaml")))
        raise ConfigError(f"study file {path} not found; the studies in experiments/ are: {known}")
    return parse(path.read_text(), path, family)


def parse(text: str, path: Path, family: str | None = None, *, stored: bool = False) -> StudySpec:
    """A StudySpec from a study file's text: read from ``path``, or stored on an Optuna study
    (``stored``; then ``path`` is the name the file had). ``family`` None means the file's own (else
    cnn). A stored file is the one its trials ran with: what earlier code accepted and this code
    refuses in a new file (a searched seed or epochs) is let through, so that the study resumes."""
    try:
        raw = P.table.load_yaml(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    model = raw.get("model")
    own = P.table.OWN_NETWORK
    if model is not None and raw.get("family", own) != own:
        raise ConfigError(f"{path}: model: names your own network, but family is {raw['family']!r}: drop family "
                          f"(a study with a model tunes family {own})")
    spec_family = own if model is not None else raw.get("family") or family or P.DEFAULT_FAMILY
    if P.table.names_its_builder(spec_family) and model is None:
        raise ConfigError(f"{path}: family {spec_family} tunes your own network: name its builder, e.g. "
                          "model: examples/residual.py:build (docs/networks.md)")
    final_raw = raw.get("final") or {}
    student_raw = final_raw.get("student") if isinstance(final_raw, dict) else None
    if any(isinstance(section, dict) and "model" in section
           for section in (raw.get("fixed"), raw.get("space"), final_raw, student_raw)):
        raise ConfigError(f"{path}: the builder is the study file's top-level model:, one for the whole study, not a "
                          "fixed, searched, final or student value")
    if family and spec_family != family:
        raise ConfigError(f"{path} tunes family {spec_family!r} but family={family!r} was asked for")
    unknown_budget = set(raw.get("budget", {})) - set(BUDGET_DEFAULTS)
    if unknown_budget:
        raise ConfigError(f"{path}: unknown budget key(s) {sorted(unknown_budget)}; known: {sorted(BUDGET_DEFAULTS)}")
    goals = parse_goals(raw, str(path))
    final = dict(raw.get("final") or {})
    seeds = final.pop("seeds", 1)  # not a family parameter: how many times the final retrain runs
    ensemble = final.pop("ensemble", False)  # nor this: what is registered of the seeds' models
    distill = final.pop("distill", 0.0)  # nor this: a student of the ensemble registered instead
    student = final.pop("student", None)  # the student's own family parameters (e.g. wider filters)
    # a parameter that left the package: absent at the value that trains as today (so a stored study resumes),
    # else refused with the commit that trains it
    final = drop_retired(final, f"{path}: final", spec_family)
    student = drop_retired(student, f"{path}: final.student", spec_family) if isinstance(student, dict) else student
    spec = StudySpec(
        path=path,
        text=text,
        description=str(raw.get("description", "")).strip(),
        family=spec_family,
        budget=Budget.from_file(raw.get("budget", {})),
        fixed={**({"model": model} if model is not None else {}),
               **drop_retired(dict(raw.get("fixed") or {}), f"{path}: fixed", spec_family)},
        space=parse_space(raw.get("space", {}), str(path)),
        pruner=dict(raw.get("pruner", {"type": "none" if goals.multi else "median"})),  # no pruning with several
        sampler=dict(raw.get("sampler", {"type": "tpe"})),
        goals=goals,
        final=Final(final, seeds, ensemble, distill, {} if student is None else student),
        enqueue=list(raw.get("enqueue") or []),
        reference=parse_reference(raw.get("reference", "default"), str(path)),
    )
    if spec.reference.params:  # the reference's family's parameters (cnn for your own network's study)
        params = drop_retired(spec.reference.params, f"{path}: reference params", spec.reference_family)
        spec = replace(spec, reference=replace(spec.reference, params=params))
    check(spec, stored=stored)
    return spec


RUN_ONLY = ("seed", "data", "data_dir")  # one per invocation: the command line's
BUDGET_ONLY = ("epochs", "train_samples")  # per trial from the budget; searched, Optuna would record unused values


def check(spec: StudySpec, *, stored: bool = False) -> None:
    """Refuse a space whose names or bounds the family would refuse, before any trial runs."""
    where = str(spec.path)
    if not spec.description:
        raise ConfigError(f"{where}: add a one-sentence 'description' of what the study asks")
    names = {p.name for p in family_params(spec.family)}
    overlap = set(spec.fixed) & set(spec.space)
    if overlap:
        raise ConfigError(f"{where}: {sorted(overlap)} both fixed and searched")
    for section, key in [*(("fixed", k) for k in spec.fixed), *(("space", k) for k in spec.space),
                         *(("final", k) for k in spec.final.params)]:
        if stored and key in (*RUN_ONLY, *BUDGET_ONLY):  # a study earlier code ran: it trained the sampled
            pass  # value, and still does (study.setup.study_layers)
        elif key in RUN_ONLY and (section, key) != ("final", "seed"):  # final.seed: the retrain's first seed
            raise ConfigError(f"{where}: {key!r} is the command line's, not the study file's (it would be "
                              f"overridden unnoticed): give it as --{key} (mlflow run: -P {key}=...)")
        elif key in BUDGET_ONLY and key in spec.space:
            raise ConfigError(f"{where}: {key!r} cannot be searched: it is the budget's (budget.{key} for trials, "
                              f"final.{key} for the final retrain), and the command line's --{key} overrides it")
        elif key in ("val_fraction", "split_seed") and section == "space" and not stored:
            raise ConfigError(f"{where}: {key!r} cannot be searched: it decides which images validate each "
                              "trial, so the trials would be compared on different images; fix it in 'fixed'")
        left = retired().get(key)  # searched (parse read one fixed at today's value as absent)
        if left and left[0].applies(spec.family, {}) and not builders_own(left[0], spec.family):
            raise ConfigError(f"{where}: space.{key}: {refusal(key, spec.space[key].as_file())}; remove it")
        if key not in names and not P.table.names_its_builder(spec.family):  # else a name of the builder's own
            raise ConfigError(f"{where}: {key!r} is not a {spec.family} parameter; known: {', '.join(sorted(names))}")
    P.family(spec.family, spec.fixed)
    P.family(spec.family, {**spec.fixed, **spec.final.params})
    seeds = spec.final.seeds
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ConfigError(f"{where}: final.seeds={seeds!r}: must be an integer >= 1 "
                          "(how many seeds the final retrain uses)")
    if not isinstance(spec.final.ensemble, bool):
        raise ConfigError(f"{where}: final.ensemble={spec.final.ensemble!r}: must be true or false")
    if spec.final.ensemble and seeds < 2:
        raise ConfigError(f"{where}: final.ensemble averages the final retrain's seeds, but final.seeds is "
                          f"{seeds}: set final.seeds to 2 or more, or drop ensemble")
    check_distill(spec.final, where)
    check_student(spec, where)
    check_reference(spec, where)
    for key, dist in spec.space.items():
        for value in dist.corners():
            P.family(spec.family, {**spec.fixed, key: value})
    for point in spec.enqueue:
        check_point(spec, point, where)
    spec.make_pruner()
    spec.make_sampler(0)
    check_search(spec.goals, str(spec.pruner.get("type")), str(spec.sampler.get("type")), CONSTRAINED_SAMPLERS, where)


def check_distill(final: Final, where: str) -> None:
    """``final.distill``: the teacher's share of each training target, 0 (off) to 1; the teacher is the ensemble."""
    weight = final.distill
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 1:
        raise ConfigError(f"{where}: final.distill={weight!r}: must be a number from 0 (off) to 1, the share of "
                          "the ensemble's answers in each training target of the distilled network (e.g. 0.8)")
    if weight and not final.ensemble:
        raise ConfigError(f"{where}: final.distill trains one network on the answers of the seeds' average, but "
                          "final.ensemble is off: set ensemble: true (and seeds: 2 or more), or drop distill")


# the first seed's images and split
STUDENT_KEEPS = ("seed", "split_seed", "data", "data_dir", "val_fraction", "train_samples")


def check_student(spec: StudySpec, where: str) -> None:
    """``final.student``: family parameters in which the distilled network differs from the final
    recipe (its shape, its schedule); not its images, split or seed, which are the first seed's: the
    teacher answers on those images and the ensemble is validated on what no seed trained on."""
    student = spec.final.student
    if not isinstance(student, dict):
        raise ConfigError(f"{where}: final.student={student!r}: must be a mapping of {spec.family} parameters "
                          "the distilled network changes, e.g. {filters: \"32,64,192,384\"}")
    if student and not spec.final.distill:
        raise ConfigError(f"{where}: final.student sets the distilled network's parameters, but final.distill is "
                          "off: set distill (e.g. 0.8), or drop student")
    names = {p.name for p in family_params(spec.family)}
    for key in student:
        if key in STUDENT_KEEPS:
            raise ConfigError(f"{where}: final.student: {key!r} is not the student's to change: it trains on the "
                              f"first seed's images, split and start (the teacher answers on those); remove it")
        if key not in names and not P.table.names_its_builder(spec.family):
            raise ConfigError(f"{where}: final.student: {key!r} is not a {spec.family} parameter; known: "
                              f"{', '.join(sorted(names))}")
    P.family(spec.family, {**spec.fixed, **spec.final.params, **student})


def check_reference(spec: StudySpec, where: str) -> None:
    """A named reference configuration is checked like ``fixed``; its images and seed are the candidate's."""
    family = spec.reference_family
    names = {p.name for p in family_params(family)}
    for key in spec.reference.params:
        if key not in names:
            raise ConfigError(f"{where}: reference params: {key!r} is not a {family} parameter")
        if key in REFERENCE_BUDGET:
            raise ConfigError(f"{where}: reference params: {key!r} is the candidate's (the reference is trained "
                              "on the same images with the same seed); remove it")
    P.family(family, spec.reference.params)


def check_point(spec: StudySpec, point: Any, where: str) -> None:
    """An ``enqueue`` entry: every searched parameter given once, each inside its range; for a user's network
    also values of the builder's own definitions (hp.Int, ...: checked against them when it is built)."""
    own = P.table.names_its_builder(spec.family) and isinstance(point, dict) and set(spec.space) <= set(point)
    if not isinstance(point, dict) or (set(point) != set(spec.space) and not own):
        got = sorted(point) if isinstance(point, dict) else point
        raise ConfigError(f"{where}: each enqueue entry must give exactly the searched parameters "
                          f"{sorted(spec.space)}; got {got}")
    for key, value in point.items():
        if key in spec.space and not spec.space[key].contains(value):
            raise ConfigError(f"{where}: enqueue gives {key}={value!r}, outside the space {spec.space[key].as_file()}")
    P.family(spec.family, {**spec.fixed, **point})
