"""The one source of defaults: every parameter of every entry point, with its check.

Each family (baseline, mlp, cnn) and the tune command is a list of :class:`Param`. The CLI
builds its flags from these lists, ``resolve`` turns overrides into one flat dict (what
``mlflow.log_params`` records) and refuses bad values, all at once, before any work starts.
MLproject forwards the same names; a test keeps its defaults equal to these.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

ACTIVATIONS = ("relu", "gelu", "elu", "selu", "swish", "tanh")
MONITORS = ("val_loss", "val_accuracy")
LR_SCHEDULES = ("plateau", "cosine")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
FAMILIES = ("baseline", "mlp", "cnn")
DEFAULT_FAMILY = "cnn"  # what tune tunes when neither the study, its file nor the user names a family

# Metric names, written once (lesson 6: the objective refers to these, not to strings).
TRAIN_LOSS, TRAIN_ACC = "loss", "accuracy"
VAL_LOSS, VAL_ACC = "val_loss", "val_accuracy"
LEARNING_RATE = "learning_rate"
TEST_LOSS, TEST_ACC, TEST_F1 = "test_loss", "test_accuracy", "test_macro_f1"
BEST_VAL_ACC = "best_val_accuracy"


class ConfigError(ValueError):
    """A parameter is out of range or malformed; the message names it and the allowed values."""


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None  # returns an error text or None

    @property
    def type(self) -> type:
        return type(self.default)


# ----------------------------------------------------------------------------- checks


def in_range(lo, hi, *, lo_open=False, hi_open=False):
    def check(v):
        too_low = v <= lo if lo_open else v < lo
        too_high = v >= hi if hi_open else v > hi
        if too_low or too_high:
            lb, rb = ("(" if lo_open else "["), (")" if hi_open else "]")
            return f"must be in {lb}{lo}, {hi}{rb}"
        return None

    return check


def one_of(choices):
    return lambda v: None if v in choices else f"must be one of {', '.join(map(str, choices))}"


def int_list(lo, hi, *, min_len=1, max_len=6):
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


def parse_int_list(text: str) -> list[int]:
    return [int(t) for t in str(text).replace(" ", "").split(",") if t]


# ----------------------------------------------------------------------------- parameters

DATA_PARAMS = [
    Param("data_dir", "", "folder with the IDX files or CSV pair ('' = search the usual places)"),
    Param("val_fraction", 0.1, "share of the training set held out for validation", in_range(0.01, 0.5)),
    Param("train_samples", 0, "limit training images for quick runs (0 = all)",
          lambda v: None if v == 0 or v >= 100 else "must be 0 (all) or at least 100"),
    Param("seed", 42, "seed for the split, initialisation and shuffling", in_range(0, 2**31 - 1)),
]

FIT_PARAMS = [
    Param("epochs", 15, "most epochs to train (early stopping may end sooner)", in_range(1, 1000)),
    Param("batch_size", 128, "images per gradient step", in_range(1, 8192)),
    Param("learning_rate", 0.002, "Adam's initial learning rate", in_range(0, 1, lo_open=True)),
    Param("lr_schedule", "cosine", "plateau: reduce on plateau; cosine: one cosine decay over all epochs",
          one_of(LR_SCHEDULES)),
    Param("warmup_epochs", 0.0, "epochs of linear learning-rate warm-up before the cosine decay (cosine)",
          in_range(0, 100)),
    Param("lr_patience", 2, "epochs without improvement before the LR is reduced (plateau)", in_range(1, 100)),
    Param("lr_factor", 0.5, "factor the LR is multiplied by on a plateau", in_range(0, 1, lo_open=True, hi_open=True)),
    Param("early_stopping_patience", 4, "epochs without improvement before training stops (0 = off)",
          in_range(0, 1000)),
    Param("monitor", "val_loss", "what early stopping and LR reduction watch", one_of(MONITORS)),
    Param("label_smoothing", 0.0, "share of each label spread over the other classes in the loss",
          in_range(0, 0.5, hi_open=True)),
    Param("precision", "auto", "auto: mixed_float16 where a GPU is visible, mixed_bfloat16 on a CPU with "
          "bfloat16 instructions (AMX-BF16 or AVX512-BF16) under TensorFlow (1.4-1.6x faster than float32 on "
          "the cnn), else float32; or name one",
          one_of(PRECISIONS)),
    Param("augment", False, "random horizontal flips, shifts, rotations and zoom while training"),
    Param("aug_shift", 0.08, "largest random shift, as a share of the image side (augment)", in_range(0, 0.5)),
    Param("aug_rotate", 0.03, "largest random rotation, as a share of a full turn (augment; 0 = none)",
          in_range(0, 0.5)),
    Param("aug_zoom", 0.08, "largest random zoom in or out, as a share of the image side (augment; 0 = none)",
          in_range(0, 0.9, hi_open=True)),
    Param("aug_erase", 0.0, "probability that a training image gets a random rectangle (2-25% of its area) "
          "blanked to background (random erasing; augment; 0 = none)", in_range(0, 1)),
    Param("tta_flip", False, "the trained model answers with the mean of its predictions for the image and "
          "its mirror image (test-time augmentation; 2x inference cost; pair it with augment=true: on a network "
          "never shown mirror images it cost 1.1 points)"),
]

NET_COMMON = [
    Param("dropout", 0.3, "dropout rate before each dense layer", in_range(0, 1, hi_open=True)),
    Param("l2", 1e-4, "L2 weight penalty on every kernel", in_range(0, 1)),
]

def restate(name: str, default: Any) -> Param:
    """A shared fit parameter with a family's own default (same help, same check)."""
    return replace(next(p for p in FIT_PARAMS if p.name == name), default=default)


FAMILY_PARAMS = {
    "baseline": [
        Param("C", 1.0, "inverse regularisation strength of the logistic regression", in_range(0, 1e6, lo_open=True)),
        Param("max_iter", 100, "most solver iterations of the logistic regression", in_range(1, 10_000)),
    ],
    "mlp": [
        Param("hidden_units", "512,256", "widths of the hidden layers, comma-separated", int_list(1, 8192)),
        Param("activation", "relu", "activation of the hidden layers", one_of(ACTIVATIONS)),
        *NET_COMMON,
    ],
    "cnn": [
        # chosen by measurement on 2 CPU cores (BENCHMARKS.md, issues 6 and 14): 93.3% test after
        # 9 epochs, pooled before batch norm, in 0.38x the training time of issue 6's 8 epochs
        restate("epochs", 9),
        Param("filters", "32,64,128,256", "conv filters per block (each block halves the image)",
              int_list(1, 1024, max_len=4)),
        Param("convs_per_block", 1, "3x3 convolutions before each pooling", in_range(1, 3)),
        Param("pool_first", True, "max-pool before batch norm and ReLU (4x fewer of their operations)"),
        Param("dense_units", 128, "width of the dense layer after the conv blocks (0 = none)", in_range(0, 8192)),
        Param("batch_norm", True, "batch normalisation after every convolution"),
        *NET_COMMON,
        restate("label_smoothing", 0.1),
    ],
}


# Where a command files its runs. Not a model parameter: not in family_params (so a reproduction
# does not miss it), only on the commands (tracking.use_experiment says how it is chosen).
EXPERIMENT = Param("experiment", "", "MLflow experiment for this command's runs ('' = $MLFLOW_EXPERIMENT_NAME, "
                   "else fmnist-<family> for a single run, fmnist-study-<study name> for a study; under "
                   "`mlflow run`, use its --experiment-name instead)")

TUNE_PARAMS = [
    Param("family", "", "model family to tune: mlp or cnn ('' = the study's own: the family stored on an "
          "existing study, else the study file's, else cnn)", one_of(("", "mlp", "cnn"))),
    Param("study", "", "study file: a path, or a name in experiments/ ('' = experiments/<family>.yaml)"),
    Param("n_trials", 0, "trials to run in this invocation (0 = the study file's budget)", in_range(0, 100_000)),
    Param("timeout", 0, "stop starting trials after this many seconds (0 = the study file's budget)",
            in_range(0, 10**7)),
    Param("epochs", 0, "most epochs per trial (0 = the study file's budget)", in_range(0, 1000)),
    Param("train_samples", -1, "training images per trial (-1 = the study file's budget, 0 = all)",
            in_range(-1, 10**6)),
    Param("study_name", "", "Optuna study name ('' = the study file's name)"),
    Param("storage", "", "Optuna storage URL, e.g. postgresql://USER@HOST/DB with the password in PGPASSWORD "
          "or ~/.pgpass, or grpc://HOST:PORT for a storage-proxy ('' = sqlite optuna.db beside mlflow.db)"),
    Param("model_name", "fmnist-classifier", "registered model name"),
    Param("seed", 42, "seed of every trial's split and initialisation, and of the sampler of a lone (SQLite) "
          "worker; workers sharing a database each draw their own (parameter sampler_seed)", in_range(0, 2**31 - 1)),
    Param("data_dir", "", "folder with the dataset ('' = search the usual places)"),
    Param("register", True, "register the best model at the end (false: leave it to the register entry point)"),
    Param("promote_alpha", 0.05, "@champion moves only if the new model beats it on the same test images with "
          "exact McNemar p below this", in_range(0, 1, lo_open=True, hi_open=True)),
    EXPERIMENT,
]


# `launch`: where the tune workers run; every tune parameter follows and is passed to each worker.
LAUNCH_OWN_PARAMS = [
    Param("scheduler", "tcp://127.0.0.1:8786", "address of the Dask scheduler whose workers run the tune workers "
          "(`dask scheduler` listens on 8786)"),
    Param("workers", 2, "tune workers to start, each in its own process on a Dask worker that offers the `tune` "
          "resource (0 = create the study and print the worker command only, e.g. for a Kubernetes Job)",
          in_range(0, 10_000)),
]
LAUNCH_PARAMS = [*LAUNCH_OWN_PARAMS, *TUNE_PARAMS]


REGISTER_PARAMS = [p for p in TUNE_PARAMS
                   if p.name in ("family", "study", "study_name", "storage", "model_name", "seed", "data_dir",
                                 "promote_alpha", "experiment")]

PREDICT_PARAMS = [
    Param("model_uri", "models:/fmnist-classifier@champion", "model to answer with (any models:/ or runs:/ URI)"),
]


REPRODUCE_PARAMS = [
    replace(PREDICT_PARAMS[0], help="model to rebuild: models:/<name>/<version>, models:/<name>@<alias> "
            "or runs:/<run_id>/<path>"),
    Param("tolerance", 0.003, "largest accepted test-accuracy difference to the original, either way, as a fraction "
          "(0.003 = 0.3 percentage points = 30 of the 10,000 test images); exit code 1 beyond it",
          in_range(0, 1)),
    Param("data_dir", "", "folder with the dataset ('' = search the usual places); refused unless its "
          "sha256 is the original's"),
    Param("exact", False, "true: pass only if the rebuild's test-set probabilities are bit-identical to the "
          "original's (same machine, code and data give that; tolerance is then not used)"),
    EXPERIMENT,
]


DASHBOARD_PARAMS = [
    replace(next(p for p in TUNE_PARAMS if p.name == "storage"), help="Optuna storage URL to show ('' = sqlite "
            "optuna.db beside mlflow.db, where tune writes by default)"),
    Param("port", 8080, "port the dashboard listens on", in_range(1, 65535)),
    Param("host", "127.0.0.1", "address to listen on (the dashboard has no login: keep it on loopback)"),
]


PROXY_PARAMS = [
    replace(next(p for p in TUNE_PARAMS if p.name == "storage"), help="the PostgreSQL study store to serve, "
            "postgresql://USER@HOST:PORT/DATABASE (password in PGPASSWORD or ~/.pgpass); required"),
    Param("host", "127.0.0.1", "address to listen on (plaintext gRPC without login: loopback or a private network)"),
    Param("port", 13000, "port to listen on; workers then use --storage grpc://HOST:PORT", in_range(1, 65535)),
]


def family_params(family: str) -> list[Param]:
    """All parameters of one family's entry point, in CLI order."""
    if family not in FAMILY_PARAMS:
        raise ConfigError(f"unknown family {family!r}: choose one of {', '.join(FAMILIES)}")
    own = {p.name: p for p in FAMILY_PARAMS[family]}
    shared = [] if family == "baseline" else FIT_PARAMS
    # a family may restate a shared parameter with its own default; it keeps the shared place
    restated = [own.pop(p.name) if p.name in own else p for p in shared]
    return [*own.values(), *restated, *DATA_PARAMS]


COMMANDS = (*FAMILIES, "tune", "register", "launch", "predict", "reproduce", "dashboard", "storage-proxy")


def command_params(command: str) -> list[Param]:
    """The parameters of one CLI command / MLproject entry point (``main`` is ``tune``)."""
    special = {"main": TUNE_PARAMS, "tune": TUNE_PARAMS, "register": REGISTER_PARAMS, "launch": LAUNCH_PARAMS,
               "predict": PREDICT_PARAMS, "reproduce": REPRODUCE_PARAMS, "dashboard": DASHBOARD_PARAMS,
               "storage-proxy": PROXY_PARAMS}
    return special[command] if command in special else [*family_params(command), EXPERIMENT]


def defaults(family: str) -> dict:
    return {p.name: p.default for p in family_params(family)}


def coerce(param: Param, value: Any) -> Any:
    """Turn a CLI/MLproject string into the parameter's type, with a clear error."""
    if isinstance(value, param.type) and not (param.type is int and isinstance(value, bool)):
        return value
    text = str(value).strip()
    try:
        if param.type is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if param.type is int:
            f = float(text)
            if f != int(f):
                raise ValueError
            return int(f)
        return param.type(text)
    except ValueError:
        kind = {bool: "true or false", int: "an integer", float: "a number"}.get(param.type, "text")
        raise ConfigError(f"{param.name}={text!r}: must be {kind}") from None


def resolve(family: str, overrides: dict | None = None) -> dict:
    """Defaults updated by overrides, coerced and validated: the flat dict a run logs."""
    return resolve_params(family_params(family), overrides, what=family)


def resolve_tune(overrides: dict | None = None) -> dict:
    """The tune command's parameters, resolved the same way."""
    return resolve_command("tune", overrides)


def resolve_command(command: str, overrides: dict | None = None) -> dict:
    """Any command's parameters. ``register`` takes tune's study and registry parameters and
    keeps tune's defaults for the rest (the budget), which it needs to read the study file."""
    values = resolve_params(command_params(command), overrides, what=command)
    return {**resolve_tune(), **values} if command == "register" else values


def resolve_params(params: list[Param], overrides: dict | None, *, what: str) -> dict:
    """Defaults <- overrides (None values mean 'default'), coerced; every error reported at once."""
    by_name = {p.name: p for p in params}
    unknown = set(overrides or {}) - set(by_name)
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) for {what}: {', '.join(sorted(unknown))}; known: {', '.join(by_name)}"
        )
    values = {p.name: p.default for p in params}
    errors, unparsed = [], set()
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        try:
            values[key] = coerce(by_name[key], value)
        except ConfigError as e:
            errors.append(str(e))
            unparsed.add(key)
    for p in params:
        if p.check is not None and p.name not in unparsed and (msg := p.check(values[p.name])):
            errors.append(f"{p.name}={values[p.name]!r}: {msg}")
    if errors:
        raise ConfigError(f"invalid {what} parameter(s):\n  " + "\n  ".join(errors))
    return values
