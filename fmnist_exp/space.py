"""Study files: ``experiments/<study>.yaml`` read, checked and turned into Optuna suggestions.

A study file says what it asks (``description``), which family it tunes, its budget, the
parameters it fixes, the search space, the pruner and the sampler. Every range is checked
against the family's own parameter checks before the first trial starts, so a typo costs
seconds, not a study.

Space entries::

    dropout:       {type: float, low: 0.1, high: 0.5}
    learning_rate: {type: float, low: 3.0e-4, high: 5.0e-3, log: true}
    dense_units:   {type: categorical, choices: [64, 128, 256]}
    filters:       {type: widths, layers: [2, 3], units: [16, 32, 64, 128]}

``widths`` suggests a number of layers, then a width per layer (the comma list the builders take).

An optional ``enqueue`` list of points in the space (e.g. the family's default recipe) is
tried first, so a study starts from a known-good configuration instead of from chance; a
resumed study does not try them again.

An optional ``final`` budget (e.g. ``{epochs: 8, train_samples: 0}``) retrains the best
configuration after the search, so trials can be cheap (a subset, few epochs) while the
registered model gets the full recipe. ``final: {seeds: k}`` (default 1) retrains it with k
seeds (seed, seed+1, ...): the parent run gets the mean and standard deviation of their test
accuracy, and the seed with the best *validation* accuracy is registered; with
``final: {seeds: k, ensemble: true}`` the average of the k models is registered instead
(ensemble.py: one model, k times the inference cost).

``reference`` says what the study's gain is measured against, on the same test images
(the paired difference with a bootstrap 95% interval and an exact McNemar p-value):

    reference: default                  # the family's default recipe (``fixed`` not applied); the default
    reference: {params: {dropout: 0.2}} # a named configuration, checked like ``fixed``
    reference: {run_id: "<run id>"}     # a run already measured: its logged Keras model is scored
    reference: off                      # no reference, no gain

``default`` and ``params`` are trained with the recipe the family's entry point trains (its own
epochs, early stopping and schedule: ``default`` is the recipe of ``mlflow run . -e <family>``;
in a lone worker's second process with one TensorFlow thread, so not its bits) on the
candidate's images (``final``'s train_samples, else the trials'; the same val_fraction) with its
seed, in a nested run named ``reference``. A longer final retrain is part of what the study is measured for: the
default recipe trained as long as the candidate can be worse than the recipe itself (the ``cnn``
without augmentation overfits at 12 epochs). ``{params: {epochs: N}}`` names a length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import optuna
import yaml

from . import config as C
from .config import ConfigError

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"
BUDGET_KEYS = {"n_trials": 10, "timeout": 0, "epochs": 5, "train_samples": 0}
PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "threshold": optuna.pruners.ThresholdPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "none": optuna.pruners.NopPruner,
}
SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
SPACE_TYPES = ("float", "int", "categorical", "widths")
# a reference is trained on the candidate's images with its seed, so it may not set these (its epochs
# are its own: the family's default, or what its params name)
REFERENCE_BUDGET = ("train_samples", "val_fraction", "seed", "data_dir")


@dataclass(frozen=True)
class Reference:
    """What a study's gain is measured against (the study file's ``reference``)."""

    kind: str  # "default", "params", "run" or "off"
    params: dict = field(default_factory=dict)  # kind "params": family parameters
    run_id: str = ""  # kind "run"

    def describe(self) -> str:
        return {"default": "the default recipe", "params": f"params {self.params}",
                "run": f"run {self.run_id}", "off": "off"}[self.kind]


def parse_reference(value, where: str) -> Reference:
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


@dataclass
class StudySpec:
    path: Path
    text: str
    description: str
    family: str
    budget: dict
    fixed: dict
    space: dict
    pruner: dict
    sampler: dict
    objective: str = C.VAL_ACC
    final: dict = field(default_factory=dict)  # family parameters of the final retrain
    final_seeds: int = 1
    final_ensemble: bool = False  # register the average of the seeds' models
    enqueue: list = field(default_factory=list)
    reference: Reference = field(default_factory=lambda: Reference("default"))

    @property
    def retrains(self) -> bool:
        """Whether the chosen configuration is retrained after the search (``final``)."""
        return bool(self.final) or self.final_seeds > 1

    def make_pruner(self) -> optuna.pruners.BasePruner:
        kind, kwargs = _kind(self.pruner, PRUNERS, "pruner")
        return PRUNERS[kind](**kwargs)

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        kind, kwargs = _kind(self.sampler, SAMPLERS, "sampler")
        return SAMPLERS[kind](**{"seed": seed, **kwargs})


def _kind(spec: dict, table: dict, what: str) -> tuple[str, dict]:
    kwargs = dict(spec)
    kind = kwargs.pop("type", None)
    if kind not in table:
        raise ConfigError(f"{what} type {kind!r}: choose one of {', '.join(table)}")
    return kind, kwargs


def resolve_path(study: str, family: str) -> Path:
    """'' -> experiments/<family>.yaml; a bare name -> experiments/<name>.yaml; else a path."""
    if not study:
        return EXPERIMENTS_DIR / f"{family or C.DEFAULT_FAMILY}.yaml"
    p = Path(study)
    if p.suffix not in (".yaml", ".yml") and not p.exists():
        p = EXPERIMENTS_DIR / f"{study}.yaml"
    return p


def load(study: str, family: str) -> StudySpec:
    """The study file ``study`` (see :func:`resolve_path`); ``family`` '' means the file's own."""
    path = resolve_path(study, family)
    if not path.is_file():
        known = ", ".join(sorted(q.stem for q in EXPERIMENTS_DIR.glob("*.yaml")))
        raise ConfigError(f"study file {path} not found; the studies in experiments/ are: {known}")
    return parse(path.read_text(), path, family)


def parse(text: str, path: Path, family: str = "") -> StudySpec:
    """A StudySpec from a study file's text: read from ``path``, or stored on an Optuna study
    (then ``path`` is the name the file had). ``family`` '' means the file's own (else cnn)."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    spec_family = raw.get("family") or family or C.DEFAULT_FAMILY
    if family and spec_family != family:
        raise ConfigError(f"{path} tunes family {spec_family!r} but family={family!r} was asked for")
    unknown_budget = set(raw.get("budget", {})) - set(BUDGET_KEYS)
    if unknown_budget:
        raise ConfigError(f"{path}: unknown budget key(s) {sorted(unknown_budget)}; known: {sorted(BUDGET_KEYS)}")
    final = dict(raw.get("final") or {})
    seeds = final.pop("seeds", 1)  # not a family parameter: how many times the final retrain runs
    ensemble = final.pop("ensemble", False)  # nor this: what is registered of the seeds' models
    spec = StudySpec(
        path=path,
        text=text,
        description=str(raw.get("description", "")).strip(),
        family=spec_family,
        budget={**BUDGET_KEYS, **raw.get("budget", {})},
        fixed=dict(raw.get("fixed", {})),
        space=dict(raw.get("space", {})),
        pruner=dict(raw.get("pruner", {"type": "median"})),
        sampler=dict(raw.get("sampler", {"type": "tpe"})),
        objective=raw.get("objective", C.VAL_ACC),
        final=final,
        final_seeds=seeds,
        final_ensemble=ensemble,
        enqueue=list(raw.get("enqueue") or []),
        reference=parse_reference(raw.get("reference", "default"), str(path)),
    )
    check(spec)
    return spec


def check(spec: StudySpec) -> None:
    """Refuse a space whose names or bounds the family would refuse, before any trial runs."""
    where = str(spec.path)
    if not spec.description:
        raise ConfigError(f"{where}: add a one-sentence 'description' of what the study asks")
    if spec.objective != C.VAL_ACC:
        raise ConfigError(f"{where}: objective {spec.objective!r} is not produced; trials report {C.VAL_ACC}")
    names = {p.name for p in C.family_params(spec.family)}
    overlap = set(spec.fixed) & set(spec.space)
    if overlap:
        raise ConfigError(f"{where}: {sorted(overlap)} both fixed and searched")
    for key in [*spec.fixed, *spec.space, *spec.final]:
        if key not in names:
            raise ConfigError(f"{where}: {key!r} is not a {spec.family} parameter; known: {', '.join(sorted(names))}")
    C.resolve(spec.family, spec.fixed)
    C.resolve(spec.family, {**spec.fixed, **spec.final})
    if not isinstance(spec.final_seeds, int) or isinstance(spec.final_seeds, bool) or spec.final_seeds < 1:
        raise ConfigError(f"{where}: final.seeds={spec.final_seeds!r}: must be an integer >= 1 "
                          "(how many seeds the final retrain uses)")
    if not isinstance(spec.final_ensemble, bool):
        raise ConfigError(f"{where}: final.ensemble={spec.final_ensemble!r}: must be true or false")
    if spec.final_ensemble and spec.final_seeds < 2:
        raise ConfigError(f"{where}: final.ensemble averages the final retrain's seeds, but final.seeds is "
                          f"{spec.final_seeds}: set final.seeds to 2 or more, or drop ensemble")
    check_reference(spec, where)
    for key, dist in spec.space.items():
        for value in corner_values(key, dist, where):
            C.resolve(spec.family, {**spec.fixed, key: value})
    for point in spec.enqueue:
        check_point(spec, point, where)
    spec.make_pruner()
    spec.make_sampler(0)


def check_reference(spec: StudySpec, where: str) -> None:
    """A named reference configuration is checked like ``fixed``; its images and seed are the candidate's."""
    params = spec.reference.params
    names = {p.name for p in C.family_params(spec.family)}
    for key in params:
        if key not in names:
            raise ConfigError(f"{where}: reference params: {key!r} is not a {spec.family} parameter")
        if key in REFERENCE_BUDGET:
            raise ConfigError(f"{where}: reference params: {key!r} is the candidate's (the reference is trained "
                              "on the same images with the same seed); remove it")
    C.resolve(spec.family, params)


def check_point(spec: StudySpec, point, where: str) -> None:
    """An ``enqueue`` entry: every searched parameter given once, each inside its range."""
    if not isinstance(point, dict) or set(point) != set(spec.space):
        got = sorted(point) if isinstance(point, dict) else point
        raise ConfigError(f"{where}: each enqueue entry must give exactly the searched parameters "
                          f"{sorted(spec.space)}; got {got}")
    for key, value in point.items():
        d = spec.space[key]
        if d["type"] == "widths":
            try:
                widths = C.parse_int_list(value)
            except ValueError:
                widths = []
            lo, hi = d["layers"]
            inside = lo <= len(widths) <= hi and all(w in d["units"] for w in widths)
        else:
            inside = value in d["choices"] if d["type"] == "categorical" else d["low"] <= value <= d["high"]
        if not inside:
            raise ConfigError(f"{where}: enqueue gives {key}={value!r}, outside the space {d}")
    C.resolve(spec.family, {**spec.fixed, **point})


def corner_values(key: str, dist: dict, where: str) -> list:
    """The extreme values a distribution can produce, checked like user input."""
    kind = dist.get("type")
    if kind not in SPACE_TYPES:
        raise ConfigError(f"{where}: {key} has type {kind!r}; use one of {', '.join(SPACE_TYPES)}")
    try:
        if kind in ("float", "int"):
            if dist["low"] > dist["high"]:
                raise ConfigError(f"{where}: {key} has low > high")
            if dist.get("log") and dist["low"] <= 0:
                raise ConfigError(f"{where}: {key} is log-scaled, so low must be > 0")
            return [dist["low"], dist["high"]]
        if kind == "categorical":
            if not dist["choices"]:
                raise ConfigError(f"{where}: {key} has no choices")
            return list(dist["choices"])
        lo, hi = dist["layers"]
        return [",".join([str(u)] * n) for n in (lo, hi) for u in (min(dist["units"]), max(dist["units"]))]
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {key} is malformed ({e!r}); see the examples in fmnist_exp/space.py") from None


def as_trial_params(space: dict, point: dict) -> dict:
    """An ``enqueue`` point in Optuna's own parameter names (``widths`` become a count and one
    choice per layer, as :func:`suggest` draws them)."""
    out = {}
    for key, value in point.items():
        if space[key]["type"] == "widths":
            widths = C.parse_int_list(value)
            out[f"{key}_layers"] = len(widths)
            out.update({f"{key}_{i}": w for i, w in enumerate(widths)})
        else:
            out[key] = value
    return out


def suggest(trial: optuna.Trial, space: dict) -> dict:
    """Draw one configuration. The only place that calls ``trial.suggest_*``."""
    out = {}
    for key, d in space.items():
        kind = d["type"]
        if kind == "float":
            out[key] = trial.suggest_float(key, d["low"], d["high"], log=bool(d.get("log")))
        elif kind == "int":
            out[key] = trial.suggest_int(key, d["low"], d["high"], log=bool(d.get("log")))
        elif kind == "categorical":
            out[key] = trial.suggest_categorical(key, d["choices"])
        else:
            n = trial.suggest_int(f"{key}_layers", *d["layers"])
            out[key] = ",".join(str(trial.suggest_categorical(f"{key}_{i}", d["units"])) for i in range(n))
    return out
