"""The checked parameters as frozen values: one class per family and per command.

A command reads its values once (:mod:`.resolve` coerces and checks them against the table in
:mod:`.table`) and from then on passes one of these, so a reader and a type checker see which
fields a function uses. ``None`` means "not given". ``flat()`` is the one place a value becomes
the flat dict that MLflow records (widths as "64,32", "not given" as '').
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any, ClassVar


def _flat_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, tuple):
        return ",".join(map(str, v))
    return v


@dataclass(frozen=True, kw_only=True)
class Values:
    """Base of every parameter value: its flat form is what a run logs."""

    def flat(self) -> dict[str, Any]:
        return {f.name: _flat_value(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True, kw_only=True)
class DataParams(Values):
    data: str  # what: fashion-mnist, digits or a path (data.load_dataset)
    data_dir: str | None  # where Fashion-MNIST's files are
    val_fraction: float
    train_samples: int  # 0 = all
    seed: int
    split_seed: int | None  # None: the seed draws the split

    def split_by(self) -> int:
        """The seed that draws the validation split and a quick run's subset."""
        return self.seed if self.split_seed is None else self.split_seed


@dataclass(frozen=True, kw_only=True)
class BaselineParams(DataParams):
    FAMILY: ClassVar[str] = "baseline"
    C: float
    max_iter: int


@dataclass(frozen=True, kw_only=True)
class FitParams(DataParams):
    """What every network's training takes (mlp and cnn alike)."""

    FAMILY: ClassVar[str]

    def logged(self) -> dict[str, Any]:
        """The parameters as a training run logs them: the flat form and the family."""
        return {**self.flat(), "family": self.FAMILY}

    def digest(self) -> str:
        """A short digest of :meth:`logged`: the same recipe gives the same digest in every version
        that logs the same parameters (a study's reference and a trial are found again by it): the
        recipe as earlier versions digested it (migrations.digested), so the digests they stored still match."""
        from .migrations import digested

        logged = digested(self.logged())
        if self.split_seed == self.seed:  # the split the seed alone draws: the same recipe
            logged.pop("split_seed")
        return hashlib.sha256(json.dumps(logged, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def builder(self) -> str:
        """The builder that makes the network (model/builder.py's contract): a built-in family's is its function in
        model/builtin.py, given :meth:`hp_values` as any builder is given its own values."""
        return f"fmnist_exp.model.builtin:{self.FAMILY}"

    def hp_values(self) -> dict[str, Any]:
        """The network's own values, as its builder reads them from ``hp``: a built-in family's fields beyond the
        training recipe, flat (those not given left out: the builder records the value it takes)."""
        return {k: v for k, v in self.flat().items() if k not in _RECIPE and v != ""}

    def training_values(self) -> dict[str, Any]:
        """The platform's training parameters by name (a builder's keras-tuner definition of one of these
        names is the builder's: model/hyperparameters.py)."""
        return {k: v for k, v in self.flat().items() if k in _RECIPE}

    def network_changes(self, values: dict[str, Any]) -> dict[str, Any]:
        """The changes (for params.replaced) that set the network's own values to ``values``."""
        return dict(values)

    def naming(self) -> dict[str, Any]:
        """What names the network beyond its family (a user's: the builder ``model``): the family's recipe with
        nothing else given is ``params.network(FAMILY, naming())``."""
        return {}

    epochs: int | None  # None (the built-in families): their own, raised on small data (params.with_epochs)
    batch_size: int
    learning_rate: float
    warmup_epochs: float
    early_stopping_patience: int  # 0 = off
    monitor: str
    label_smoothing: float
    bn_settle: bool
    precision: str
    augment: bool
    aug_shift: float
    aug_rotate: float
    aug_zoom: float
    tta_shift: int  # 0 = off
    tta_flip: bool


@dataclass(frozen=True, kw_only=True)
class BuiltinParams(FitParams):
    """What the built-in families' networks share (a user's network has its own, in ``hp``)."""

    FAMILY: ClassVar[str]
    dropout: float
    l2: float


@dataclass(frozen=True, kw_only=True)
class MlpParams(BuiltinParams):
    FAMILY: ClassVar[str] = "mlp"
    hidden_units: tuple[int, ...]
    activation: str


@dataclass(frozen=True, kw_only=True)
class CnnParams(BuiltinParams):
    FAMILY: ClassVar[str] = "cnn"
    filters: tuple[int, ...] | None  # None: CNN_FILTERS cut to the images (model.networks.fit_to_data)
    convs_per_block: int
    pool_first: bool
    dense_units: int  # 0 = no dense layer before the softmax
    batch_norm: bool


@dataclass(frozen=True, kw_only=True)
class CustomParams(FitParams):
    """A user's network: the builder ``model`` names (model/builder.py) and its own parameters ``hp``
    (canonical JSON text of a mapping: one spelling per value, so a recipe has one digest)."""

    FAMILY: ClassVar[str] = "custom"
    model: str  # FILE.py:FUNCTION or package.module:function
    hp: str  # JSON object, keys sorted

    @property
    def builder(self) -> str:
        return self.model

    def hp_values(self) -> dict[str, Any]:
        return dict(json.loads(self.hp))

    def network_changes(self, values: dict[str, Any]) -> dict[str, Any]:
        return {"hp": {**self.hp_values(), **values}}

    def naming(self) -> dict[str, Any]:
        return {"model": self.model}


NetworkParams = MlpParams | CnnParams | CustomParams
_RECIPE = frozenset(f.name for f in fields(FitParams))  # what every network trains with; the rest is its own
FamilyParams = BaselineParams | MlpParams | CnnParams | CustomParams
FAMILY_CLASSES: dict[str, type[Values]] = {"baseline": BaselineParams, "mlp": MlpParams, "cnn": CnnParams,
                                           "custom": CustomParams}
WIDTH_FIELDS = ("hidden_units", "filters")  # comma lists on the command line, tuples here


# ----------------------------------------------------------------------------- commands


@dataclass(frozen=True, kw_only=True)
class TrainArgs(Values):
    """baseline, mlp, cnn: one family's parameters and where the run is filed."""

    params: FamilyParams
    experiment: str | None
    system_metrics: bool | None  # None: $MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING where set, else on

    def flat(self) -> dict[str, Any]:
        return {**self.params.flat(), "experiment": _flat_value(self.experiment),
                "system_metrics": _flat_value(self.system_metrics)}


@dataclass(frozen=True, kw_only=True)
class TuneArgs(Values):
    """tune and register (register keeps tune's defaults for what it does not take)."""

    family: str | None
    study: str | None
    n_trials: int | None
    timeout: int | None  # 0 = no limit
    epochs: int | None
    train_samples: int | None  # 0 = all
    study_name: str | None
    storage: str | None
    model_name: str | None  # None: the dataset's (study.setup.prepare resolves it)
    seed: int
    data: str | None  # None: the study's own (study.setup.prepare resolves it), else fashion-mnist
    data_dir: str | None
    register: bool
    promote_alpha: float
    experiment: str | None
    system_metrics: bool | None  # None: $MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING where set, else on


@dataclass(frozen=True, kw_only=True)
class LaunchArgs(Values):
    scheduler: str
    workers: int
    tune: TuneArgs

    def flat(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler, "workers": self.workers, **self.tune.flat()}


@dataclass(frozen=True, kw_only=True)
class PredictArgs(Values):
    model_uri: str  # '': the registry's one model (registry/names.py)


@dataclass(frozen=True, kw_only=True)
class ReproduceArgs(Values):
    model_uri: str  # '': the registry's one model (registry/names.py)
    tolerance: float
    data: str | None  # None: what the original recorded
    data_dir: str | None
    exact: bool
    experiment: str | None


@dataclass(frozen=True, kw_only=True)
class DashboardArgs(Values):
    storage: str | None
    port: int
    host: str


@dataclass(frozen=True, kw_only=True)
class ProxyArgs(Values):
    storage: str | None
    host: str
    port: int


@dataclass(frozen=True, kw_only=True)
class ServeArgs(Values):
    model_name: str  # '': the registry's one model (registry/names.py)
    alias: str
    host: str
    port: int
    poll_s: float
    shadow_fraction: float
    shadow_alias: str
    drain_s: float


@dataclass(frozen=True, kw_only=True)
class PromoteArgs(Values):
    model_name: str  # '': the registry's one model (registry/names.py)
    version: int | None  # required: the command refuses None with what to pass
    reason: str | None
    alias: str


CommandArgs = (TrainArgs | TuneArgs | LaunchArgs | PredictArgs | ReproduceArgs | DashboardArgs | ProxyArgs
               | ServeArgs | PromoteArgs)
