"""Your own network: a builder loaded by name, one of

- ``build(hp, input_shape, num_classes) -> keras.Model`` (this platform's contract), or
- keras-tuner's: ``build_model(hp)``, or a ``HyperModel`` (a class or an instance with ``build(self, hp)`` and
  maybe ``fit(self, hp, model, *args, **kwargs)``), written for keras-tuner and run unchanged; it is fed as
  keras-tuner's guide feeds it: pixels scaled to 0-1 (the platform's layer in front does it, so a served
  model still takes 0-255) with a channel axis.

    model=examples/residual.py:build        # a file, relative to the working directory or this project
    model=mypackage.nets:build               # an importable module

``hp`` (model/hyperparameters.py) is keras-tuner's ``HyperParameters`` and a read-only mapping of the
builder's own parameters (the study file's ``fixed`` and sampled values that are not the platform's; the
values a run recorded); ``input_shape`` is (height, width, channels); the model takes
raw pixels 0-255 as float32 in that shape and scales them itself, and answers class probabilities
(a softmax) or logits (any other last activation, or a compiled loss with ``from_logits=True``).
The platform puts the user's model inside one of its own: the dataset's array layout in (grayscale
images arrive as (n, height, width)), float32 class probabilities out, whatever precision trained it.
So the served classifier, the flip and shift averages, ensembles and costs treat it as any network.

A builder is recorded by its source file's sha256 (``reproduce`` refuses an edited one before any
training) and its source goes on the run. docs/networks.md has the contract and an example.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from ..data import DatasetInfo
from ..params import ConfigError
from .hyperparameters import Draw, HyperParameters

PROJECT_DIR = Path(__file__).resolve().parents[2]
PACKAGE_DIR = Path(__file__).resolve().parents[1]


class BuilderError(ConfigError):
    """A builder that cannot be loaded, raises, or returns something the platform cannot train."""


@dataclass(frozen=True)
class Builder:
    """A loaded builder: the function, where it came from and what its source was."""

    ref: str  # as given: FILE.py:FUNCTION or module:function
    fn: Callable[..., Any]  # build(hp, input_shape, num_classes), or keras-tuner's build(hp)
    file: Path  # the source file that defines it
    sha256: str  # of that file's bytes when loaded
    source: bytes  # those bytes: what trains is what a run records, whatever happens to the file later
    keras_tuner: bool = False  # keras-tuner's contract: build(hp), fed 0-1 pixels
    fit: Callable[..., Any] | None = None  # a HyperModel's own fit(hp, model, *args, **kwargs)
    requires: str = ""  # a package the file imports beyond ours, e.g. keras-tuner==1.4.8

    @property
    def name(self) -> str:
        return self.ref.rpartition(":")[2]

    @property
    def pinned(self) -> bool:
        """A builder of this package (the built-in families', model/builtin.py): the code version every run logs
        records it, so its file is not recorded apart, and a later version of it is the migrated recipe's."""
        return PACKAGE_DIR in self.file.resolve().parents


def _split(ref: str) -> tuple[str, str]:
    module, _, function = ref.strip().rpartition(":")
    return module, function


def source_file(ref: str) -> Path | None:
    """Where a FILE.py reference lives: as given (absolute, or from the working directory), else
    under this project (where `mlflow run` copies a git project to); None for a module name."""
    module, _ = _split(ref)
    if not module.endswith(".py"):
        return None
    given = Path(module).expanduser()
    places = [given] if given.is_absolute() else [given, PROJECT_DIR / given]
    for candidate in places:
        if candidate.is_file():
            return candidate.resolve()
    looked = " and ".join(dict.fromkeys(str(p.resolve().parent) for p in places))
    raise BuilderError(f"model={ref}: no file {given.name} in {looked}; give the path to the .py file that defines "
                       "the builder, or an importable module as package.module:function")


_loaded: dict[tuple[str, Path | None], Builder] = {}  # by reference and file: read once per process (see load)


def load(ref: str) -> Builder:
    """The builder ``ref`` names, its file executed or its module imported: once per process, so that every
    trial, retrain and reference of a command trains the builder its checks saw and its runs record, even if
    the file is edited meanwhile (a study refuses a worker or resume whose file changed: study.stored)."""
    ref = ref.strip()
    path = source_file(ref)
    key = (ref, path)  # a relative file from another working directory is another builder
    if key in _loaded:
        return _loaded[key]
    module, function = _split(ref)
    if path is not None:
        data = path.read_bytes()
        name = f"fmnist_user_builder_{hashlib.sha256(data).hexdigest()[:12]}"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses and pickling look their module up here
        try:
            exec(compile(data, str(path), "exec"), mod.__dict__)  # the bytes digested, not a second read
        except Exception as e:
            sys.modules.pop(name, None)
            raise BuilderError(f"model={ref}: loading {path} raised {last_line(e, path)}{_hint(e)}") from None
    else:
        try:
            mod = importlib.import_module(module)
        except Exception as e:
            raise BuilderError(f"model={ref}: importing {module} raised {last_line(e)}{_hint(e)}; is it "
                               "installed, or on PYTHONPATH?") from None
        path = Path(getattr(mod, "__file__", "") or "")
        if not path.is_file():
            raise BuilderError(f"model={ref}: module {module} has no source file to record")
        data = path.read_bytes()
    obj = getattr(mod, function, None)
    if not callable(obj) and not callable(getattr(obj, "build", None)):
        defined = sorted(k for k, v in vars(mod).items() if callable(v) and not k.startswith("_")
                         and getattr(v, "__module__", None) == mod.__name__)
        raise BuilderError(f"model={ref}: {path.name} defines no function {function!r}"
                           + (f"; it defines {', '.join(defined)}" if defined else ""))
    builder = Builder(ref=ref, file=path, sha256=hashlib.sha256(data).hexdigest(), source=data,
                      requires=_requires(mod, obj), **_contract(ref, obj))
    _loaded[key] = builder
    return builder


def _contract(ref: str, obj: Any) -> dict[str, Any]:
    """Which contract ``obj`` keeps: a keras-tuner HyperModel (class or instance: its build and its own fit,
    if it overrides keras-tuner's), a one-argument ``build_model(hp)``, or ``build(hp, input_shape, num_classes)``."""
    if isinstance(obj, type):
        if not callable(getattr(obj, "build", None)):
            raise BuilderError(f"model={ref} is a class without a build(self, hp) method: name a builder function "
                               "or a keras-tuner HyperModel")
        try:
            obj = obj()
        except Exception as e:
            raise BuilderError(f"model={ref}: making the HyperModel with no arguments raised {last_line(e)}; "
                               f"make one in the file (hypermodel = {ref.rpartition(':')[2]}(...)) and name "
                               "that instance") from None
    if not inspect.isroutine(obj) and callable(getattr(obj, "build", None)):
        fit = getattr(obj, "fit", None)
        own_fit = callable(fit) and not str(getattr(getattr(type(obj), "fit", None), "__module__", "")).startswith(
            "keras_tuner")  # keras-tuner's HyperModel.fit is model.fit(*args, **kwargs): the default
        return {"fn": obj.build, "keras_tuner": True, "fit": fit if own_fit else None}
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        params = []  # type: ignore[assignment]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if any(p.kind == p.VAR_POSITIONAL for p in params) or len(positional) >= 3 >= len(required):
        return {"fn": obj, "keras_tuner": False}  # it can take (hp, input_shape, num_classes): the platform's
    if len(required) <= 1 <= len(positional):
        return {"fn": obj, "keras_tuner": True}
    raise BuilderError(f"model={ref} takes {len(required)} arguments: a builder takes (hp, input_shape, "
                       "num_classes), or (hp) as keras-tuner's build_model does")


def _requires(mod: Any, obj: Any) -> str:
    """keras-tuner with its version where the builder's file uses it (a HyperModel subclass, an import)."""
    if "keras_tuner" not in sys.modules:
        return ""
    kinds = [v for v in vars(mod).values() if getattr(v, "__name__", "") == "keras_tuner"
             or str(getattr(v, "__module__", "")).startswith("keras_tuner")]
    bases = type(obj).__mro__ if not isinstance(obj, type) else obj.__mro__
    if kinds or any(c.__module__.startswith("keras_tuner") for c in bases):
        return f"keras-tuner=={importlib.metadata.version('keras-tuner')}"
    return ""


def _hint(e: BaseException) -> str:
    if isinstance(e, ModuleNotFoundError) and e.name == "keras_tuner":
        return ("; keras-tuner is not installed: a build_model(hp) needs no import of it (the hp it gets is this "
                "platform's), so remove the import, or pip install keras-tuner for a keras_tuner.HyperModel subclass")
    return ""


def last_line(e: BaseException, file: Path | None = None) -> str:
    """The last line of an exception's traceback (``ValueError: ...``) and where in the user's file it was
    raised (the last frame in ``file``, else the last frame; a syntax error's own line)."""
    if isinstance(e, SyntaxError):
        return f"SyntaxError: {e.msg} (at {Path(e.filename or '?').name}:{e.lineno})"
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith("<")]
    if file is not None:
        frames = [f for f in frames if Path(f.filename).resolve() == file.resolve()] or frames
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return traceback.format_exception_only(type(e), e)[-1].strip() + where


HP = HyperParameters  # what the builder's hp is (model/hyperparameters.py)


def outputs_logits(model: keras.Model, info: DatasetInfo, high: float = 255.0) -> bool:
    """Whether ``model`` answers logits: its compiled loss says ``from_logits``; else whether its answers
    to a few random images (pixels 0 to ``high``) are not probabilities (each row non-negative and summing
    to 1), whatever layer, nested model or activation makes them. Also: one answer per class."""
    loss = getattr(model, "loss", None)
    get_config = getattr(loss, "get_config", None)  # a Loss object; a loss function or a name has none
    config = get_config() if callable(get_config) else {}
    if not (getattr(loss, "from_logits", False) or (config or {}).get("from_logits", False)) and ends_in_softmax(model):
        return False  # probabilities by construction (the built-in networks'): no forward pass to ask
    x = np.random.default_rng(0).uniform(0, high, size=(4, *info.shape)).astype("float32")
    try:
        answers = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), dtype="float64")
    except Exception as e:
        raise BuilderError(f"the model it returned raised on 4 images of shape {tuple(info.shape)}: "
                           f"{last_line(e)}") from None
    if answers.shape != (4, info.num_classes):
        raise BuilderError(f"the model answers shape {answers.shape[1:]}, but {info.name} has {info.num_classes} "
                           "classes: end with a Dense(num_classes) layer")
    if getattr(loss, "from_logits", False) or (config or {}).get("from_logits", False):
        return True
    return not (np.all(answers >= 0) and np.allclose(answers.sum(axis=1), 1.0, atol=1e-2))


def ends_in_softmax(model: keras.Model) -> bool:
    """A graph model (Functional or Sequential, shapes known at construction, so Keras ran its layers symbolically)
    whose one output is a Dense or Activation layer's softmax."""
    if not isinstance(model, keras.Sequential) and type(model).__name__ != "Functional":
        return False
    last = model.layers[-1] if model.layers else None
    if not isinstance(last, layers.Dense | layers.Activation) or last.activation is not keras.activations.softmax:
        return False
    try:
        return len(model.outputs) == 1 and model.outputs[0] is last.output
    except (AttributeError, ValueError):  # a layer called more than once has no one output
        return False


def build(builder: Builder, given: Mapping[str, Any], info: DatasetInfo, draw: Draw | None = None,
          platform: Mapping[str, Any] | None = None,
          explicit: Collection[str] = ()) -> tuple[keras.Model, HyperParameters]:
    """The user's model for ``info``'s images inside the platform's: the dataset's array layout in (scaled
    to 0-1 for a keras-tuner builder), float32 probabilities out; and the ``hp`` it read its values from
    (``given``; else ``draw``'s suggestions; else keras-tuner's defaults; ``platform``: the recipe's
    training parameters, those it sets ``explicit``: model/hyperparameters.py)."""
    hp = HyperParameters(given, draw, platform, explicit)
    try:
        model = builder.fn(hp) if builder.keras_tuner else builder.fn(hp, tuple(info.shape), info.num_classes)
    except Exception as e:
        raise BuilderError(f"model={builder.ref} raised {last_line(e, builder.file)}") from None
    if not isinstance(model, keras.Model):
        raise BuilderError(f"model={builder.ref} returned {type(model).__name__}, not a Keras model: return a "
                           "keras.Model (keras.Sequential or keras.Model(inputs, outputs))")
    check_shapes(builder, model, info)
    try:
        logits = outputs_logits(model, info, high=1.0 if builder.keras_tuner else 255.0)
    except BuilderError as e:
        raise BuilderError(f"model={builder.ref}: {e}") from None
    inp = keras.Input(shape=info.array_shape, dtype="float32", name="pixels")
    h = layers.Reshape(info.shape, name="as_height_width_channels")(inp) if info.array_shape != info.shape else inp
    if builder.keras_tuner:  # as keras-tuner's guide feeds it (x / 255); clients still send 0-255
        h = layers.Rescaling(1.0 / 255, name="scale_0_1")(h)
    h = model(h)
    # float32 probabilities whatever the policy: the served classifier, averages and the loss read them
    out = layers.Activation("softmax" if logits else "linear", dtype="float32", name="probs")(h)
    return keras.Model(inp, out, name=f"{builder.name}_network"), hp


def inner(served: keras.Model) -> keras.Model:
    """The user's own model inside the platform's (:func:`build`)."""
    return next(layer for layer in served.layers if isinstance(layer, keras.Model))


def check_shapes(builder: Builder, model: keras.Model, info: DatasetInfo) -> None:
    """The model takes (height, width, channels) images and answers one value per class."""
    try:
        took, gave = tuple(model.input_shape[1:]), tuple(model.output_shape[1:])
    except (AttributeError, ValueError):
        if builder.keras_tuner:  # keras-tuner's guide starts with Flatten(): built on the images it is given
            return
        raise BuilderError(f"model={builder.ref}: the model has no defined input: start it with "
                           f"keras.Input(shape=input_shape)") from None
    if len(took) != 3 or any(t not in (None, s) for t, s in zip(took, info.shape, strict=True)):
        raise BuilderError(f"model={builder.ref}: the model takes inputs of shape {took}, but the images of "
                           f"{info.name} are {tuple(info.shape)} (height, width, channels): build it on "
                           "keras.Input(shape=input_shape)")
    if gave != (info.num_classes,):
        raise BuilderError(f"model={builder.ref}: the model answers shape {gave}, but {info.name} has "
                           f"{info.num_classes} classes: end with a Dense(num_classes) layer")


def unread(builder: Builder, given: set[str], read: set[str]) -> None:
    """Refuse builder parameters that the builder never read."""
    never = sorted(given - read)
    if never:
        raise BuilderError(f"model={builder.ref} never reads {', '.join(never)}: a misspelt name, or a "
                           "parameter meant for the platform (its own are the training parameters in "
                           "docs/parameters.md, e.g. learning_rate, epochs, batch_size)? Remove it, or read it in the "
                           "builder")
