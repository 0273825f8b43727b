"""Your own network: a builder ``build(hp, input_shape, num_classes) -> keras.Model`` loaded by name.

    model=examples/residual.py:build        # a file, relative to the working directory or this project
    model=mypackage.nets:build               # an importable module

``hp`` is a read-only mapping of the builder's own parameters (the study file's ``fixed`` and sampled
values that are not the platform's); ``input_shape`` is (height, width, channels); the model takes
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
import importlib.util
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from ..data import DatasetInfo
from ..params import ConfigError

PROJECT_DIR = Path(__file__).resolve().parents[2]


class BuilderError(ConfigError):
    """A builder that cannot be loaded, raises, or returns something the platform cannot train."""


@dataclass(frozen=True)
class Builder:
    """A loaded builder: the function, where it came from and what its source was."""

    ref: str  # as given: FILE.py:FUNCTION or module:function
    fn: Callable[..., Any]
    file: Path  # the source file that defines it
    sha256: str  # of that file's bytes when loaded
    source: bytes  # those bytes: what trains is what a run records, whatever happens to the file later

    @property
    def name(self) -> str:
        return self.ref.rpartition(":")[2]


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
    the file is edited meanwhile (a study refuses a worker or resume whose file changed: study.setup)."""
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
            raise BuilderError(f"model={ref}: loading {path} raised {_last_line(e, path)}") from None
    else:
        try:
            mod = importlib.import_module(module)
        except Exception as e:
            raise BuilderError(f"model={ref}: importing {module} raised {_last_line(e)}; is it installed, or "
                               "on PYTHONPATH?") from None
        path = Path(getattr(mod, "__file__", "") or "")
        if not path.is_file():
            raise BuilderError(f"model={ref}: module {module} has no source file to record")
        data = path.read_bytes()
    fn = getattr(mod, function, None)
    if not callable(fn):
        defined = sorted(k for k, v in vars(mod).items() if callable(v) and not k.startswith("_")
                         and getattr(v, "__module__", None) == mod.__name__)
        raise BuilderError(f"model={ref}: {path.name} defines no function {function!r}"
                           + (f"; it defines {', '.join(defined)}" if defined else ""))
    builder = Builder(ref=ref, fn=fn, file=path, sha256=hashlib.sha256(data).hexdigest(),
                      source=data)
    _loaded[key] = builder
    return builder


def _last_line(e: BaseException, file: Path | None = None) -> str:
    """The last line of an exception's traceback (``ValueError: ...``) and where in the user's file it was
    raised (the last frame in ``file``, else the last frame; a syntax error's own line)."""
    if isinstance(e, SyntaxError):
        return f"SyntaxError: {e.msg} (at {Path(e.filename or '?').name}:{e.lineno})"
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith("<")]
    if file is not None:
        frames = [f for f in frames if Path(f.filename).resolve() == file.resolve()] or frames
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return traceback.format_exception_only(type(e), e)[-1].strip() + where


class HP(Mapping[str, Any]):
    """The read-only mapping a builder gets; it remembers which names the builder read, so that a name
    the builder never reads (a typo, a parameter meant for the platform) is said, not ignored."""

    def __init__(self, values: Mapping[str, Any]):
        self._values = dict(values)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        if key not in self._values:
            raise KeyError(f"{key!r}: the builder reads hp[{key!r}], but it was not given (given: "
                           f"{', '.join(sorted(self._values)) or 'none'}): add it to hp (-P hp=...) or to the study "
                           f"file's fixed or searched values, or use hp.get({key!r}, default) for an optional one")
        self.read.add(key)
        return self._values[key]

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return self._values.get(key, default)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        self.read.update(self._values)  # a builder that walks them all reads them all
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"HP({self._values!r})"


def outputs_logits(model: keras.Model, info: DatasetInfo) -> bool:
    """Whether ``model`` answers logits: its compiled loss says ``from_logits``; else whether its answers
    to a few random images are not probabilities (each row non-negative and summing to 1), whatever
    layer, nested model or activation makes them."""
    loss = getattr(model, "loss", None)
    get_config = getattr(loss, "get_config", None)  # a Loss object; a loss function or a name has none
    config = get_config() if callable(get_config) else {}
    if getattr(loss, "from_logits", False) or (config or {}).get("from_logits", False):
        return True
    x = np.random.default_rng(0).uniform(0, 255, size=(4, *info.shape)).astype("float32")
    try:
        answers = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), dtype="float64")
    except Exception as e:
        raise BuilderError(f"the model it returned raised on 4 images of shape {tuple(info.shape)}: "
                           f"{_last_line(e)}") from None
    return not (np.all(answers >= 0) and np.allclose(answers.sum(axis=1), 1.0, atol=1e-2))


def build(builder: Builder, hp: Mapping[str, Any], info: DatasetInfo) -> tuple[keras.Model, HP]:
    """The user's model for ``info``'s images inside the platform's: the dataset's array layout in,
    float32 probabilities out; and the mapping it read its parameters from (what it read)."""
    mapping = HP(hp)
    try:
        model = builder.fn(mapping, tuple(info.shape), info.num_classes)
    except Exception as e:
        raise BuilderError(f"model={builder.ref} raised {_last_line(e, builder.file)}") from None
    if not isinstance(model, keras.Model):
        raise BuilderError(f"model={builder.ref} returned {type(model).__name__}, not a Keras model: return a "
                           "keras.Model (keras.Sequential or keras.Model(inputs, outputs))")
    check_shapes(builder, model, info)
    try:
        logits = outputs_logits(model, info)
    except BuilderError as e:
        raise BuilderError(f"model={builder.ref}: {e}") from None
    inp = keras.Input(shape=info.array_shape, dtype="float32", name="pixels")
    h = layers.Reshape(info.shape, name="as_height_width_channels")(inp) if info.array_shape != info.shape else inp
    h = model(h)
    # float32 probabilities whatever the policy: the served classifier, averages and the loss read them
    out = layers.Activation("softmax" if logits else "linear", dtype="float32", name="probs")(h)
    return keras.Model(inp, out, name=f"custom_{builder.name}"), mapping


def check_shapes(builder: Builder, model: keras.Model, info: DatasetInfo) -> None:
    """The model takes (height, width, channels) images and answers one value per class."""
    try:
        took, gave = tuple(model.input_shape[1:]), tuple(model.output_shape[1:])
    except (AttributeError, ValueError):
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
