"""A user's network that trains itself: compiled by its builder, or fitted by a keras-tuner HyperModel's own
``fit(hp, model, *args, **kwargs)``; trained as keras-tuner trains it, with the platform's callbacks added.

keras-tuner calls ``hypermodel.fit(hp, model, x, y, validation_data=..., callbacks=[...], **search_kwargs)``,
whose default is ``model.fit(*args, **kwargs)``. Here the model is the builder's own (not the platform's
wrapper), ``x`` are float32 arrays with a channel axis (0-1 for a keras-tuner builder, as its guide feeds
them; 0-255 for a ``build(hp, input_shape, num_classes)`` builder) and ``y`` the labels in the form its
compiled loss asks for (one-hot, or integers for a sparse loss). Arrays, not a batched dataset: a
``batch_size`` or ``shuffle`` the user's fit passes takes effect. The model's ``fit`` is completed while the
user's fit runs (:class:`FitCall`): the recipe's ``epochs`` and ``batch_size`` where the user's fit gives
none, the platform's callbacks (per-epoch logging, pruning, early stopping) beside the user's, and what it
trained with recorded, so a run logs the batch size and epochs the network trained with.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from ..data import DatasetInfo, Splits
from ..metrics import VAL_ACC
from ..model import builder as user
from ..model import networks
from ..model.hyperparameters import Draw, HyperParameters
from ..model.networks import training_given
from ..params import ConfigError, NetworkParams, replaced
from . import fit as F

FIT_ARGS = ("x", "y", "batch_size", "epochs", "verbose", "callbacks", "validation_split", "validation_data", "shuffle")
SET_BY_FIT = ("epochs", "batch_size")  # the recipe's, unless the user's fit passes its own to model.fit
# The recipe's parameters a model compiled by its builder does not use (its own optimizer, loss and rate).
OWN_COMPILE_IGNORES = ("learning_rate", "warmup_epochs", "label_smoothing")


def trains_itself(p: NetworkParams, model: keras.Model) -> bool:
    """Whether the network ``model`` (as networks.build made it) trains by its builder's compile or fit."""
    return user.load(p.builder).fit is not None or bool(getattr(user.inner(model), "compiled", False))


def logged(p: NetworkParams, model: keras.Model, defined: Collection[str] = ()) -> dict[str, Any]:
    """The parameters a run of ``p`` logs: its flat form; where its builder compiled the model, the compiled
    optimizer, learning rate and loss instead of the recipe's, which it does not use, but for a name the
    builder ``defined`` itself (hp.Float("learning_rate", ...)): its value (the builder's other names are
    logged beside: train.lineage)."""
    flat = p.flat()
    if not (inner := user.inner(model)).compiled:
        return flat
    optimizer = compiled_optimizer(inner)
    rate = optimizer.learning_rate
    try:
        shown_rate: Any = float(keras.ops.convert_to_numpy(rate))
    except (TypeError, ValueError):
        shown_rate = type(rate).__name__  # a schedule
    own = {"compiled_by": "builder", "compiled_optimizer": type(optimizer).__name__,
           "compiled_learning_rate": shown_rate, "compiled_loss": loss_name(inner)}
    return {**{k: v for k, v in flat.items() if k not in OWN_COMPILE_IGNORES or k in defined}, **own}


def compiled_optimizer(model: keras.Model) -> keras.optimizers.Optimizer:
    """The optimizer a compiled model trains with (a LossScaleOptimizer's own, under mixed float16)."""
    return getattr(model.optimizer, "inner_optimizer", model.optimizer)


def loss_name(model: keras.Model) -> str:
    loss = model.loss
    return loss if isinstance(loss, str) else getattr(loss, "name", None) or getattr(loss, "__name__", "") or \
        type(loss).__name__


def label_form(model: keras.Model) -> str:
    """``sparse`` (integer labels) or ``one_hot``, as the model's compiled loss asks: Keras' sparse losses
    take class numbers, the others (categorical_crossentropy, ...) one row per image."""
    if isinstance(model.loss, dict | list | tuple):
        raise ConfigError("the model is compiled with one loss per output; a classifier here has one output")
    return "sparse" if "sparse" in loss_name(model).lower() else "one_hot"


def images(x: np.ndarray, info: DatasetInfo, keras_tuner: bool) -> np.ndarray:
    """uint8 images as the builder's model takes them: float32 with a channel axis, 0-1 for keras-tuner's."""
    x = x.reshape(len(x), *info.shape).astype("float32")
    return x / np.float32(255.0) if keras_tuner else x


def labels(y: np.ndarray, num_classes: int, form: str) -> np.ndarray:
    if y.ndim == 2:  # class probabilities (a teacher's)
        if form == "sparse":
            raise ConfigError("distilling into a model whose loss takes class numbers (a sparse loss): compile "
                              "it with categorical_crossentropy, or train the student with the platform's recipe")
        return y.astype("float32")
    return y.astype("int32") if form == "sparse" else keras.utils.to_categorical(y, num_classes).astype("float32")


class _Drawn(BaseException):
    """Raised by a dry :class:`FitCall` once the user's fit has said how it calls model.fit (a BaseException:
    a user's ``except Exception`` around model.fit does not swallow it)."""


class FitCall:
    """Stands in for ``model.fit`` while the user's fit runs: completes its arguments with the platform's and
    records what the network trains with (``effective``). ``dry``: record and stop, training nothing."""

    def __init__(self, model: keras.Model, p: NetworkParams, callbacks: list, validation: tuple, dry: bool = False,
                 images: int = 0):
        self.model, self.p, self.callbacks, self.validation, self.dry = model, p, callbacks, validation, dry
        self.images = images  # training images per epoch: the steps an epoch takes at the batch size the call uses
        self.effective: dict[str, Any] = {}
        self.history: keras.callbacks.History | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.update(zip(FIT_ARGS[2:], args[2:], strict=False))  # model.fit(x, y, 32, 5): by name, completed
        args = args[:2]
        kwargs.setdefault("epochs", self.p.epochs)
        kwargs.setdefault("batch_size", self.p.batch_size)
        kwargs.setdefault("validation_data", self.validation)
        theirs = [c for c in kwargs.get("callbacks") or [] if all(c is not mine for mine in self.callbacks)]
        kwargs["callbacks"] = [*self.callbacks, *theirs]
        kwargs["verbose"] = 0  # the platform prints one line per epoch
        self.effective = {k: kwargs[k] for k in SET_BY_FIT}
        if self.dry:
            raise _Drawn
        steps = math.ceil(self.images / (kwargs["batch_size"] or self.p.batch_size))
        with F.settled_batch_norm(self.model, steps, on=self.p.bn_settle):
            self.history = type(self.model).fit(self.model, *args, **kwargs)
        return self.history


def call_fit(b: user.Builder, hp: HyperParameters, model: keras.Model, x, y, call: FitCall) -> Any:
    """The builder's fit (keras-tuner's default: ``model.fit(*args, **kwargs)``) with ``call`` as model.fit."""
    model.fit = call  # an attribute of this instance, removed after
    try:
        if b.fit is None:
            return model.fit(x, y, validation_data=call.validation, callbacks=list(call.callbacks))
        return b.fit(hp, model, x, y, validation_data=call.validation, callbacks=list(call.callbacks))
    finally:
        model.__dict__.pop("fit", None)


@dataclass
class Examined:
    """What one build (and a dry call of its fit) of a network's builder showed, and the model it built."""

    params: NetworkParams  # made concrete: every value it reads explicit
    read: set[str]  # names it read or defined
    defined: set[str]  # names it defined (keras-tuner calls), active or not
    trains_itself: bool
    compiled: str  # how the builder compiled its model ("" if not), for messages
    model: keras.Model  # the platform's model around the builder's (model/builder.py build)
    precision: str = ""  # built to train (:func:`prepared`): the precision it trains in; else ""
    added: dict[str, Any] = field(default_factory=dict)  # the values a trial's draw added to ``params``, by name

    def fit(self, s: Splits, p: NetworkParams, callbacks=(), *,
            targets: np.ndarray | None = None) -> tuple[F.FitResult, dict[str, float]]:
        """Train the model built, as keras-tuner's HyperModel.fit does: by its builder's own fit, or by the compile
        its builder gave it (:func:`fit_itself`); else by the default fit, the platform's recipe (train/fit.py).
        Returns the fit's result and what a builder's own fit returned (nothing for the recipe's)."""
        if self.trains_itself:
            return fit_itself(self.model, s, p, callbacks, targets=targets)
        return F.fit(self.model, s, p, callbacks=callbacks, targets=targets), {}


def examine(p: NetworkParams, info: DatasetInfo, draw: Draw | None = None, *, to_train: bool = False) -> Examined:
    """Build ``p``'s network (``draw``: a trial suggests what the recipe does not give) and, where it trains
    itself, call its fit dry (it records how it would call model.fit and trains nothing). No training.
    ``to_train``: built as it trains (train.fit fresh_built), so the model built is the one trained: once a run."""
    b = user.load(p.builder)
    if to_train:
        served, hp, precision = F.fresh_built(p, info, draw=draw)
    else:
        (served, hp), precision = networks.built(p, info, draw=draw), ""
    values, effective, model = hp.recorded(), {}, user.inner(served)
    read, defined = set(hp.read), set(hp.defined)
    itself = trains_itself(p, served)
    if itself:
        fit_hp = HyperParameters({**p.hp_values(), **values}, draw, *training_given(p))
        x = images(np.zeros((8, *info.shape), "uint8"), info, b.keras_tuner)
        form = label_form(model) if model.compiled else "one_hot"  # uncompiled: the recipe's categorical loss
        y = labels(np.arange(8) % info.num_classes, info.num_classes, form)
        call = FitCall(model, p, [], (x, y), dry=True)
        try:
            call_fit(b, fit_hp, model, x, y, call)
        except _Drawn:
            pass
        except Exception as e:
            raise user.BuilderError(f"model={b.ref}: its fit raised {user.last_line(e, b.file)}") from None
        else:  # it trained some other way (its own loop, keras.Model.fit): no logging, pruning, curves
            raise user.BuilderError(f"model={b.ref}: its fit never calls model.fit(...) on the model it is given; "
                                    "the platform's per-epoch logging, pruning and early stopping reach it through "
                                    "that call: train with model.fit(*args, **kwargs)")
        values = {**values, **fit_hp.recorded()}
        effective = {k: call.effective[k] for k in SET_BY_FIT if k in call.effective}
        read, defined = read | fit_hp.read, defined | set(fit_hp.defined)
    platform = {k: v for k, v in values.items() if k in p.training_values()}
    own = {k: v for k, v in values.items() if k not in platform}
    changes = {**platform, **effective}
    concrete = p
    if any(p.flat().get(k) != v for k, v in changes.items()) or {**p.hp_values(), **own} != p.hp_values():
        try:
            concrete = replaced(p, **changes, **p.network_changes(own))
        except ConfigError as e:
            named = (f" (it defines {', '.join(sorted(platform))}, a name of the platform's training parameters too: "
                     "rename it in the builder if that is what is refused)") if platform else ""
            raise user.BuilderError(f"model={b.ref}: the values it defines cannot be recorded: {e}{named}") from None
    compiled = f"{type(compiled_optimizer(model)).__name__}, loss {loss_name(model)}" if model.compiled else ""
    added = {k: v for k, v in concrete.hp_values().items() if p.hp_values().get(k, object()) != v}
    added.update({k: v for k, v in concrete.training_values().items() if p.training_values()[k] != v})
    if to_train and (concrete.seed, concrete.precision) != (p.seed, p.precision):
        # a builder that defines the seed or the precision itself: its network starts from its own (every value
        # now given, so no draw), as a final retrain given ``added`` builds it
        again = examine(concrete, info, to_train=True)
        return Examined(concrete, read, defined, itself, compiled, again.model, again.precision, added)
    return Examined(concrete, read, defined, itself, compiled, served, precision, added)


def concrete(p: NetworkParams, info: DatasetInfo, draw: Draw | None = None) -> NetworkParams:
    """``p`` with every value its builder reads made explicit: the keras-tuner values its build and its fit
    define (``draw``'s suggestions, else the defaults) in its own values, and the epochs and batch size its fit
    trains with; a platform parameter that the builder also defines by name takes the builder's value.
    A network whose values are all given comes back equal."""
    return examine(p, info, draw).params


def prepared(p: NetworkParams, info: DatasetInfo, draw: Draw | None = None) -> Examined:
    """A run's network, built once as it trains (:func:`examine` ``to_train``): its recipe made concrete by its
    builder's own definitions (a trial's ``draw`` suggests them; ``added`` says what that added, so a final
    retrain given them trains what the trial trained) and the model train.job trains."""
    return examine(p, info, draw, to_train=True)


def check_builder(points: list[NetworkParams], info: DatasetInfo, *, searched: Collection[str] = (),
                  fixed: Collection[str] = ()) -> None:
    """A user's builder, once before any training, at every point a command or study can train: it loads,
    builds a Keras model that takes ``info``'s images and answers its classes, its fit (if its own) runs
    up to model.fit, and it reads every parameter it is given at one point or another (a study's
    parameter may be read only where another allows it). A name the builder defines (hp.Int, ...) that
    the study file also searches (or fixes, for a training parameter) is defined twice; a model that
    trains itself is not given what it would not use (augmentation, the recipe's optimizer)."""
    # the package's own builders read every value at every point (their tests): one point each shows a value they
    # would not read or cannot build (a name misspelt in hp, widths too deep for the images), at a study's start
    # one build, not one a point
    first: dict[str, NetworkParams] = {}
    for p in points:
        first.setdefault(p.builder, p)
    points = [p for p in points if not user.load(p.builder).pinned or first[p.builder] is p]
    keras.utils.clear_session()
    seen = {p: examine(p, info) for p in dict.fromkeys(points)}
    keras.utils.clear_session()
    read: dict[str, set[str]] = {}  # by builder: what it read at any point
    for p, e in seen.items():
        read.setdefault(p.builder, set()).update(e.read)
    for p, e in seen.items():
        b = user.load(p.builder)
        user.unread(b, set(p.hp_values()), read[p.builder])
        twice = sorted((set(searched) | (set(fixed) & set(p.training_values()))) & e.defined)
        if twice:
            raise user.BuilderError(f"model={b.ref} defines {', '.join(twice)} itself (hp.Int, hp.Choice, ...) and the "
                                    "study file gives it too: a name is defined once; remove it from the study "
                                    "file (the builder's range is searched), or from the builder")
        if e.trains_itself:
            by = f"compiled by the builder ({e.compiled})" if e.compiled else "fitted by its HyperModel.fit"
            if p.augment:
                raise user.BuilderError(f"model={b.ref}: its model trains itself ({by}), fed arrays as keras-tuner "
                                        "feeds them, so the platform's augmentation (augment=true) would not be "
                                        "applied: set augment to false, or put augmentation layers "
                                        "(keras.layers.RandomFlip, ...) in the model")
            explicit = training_given(p)[1]  # what the recipe sets, not the family's defaults
            unused = [k for k in OWN_COMPILE_IGNORES if e.compiled and k not in e.defined and k in explicit]
            if unused:
                raise user.BuilderError(f"model={b.ref}: its model is {by}, so "
                                        f"{', '.join(f'{k}={getattr(p, k)}' for k in unused)} would not be used: "
                                        "remove it, or leave the model uncompiled to train with the platform's "
                                        "recipe")


def without_compile(served: keras.Model) -> keras.Model:
    """``served`` and its builder's model uncompiled: a logged model carries no training state (serving needs
    none, Keras would warn when loading an optimizer saved before it was built, and the recipe's Adam, compiled
    on ``served`` itself, saved its two moments beside every weight: a logged file three times the network)."""
    for model in dict.fromkeys((served, user.inner(served))):
        if model.compiled:
            model.optimizer, model.loss, model.compiled, model._compile_config = None, None, False, None
    return served


class ValidationAccuracy(keras.callbacks.Callback):
    """``val_accuracy`` in each epoch's logs where the model's own metrics give none (logging, pruning and
    early stopping read it): the builder's model scored on the validation images."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        super().__init__()
        self.x, self.y = x, y

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and VAL_ACC not in logs:
            answers = self.model.predict(self.x, batch_size=1024, verbose=0)
            logs[VAL_ACC] = float(np.mean(np.argmax(answers, axis=1) == self.y))


def fit_itself(served: keras.Model, s: Splits, p: NetworkParams, callbacks=(), *,
               targets: np.ndarray | None = None) -> tuple[F.FitResult, dict[str, float]]:
    """Train the builder's own model inside ``served`` by its compile and fit (see the module's docstring); an
    uncompiled model is compiled with the recipe's optimizer and loss. Returns the fit's result and what the
    user's fit returned, read as keras-tuner reads it (:func:`as_keras_tuner_reads`)."""
    t0 = time.perf_counter()  # the training's time: its inputs and compile too, as in train/fit.py fit
    b, model, info = user.load(p.builder), user.inner(served), s.info
    steps = math.ceil(len(s.x_train) / p.batch_size)
    if not model.compiled:
        F.compile_model(model, p, steps, steps_per_execution=F.default_steps_per_execution(),
                        from_logits=user.outputs_logits(model, info, high=1.0 if b.keras_tuner else 255.0))
    form = label_form(model)
    x_val = images(s.x_val, info, b.keras_tuner)
    validation = (x_val, labels(s.y_val, info.num_classes, form))
    cbs = [ValidationAccuracy(x_val, s.y_val), *F.standard_callbacks(p, s.y_val), *callbacks]
    call = FitCall(model, p, cbs, validation, images=len(s.x_train))
    F.seed_everything(p.seed)
    try:
        hp = HyperParameters(p.hp_values(), None, *training_given(p))
        returned = call_fit(b, hp, model, images(s.x_train, info, b.keras_tuner),
                            labels(s.y_train if targets is None else targets, info.num_classes, form), call)
    finally:
        F.one_step_per_call(model)
    wall = time.perf_counter() - t0
    if returned is None:
        raise user.BuilderError(f"model={b.ref}: its fit returned None; keras-tuner needs the History, a number or a "
                                "dict of metrics: did you forget to return model.fit(...)?")
    result = F.fit_result(call.history.history if call.history else {}, len(s.x_train), wall)
    return result, as_keras_tuner_reads(returned)


def as_keras_tuner_reads(returned: Any) -> dict[str, float]:
    """What a HyperModel's fit returned, as keras-tuner scores it: a number as is; a dict's numbers; a
    History at its best epoch (here by validation accuracy, the study's objective); a list (one per
    execution) averaged. Logged on the run as ``fit_returned_*``."""
    if isinstance(returned, list):
        each = [as_keras_tuner_reads(r) for r in returned]
        return {k: float(np.mean([e[k] for e in each if k in e])) for k in each[0]} if each else {}
    if isinstance(returned, keras.callbacks.History):
        h = returned.history
        scores = h.get(VAL_ACC) or []
        if not scores:
            return {}
        best = int(np.argmax(scores))
        return {"best_epoch": float(best), **{k: float(v[best]) for k, v in h.items() if len(v) > best}}
    if isinstance(returned, dict):
        return {str(k): float(v) for k, v in returned.items() if isinstance(v, int | float | np.floating)}
    if isinstance(returned, int | float | np.floating):
        return {"value": float(returned)}
    raise user.BuilderError(f"its fit returned {type(returned).__name__}; keras-tuner reads a History, a number, a "
                            "dict of metrics or a list of these")
