"""The one parameter table: every parameter of every entry point, with its default, help and check.

Each family (baseline, mlp, cnn) and each command is a list of :class:`Param`. The CLI builds its
flags from these lists, MLproject forwards the same names (scripts/gen_mlproject.py writes it from
here, a test keeps the two equal), and :mod:`.typed` turns them into frozen values. A default of
``None`` means "not given": the command then takes the value from somewhere else (a study file,
the environment), and the help text says where.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..metrics import VAL_ACC, VAL_LOSS
from .errors import ConfigError

ACTIVATIONS = ("relu", "gelu", "elu", "selu", "swish", "tanh")
MONITORS = (VAL_LOSS, VAL_ACC)
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
FAMILIES = ("baseline", "mlp", "cnn", "custom")
NETWORK_FAMILIES = ("mlp", "cnn", "custom")
DEFAULT_FAMILY = "cnn"  # what tune tunes when neither the study, its file nor the user names a family
OWN_NETWORK = "custom"  # the family of a network made by a builder the user names (model: FILE.py:FUNCTION)


def names_its_builder(family: str) -> bool:
    """Whether ``family``'s network is made by a builder the user names: its study file must name it, and a
    parameter name that is not the platform's is the builder's own (its hp), not a typo."""
    return family == OWN_NETWORK


def reference_family(family: str) -> str:
    """The family whose default recipe a study of ``family`` is measured against: a user's network is
    measured against the default family's."""
    return DEFAULT_FAMILY if names_its_builder(family) else family


Check = Callable[[Any], "str | None"]  # returns what is wrong, or None


@dataclass(frozen=True)
class Param:
    name: str
    default: Any  # None: not given (see the module docstring)
    help: str
    check: Check | None = None
    kind: type | None = None  # the value's type where the default (None) does not tell it

    @property
    def type(self) -> type:
        return self.kind or type(self.default)


# ----------------------------------------------------------------------------- checks


def in_range(lo, hi, *, lo_open=False, hi_open=False) -> Check:
    def check(v):
        too_low = v <= lo if lo_open else v < lo
        too_high = v >= hi if hi_open else v > hi
        if too_low or too_high:
            lb, rb = ("(" if lo_open else "["), (")" if hi_open else "]")
            return f"must be in {lb}{lo}, {hi}{rb}"
        return None

    return check


def one_of(choices) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(map(str, choices))}"


def int_list(lo, hi, *, min_len=1, max_len=6) -> Check:
    def check(v):
        try:
            items = parse_int_list(v)
        except ValueError:
            return "must be a comma-separated list of integers, e.g. 256,128"
        if not min_len <= len(items) <= max_len:
            return f"must list {min_len} to {max_len} integers"
        if any(not lo <= i <= hi for i in items):
            return f"every entry must be in [{lo}, {hi}]"
        return None

    return check


def parse_int_list(text) -> list[int]:
    """'64, 32' (or a list of integers) -> [64, 32]."""
    if isinstance(text, (list, tuple)):
        return [int(t) for t in text]
    return [int(t) for t in str(text).replace(" ", "").split(",") if t]


def builder_ref(v) -> str | None:
    """``model``: FILE.py:FUNCTION or package.module:function (model/builder.py loads it)."""
    module, sep, function = str(v).strip().rpartition(":")
    if not sep or not module or not function.isidentifier():
        return ("must name a builder as FILE.py:FUNCTION or package.module:function, e.g. "
                "examples/residual.py:build (a function build(hp, input_shape, num_classes) returning a Keras model)")
    return None


def hp_mapping(v) -> str | None:
    """``hp``: a YAML or JSON mapping of the builder's own parameters."""
    try:
        parse_hp(v)
    except ValueError as e:
        return str(e)
    return None


# ----------------------------------------------------------------------------- families

DATA = Param("data", "fashion-mnist", "the images: fashion-mnist; digits (scikit-learn's 1,797 8x8 digits); or a "
             "path: an image folder (DIR/<class>/*.png|jpg, or DIR/train/<class>/... with DIR/test/<class>/...), a "
             ".npz with x_train, y_train, x_test, y_test, or a folder of IDX or CSV files; DIR/dataset.yaml may name "
             "the classes, the image size and flips (docs/data.md). It wins over data_dir, which only says where "
             "Fashion-MNIST's own files are")
DATA_DIR = Param("data_dir", None, "where Fashion-MNIST's files are (data=fashion-mnist only): a folder with the IDX "
                 "files or CSV pair (not given: $FMNIST_DATA_DIR, then the usual places, docs/data.md)", kind=str)

DATA_PARAMS = [
    DATA,
    DATA_DIR,
    Param("val_fraction", 0.1, "share of the training set held out for validation", in_range(0.01, 0.5)),
    Param("train_samples", 0, "limit training images for quick runs (0 = all)",
          lambda v: None if v == 0 or v >= 100 else "must be 0 (all) or at least 100"),
    Param("seed", 42, "seed for the initialisation, shuffling and (unless split_seed) the split",
          in_range(0, 2**31 - 1)),
    Param("split_seed", None, "seed for the validation split and a quick run's subset alone (not given: seed); an "
          "ensemble's seeds that share one split are validated on all of it (docs/studies.md)",
          in_range(0, 2**31 - 1), kind=int),
]

FIT_PARAMS = [
    Param("epochs", 15, "most epochs to train (early stopping may end sooner)", in_range(1, 1000)),
    Param("batch_size", 128, "images per gradient step", in_range(1, 8192)),
    Param("learning_rate", 0.002, "Adam's learning rate where the cosine decay starts (after any warm-up); it "
          "falls to zero by the last epoch", in_range(0, 1, lo_open=True)),
    Param("warmup_epochs", 0.0, "epochs of linear learning-rate warm-up before the cosine decay",
          in_range(0, 100)),
    Param("early_stopping_patience", 4, "epochs without improvement before training stops (0 = off)",
          in_range(0, 1000)),
    Param("monitor", "val_loss", "what early stopping watches", one_of(MONITORS)),
    Param("label_smoothing", 0.0, "share of each label spread over the other classes in the loss",
          in_range(0, 0.5, hi_open=True)),
    Param("bn_settle", True, "batch normalisation's moving statistics settle within every epoch, so validation "
          "reads the statistics of the network being trained: while it trains, a layer's momentum is lowered where "
          "an epoch has too few steps to forget the statistics it started from (momentum^steps <= 0.001: the cnn "
          "family's 0.9 stays from 66 steps an epoch, Keras' default 0.99 from 688); false: each layer's own "
          "momentum, as runs before this parameter trained"),
    Param("precision", "auto", "auto: mixed_float16 where a GPU is visible, mixed_bfloat16 on a CPU with "
          "bfloat16 instructions (AMX-BF16 or AVX512-BF16) under TensorFlow, else float32; or name one "
          "(docs/speed.md)", one_of(PRECISIONS)),
    Param("augment", False, "random horizontal flips (where the dataset says a mirror image keeps its label), "
          "shifts, rotations and zoom while training"),
    Param("aug_shift", 0.08, "largest random shift, as a share of the image side (augment)", in_range(0, 0.5)),
    Param("aug_rotate", 0.03, "largest random rotation, as a share of a full turn (augment; 0 = none)",
          in_range(0, 0.5)),
    Param("aug_zoom", 0.08, "largest random zoom in or out, as a share of the image side (augment; 0 = none)",
          in_range(0, 0.9, hi_open=True)),
    Param("tta_shift", 0, "the trained model also answers for the image moved this many pixels left, right, up "
          "and down, and averages (multi-crop test-time augmentation: 5x the passes, 10x with tta_flip; pair it "
          "with aug_shift; 0 = off)", in_range(0, 4)),
    Param("tta_flip", False, "the trained model answers with the mean of its predictions for the image and "
          "its mirror image (test-time augmentation; 2x inference cost; pair it with augment=true: a network "
          "never shown mirror images loses accuracy; refused on data whose mirror images change their label)"),
]

NET_COMMON = [
    Param("dropout", 0.3, "dropout rate before each dense layer", in_range(0, 1, hi_open=True)),
    Param("l2", 1e-4, "L2 weight penalty on every kernel", in_range(0, 1)),
]


def restate(name: str, default: Any) -> Param:
    """A shared fit parameter with a family's own default (same help, same check)."""
    return replace(next(p for p in FIT_PARAMS if p.name == name), default=default)


# A built-in family's epochs where none are given (params.with_epochs): its own number, raised where an epoch is
# so few optimizer steps that training would take fewer than MIN_STEPS (a few hundred images:
# BENCHMARKS.md, 'Your own data'). Fashion-MNIST (422 steps an epoch) and the default study's 10,000 images (79)
# keep the number.
EPOCHS = {"mlp": 15, "cnn": 9}
MIN_STEPS = 200


def family_epochs(family: str) -> Param:
    return replace(restate("epochs", None), kind=int, help=(
        f"most epochs to train (early stopping may end sooner) (not given: {EPOCHS[family]}, or more where an epoch "
        f"is few optimizer steps, so that training takes at least {MIN_STEPS} steps; the run logs how many: "
        "docs/data.md, 'A few hundred images')"))


CNN_FILTERS = "32,64,128,256"  # the cnn family's widths where the images allow four blocks (28x28 and larger)

FAMILY_PARAMS = {
    "baseline": [
        Param("C", 1.0, "inverse regularisation strength of the logistic regression", in_range(0, 1e6, lo_open=True)),
        Param("max_iter", 100, "most solver iterations of the logistic regression", in_range(1, 10_000)),
    ],
    "mlp": [
        Param("hidden_units", "512,256", "widths of the hidden layers, comma-separated", int_list(1, 8192)),
        Param("activation", "relu", "activation of the hidden layers", one_of(ACTIVATIONS)),
        *NET_COMMON,
        family_epochs("mlp"),
    ],
    "cnn": [
        # chosen by validation accuracy per unit of training time (BENCHMARKS.md, "Recipes")
        family_epochs("cnn"),
        Param("filters", None, f"conv filters per block (each block halves the image) (not given: {CNN_FILTERS}, or "
              "on images too small for four halvings the first widths that fit, e.g. 32,64,128 on 8x8 digits)",
              int_list(1, 1024, max_len=4), kind=str),
        Param("convs_per_block", 1, "3x3 convolutions before each pooling", in_range(1, 3)),
        Param("pool_first", True, "max-pool before batch norm and ReLU (4x fewer of their operations)"),
        Param("dense_units", 128, "width of the dense layer after the conv blocks (0 = none)", in_range(0, 8192)),
        Param("batch_norm", True, "batch normalisation after every convolution"),
        *NET_COMMON,
        restate("label_smoothing", 0.1),
    ],
    # your own network: docs/networks.md
    "custom": [
        Param("model", None, "your network's builder: FILE.py:FUNCTION or package.module:function, where "
              "FUNCTION(hp, input_shape, num_classes) returns a Keras model taking raw 0-255 pixels of "
              "input_shape (height, width, channels) (required; docs/networks.md)", builder_ref, kind=str),
        Param("hp", None, "the builder's own parameters as a YAML or JSON mapping, e.g. '{width: 32, blocks: 2}' "
              "(not given: none); every name must be read by the builder", hp_mapping, kind=str),
    ],
}


def family_params(family: str) -> list[Param]:
    """All parameters of one family's entry point, in CLI order."""
    if family not in FAMILY_PARAMS:
        raise ConfigError(f"unknown family {family!r}: choose one of {', '.join(FAMILIES)}")
    own = {p.name: p for p in FAMILY_PARAMS[family]}
    shared = [] if family == "baseline" else FIT_PARAMS
    # a family may restate a shared parameter with its own default; it keeps the shared place
    restated = [own.pop(p.name) if p.name in own else p for p in shared]
    return [*own.values(), *restated, *DATA_PARAMS]


def load_yaml(text: str) -> Any:
    """YAML as a study file or ``hp`` is read: PyYAML's safe loader, where a number in exponent form without a
    dot (1e-5, as JSON and Python write it) is a number too, not text (YAML 1.1 wants 1.0e-5)."""
    import re

    import yaml

    exponent = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
    loader: Any = type("Loader", (yaml.SafeLoader,), {})
    loader.add_implicit_resolver("tag:yaml.org,2002:float", exponent, list("-+0123456789"))
    return yaml.load(text, Loader=loader)  # noqa: S506 (a SafeLoader)


def parse_hp(text: Any) -> dict[str, Any]:
    """A builder's own parameters from a mapping or its YAML/JSON text ('{width: 32}'); ValueError says why not."""
    if isinstance(text, dict):
        raw: Any = text
    else:
        import yaml

        try:
            raw = load_yaml(str(text)) if str(text).strip() else {}
        except yaml.YAMLError as e:
            raise ValueError(f"must be a YAML or JSON mapping, e.g. '{{width: 32, blocks: 2}}' ({e})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) and k.replace("/", "_").isidentifier() for k in raw):
        raise ValueError("must map parameter names (letters, digits, _, /) to values, e.g. '{width: 32, blocks: 2}'")
    taken = sorted(k for k in raw if k in reserved_names() or k.startswith("data_"))
    if taken:
        raise ValueError(f"{', '.join(taken)}: the platform's own name(s) (a training parameter, or one a run logs); "
                         "give a training parameter as itself (e.g. -P learning_rate=0.01), or name the builder's "
                         "parameter otherwise")
    bad = [k for k, v in raw.items() if not isinstance(v, (str, int, float, bool, type(None)))]
    if bad:
        raise ValueError(f"{', '.join(bad)}: each value must be a number, text, true/false or null "
                         "(a list of widths: give it as text, \"32,64\")")
    return raw


VERSION_PARAM = "recipe_version"  # logged by every run that trains a network (params/migrations.py)
MADE_CONCRETE = ("epochs", "filters")  # not given, a run makes them concrete for its images before it trains


def trained_name(name: str) -> str:
    """Where a run keeps the value it trained with for a parameter `mlflow run` had logged as not given."""
    return f"{name}_trained"

NOT_GIVEN = ("", "''")  # a parameter nobody set, as MLproject forwards it and as `mlflow run` records it
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")  # how a true/false is given


# what a training run logs beside its parameters (train.job, train.lineage, reproduce's own; max_batch and
# max_body_mb: the served model's config, which MLflow logs): no name of a builder's parameter, nor data_*
LOGGED_BESIDE = (*map(trained_name, MADE_CONCRETE), "family", "experiment", "system_metrics", "model_parameters",
                 "precision_used", "model_sha256", "distill_weight", "reproduces_run_id", "model_uri", "tolerance",
                 "exact", "max_batch", "max_body_mb", "compiled_by", "compiled_optimizer", "compiled_learning_rate",
                 "compiled_loss")


def reserved_names() -> set[str]:
    """Names no builder's parameter may take: the platform's and what a run logs beside them. One that left the
    package (params/migrations.py) is free again: a keras-tuner builder's hp.Choice("optimizer", ...) is its own."""
    return {p.name for p in family_params("custom")} | set(LOGGED_BESIDE) | {VERSION_PARAM}


def canonical_hp(text: Any) -> str:
    """One spelling of a builder's parameters: JSON, keys sorted (what is logged and digested)."""
    return json.dumps(parse_hp(text), sort_keys=True)


# ----------------------------------------------------------------------------- commands

# Where a command files its runs. Not a model parameter: not in family_params (so a reproduction
# does not miss it), only on the commands (train.tracking.use_experiment says how it is chosen).
EXPERIMENT = Param("experiment", None, "MLflow experiment for this command's runs (not given: "
                   "$MLFLOW_EXPERIMENT_NAME, else fmnist-<family> for a single run, fmnist-study-<study name> for "
                   "a study; under `mlflow run`, use its --experiment-name instead)", kind=str)

# Whether training runs record CPU, memory, disk, network (and GPU) use: MLflow's system metrics.
# Not a model parameter either: how a run is watched, not what it trains (train.runs.system_metrics).
SYSTEM_METRICS = Param("system_metrics", None, "training runs record CPU, memory, disk, network and GPU use as "
                       "MLflow system metrics, every second or every $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL seconds "
                       "(not given: $MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING where set, else true)", kind=bool)

def _trials(v) -> str | None:
    wrong = in_range(1, 100_000)(v)
    return wrong and (f"{wrong} (leave it out for the study file's budget; `register` trains a study's final "
                      "retrain without a new trial)")


TUNE_PARAMS = [
    Param("family", None, "model family to tune: mlp, cnn, or custom (your own network: the study file names its "
          "builder, model: FILE.py:FUNCTION) (not given: the study's own: the family stored on an existing study, else "
          "the study file's, else cnn)", one_of(NETWORK_FAMILIES), kind=str),
    Param("study", None, "study file: a path, or a name in experiments/ (not given: experiments/<family>.yaml; for a "
          "new cnn study of other images than Fashion-MNIST, the file for them: "
          "docs/studies.md, 'A study for your data')", kind=str),
    Param("n_trials", None, "trials to run in this invocation (not given: the study file's budget)",
          _trials, kind=int),
    Param("timeout", None, "stop starting trials after this many seconds, 0 = no limit (not given: the study "
          "file's budget)", in_range(0, 10**7), kind=int),
    Param("epochs", None, "most epochs per trial (not given: the study file's budget)", in_range(1, 1000), kind=int),
    Param("train_samples", None, "training images per trial, 0 = all (not given: the study file's budget)",
          in_range(0, 10**6), kind=int),
    Param("study_name", None, "Optuna study name (not given: the study file's name)", kind=str),
    Param("storage", None, "Optuna storage URL, e.g. postgresql://USER@HOST/DB with the password in PGPASSWORD "
          "or ~/.pgpass, or grpc://HOST:PORT for a storage-proxy (grpc://HOST1:PORT1,HOST2:PORT2: several, tried in "
          "order) (not given: sqlite optuna.db beside mlflow.db)",
          kind=str),
    Param("model_name", None, "registered model name; one name holds one dataset's models (not given: "
          "fmnist-classifier for Fashion-MNIST, else <dataset name>-classifier, e.g. digits-classifier)", kind=str),
    Param("seed", 42, "seed of every trial's split and initialisation, and of the sampler of a lone (SQLite) "
          "worker; workers sharing a database each draw their own (parameter sampler_seed)", in_range(0, 2**31 - 1)),
    replace(DATA, default=None, kind=str, help=DATA.help + " (not given: the study's own, recorded when it was "
            "created, else fashion-mnist)"),
    DATA_DIR,
    Param("register", True, "register the best model at the end (false: leave it to the register entry point)"),
    Param("promote_alpha", 0.05, "@champion moves only if the new model beats it on the same test images with "
          "exact McNemar p below this; and no model is registered whose validation answers are not above always "
          "answering the majority class by a one-sided exact binomial p below this",
          in_range(0, 1, lo_open=True, hi_open=True)),
    EXPERIMENT,
    SYSTEM_METRICS,
]

# `launch`: where the tune workers run; every tune parameter follows and is passed to each worker.
LAUNCH_OWN_PARAMS = [
    Param("scheduler", "tcp://127.0.0.1:8786", "address of the Dask scheduler whose workers run the tune workers "
          "(`dask scheduler` listens on 8786)"),
    Param("workers", 2, "tune workers to start, each in its own process on a Dask worker that offers the `tune` "
          "resource (0 = create the study and print the worker command only, e.g. for a Kubernetes Job)",
          in_range(0, 10_000)),
]

# register may train too (final retrains, the reference): system_metrics is its as well
REGISTER_NAMES = ("family", "study", "study_name", "storage", "model_name", "seed", "data", "data_dir",
                  "promote_alpha",
                  "experiment", "system_metrics")
