"""From text and study files to checked, typed values, in one documented order.

:func:`values` coerces and checks overrides against a list of :class:`~.table.Param` (every error
reported at once, before any work starts); :func:`family` and :func:`command` build the typed
values of :mod:`.typed`; :func:`compose` owns the order in which a study's layers override each
other (tests/test_params.py states it case by case).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar, cast

from . import commands, migrations, typed
from . import table as T
from .migrations import unquoted


def coerce(param: T.Param, value: Any) -> Any:
    """Turn a CLI/MLproject string into the parameter's type, with a clear error."""
    kind = param.type
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    text = str(value).strip()
    try:
        if kind is bool:
            low = text.lower()
            if low in T.TRUE_WORDS:
                return True
            if low in T.FALSE_WORDS:
                return False
            raise ValueError
        if kind is int:
            f = float(text)
            if f != int(f):
                raise ValueError
            return int(f)
        return kind(text)
    except ValueError:
        what = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, "text")
        raise T.ConfigError(f"{param.name}={text!r}: must be {what}") from None


NOT_GIVEN = T.NOT_GIVEN


def values(params: list[T.Param], overrides: Mapping[str, Any] | None, *, what: str,
           family: str | None = None) -> dict[str, Any]:
    """Defaults <- overrides, coerced and checked; every error reported at once.

    An override of None leaves the default. For a parameter whose default is None ("not given"),
    an empty text is "not given" too: that is how MLproject forwards a parameter nobody set (and
    `mlflow run` records it as the two characters '', which a rebuild reads back)."""
    by_name = {p.name: p for p in params}
    # a parameter that left the package: read as absent at the value that trains as today, else refused
    # with the commit that still trains it (params/migrations.py)
    given = dict(overrides or {})  # the rest beside a retired one: aug_erase mattered only with augment
    others = migrations.drop_retired({k: v for k, v in given.items() if k not in by_name}, what, family,
                                     beside=given)
    overrides = {**{k: v for k, v in given.items() if k in by_name}, **others}
    unknown = set(overrides) - set(by_name)
    left = sorted(unknown & set(migrations.retired()))  # a retired name where the builder's own would be (custom)
    if left:
        raise T.ConfigError(f"{what}: {migrations.refusal(left[0], overrides[left[0]])}; a parameter of your "
                            "builder's own goes in hp (docs/networks.md)")
    if unknown:
        raise T.ConfigError(
            f"unknown parameter(s) for {what}: {', '.join(sorted(unknown))}; known: {', '.join(by_name)}")
    out = {p.name: p.default for p in params}
    errors, unparsed = [], set()
    for key, value in (overrides or {}).items():
        if value is None or (by_name[key].default is None and str(value).strip() in NOT_GIVEN):
            continue
        try:
            out[key] = coerce(by_name[key], value)
        except T.ConfigError as e:
            errors.append(str(e))
            unparsed.add(key)
    for p in params:
        v = out[p.name]
        if p.check is not None and v is not None and p.name not in unparsed and (msg := p.check(v)):
            errors.append(f"{p.name}={v!r}: {msg}")
    if errors:
        raise T.ConfigError(f"invalid {what} parameter(s):\n  " + "\n  ".join(errors))
    return out


def _build(cls: type, resolved: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    kw = {k: (tuple(T.parse_int_list(v)) if k in typed.WIDTH_FIELDS and v is not None else v)
          for k, v in resolved.items() if k in names}
    if "hp" in kw:
        kw["hp"] = T.canonical_hp(kw["hp"] or {})
    if cls is typed.CustomParams and kw.get("model") is None:
        raise T.ConfigError("model is required for a custom network: give your builder as model=FILE.py:FUNCTION "
                            "(mlflow run: -P model=...; a study file: model: ...), e.g. examples/residual.py:build")
    return cls(**kw)


def family(name: str, overrides: Mapping[str, Any] | None = None) -> typed.FamilyParams:
    """One family's parameters: the table's defaults updated by ``overrides``, checked. For a user's
    network (custom), a name that is not the platform's is the builder's: it joins ``hp``."""
    if T.names_its_builder(name):  # a retired name at today's value is not the builder's (params/migrations.py)
        overrides = builder_split(migrations.drop_retired(overrides or {}, name, name))
    resolved = values(T.family_params(name), overrides, what=name, family=name)
    return _build(typed.FAMILY_CLASSES[name], resolved)


def builder_split(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A custom network's overrides with every name that is not a platform parameter moved into ``hp``
    (a study's fixed and sampled values of the builder's own; docs/networks.md)."""
    platform = {p.name for p in T.family_params(T.OWN_NETWORK)}
    own = {k: v for k, v in overrides.items() if k not in platform}
    if not own:
        return dict(overrides)
    try:
        hp = T.parse_hp(overrides.get("hp") or {})
    except ValueError as e:
        raise T.ConfigError(f"hp: {e}") from None
    return {**{k: v for k, v in overrides.items() if k in platform}, "hp": json.dumps({**hp, **own}, sort_keys=True)}


def network(name: str, overrides: Mapping[str, Any] | None = None) -> typed.NetworkParams:
    """A network's parameters, built-in or a user's (what studies, trials and reproductions train)."""
    if name not in T.NETWORK_FAMILIES:
        raise T.ConfigError(f"family {name!r} trains no network: choose one of {', '.join(T.NETWORK_FAMILIES)}")
    params = family(name, overrides)
    assert isinstance(params, (typed.MlpParams, typed.CnnParams, typed.CustomParams))
    return params


def as_trained(names: list[str], logged: Mapping[str, str]) -> dict[str, Any]:
    """What a run logged of ``names``, read as today's recipe (migrations.upgrade): a parameter added after
    it has the value it trained with (known without a record, so a rebuild does not depend on today's
    default); one retired since at another value than today's training is refused with the commit that
    rebuilds it."""
    upgraded = migrations.upgrade(logged)
    for k in T.MADE_CONCRETE:  # not given under `mlflow run`: what the run made concrete and trained with
        if unquoted(str(upgraded.get(k, ""))) in T.NOT_GIVEN and T.trained_name(k) in upgraded:
            upgraded[k] = upgraded[T.trained_name(k)]
    return {k: unquoted(v) if isinstance(v, str) else v for k, v in upgraded.items() if k in names}


def trained(family_name: str, logged: Mapping[str, str]) -> typed.NetworkParams:
    """The parameters a network's run trained with, from what it logged (:func:`as_trained`)."""
    return network(family_name, as_trained([p.name for p in T.family_params(family_name)], logged))


P = TypeVar("P", bound=typed.BaselineParams | typed.MlpParams | typed.CnnParams | typed.CustomParams)


def replaced(params: P, **changes: Any) -> P:
    """``params`` with ``changes``, checked again (a dataclasses.replace that cannot break a rule)."""
    return cast(P, family(params.FAMILY, {**params.flat(), **changes}))


F = TypeVar("F", bound=typed.FitParams)


def with_epochs(p: F, train_images: int) -> tuple[F, str | None]:
    """``p`` with its epochs made concrete for ``train_images`` training images: given, they stay; not given, the
    family's (table.EPOCHS), raised where an epoch is so few optimizer steps that training would take fewer than
    table.MIN_STEPS, with a sentence saying so (else None). Every run makes them concrete before it logs them."""
    if p.epochs is not None:
        return p, None
    base = T.EPOCHS[p.FAMILY]
    steps = max(1, math.ceil(train_images / p.batch_size))
    epochs = max(base, math.ceil(T.MIN_STEPS / steps))
    note = None if epochs == base else (
        f"{train_images:,} training images are {steps} optimizer step{'s' if steps > 1 else ''} an epoch at batch "
        f"{p.batch_size}: up to {epochs} epochs ({T.MIN_STEPS} steps or more), not {base}; give epochs to choose "
        "(docs/data.md)")
    return cast(F, replaced(cast(Any, p), epochs=epochs)), note


def tune_args(overrides: Mapping[str, Any] | None = None) -> typed.TuneArgs:
    resolved = values(T.TUNE_PARAMS, overrides, what="tune")
    return _build(typed.TuneArgs, resolved)


def command(name: str, overrides: Mapping[str, Any] | None = None) -> typed.CommandArgs:
    """Any command's typed values (``main`` is ``tune``)."""
    if name in T.FAMILIES:
        resolved = values(commands.command_params(name), overrides, what=name, family=name)
        experiment, system_metrics = resolved.pop("experiment"), resolved.pop("system_metrics")
        return typed.TrainArgs(params=_build(typed.FAMILY_CLASSES[name], resolved), experiment=experiment,
                               system_metrics=system_metrics)
    if name in ("tune", "main"):
        return tune_args(overrides)
    if name == "register":
        # register takes tune's study and registry parameters and keeps tune's defaults for the rest
        given = values(commands.command_params("register"), overrides, what="register")
        return tune_args(given)
    if name == "launch":
        resolved = values(commands.command_params("launch"), overrides, what="launch")
        own = {p.name: resolved.pop(p.name) for p in T.LAUNCH_OWN_PARAMS}
        return typed.LaunchArgs(**own, tune=_build(typed.TuneArgs, resolved))
    cls = {"predict": typed.PredictArgs, "reproduce": typed.ReproduceArgs, "dashboard": typed.DashboardArgs,
           "storage-proxy": typed.ProxyArgs, "serve": typed.ServeArgs, "promote": typed.PromoteArgs}[name]
    return _build(cls, values(commands.command_params(name), overrides, what=name))


# ----------------------------------------------------------------------------- a study's layers


@dataclass(frozen=True)
class Layers:
    """What a study run stacks on the family's defaults, lowest first (:func:`compose`)."""

    fixed: Mapping[str, Any] = field(default_factory=dict)  # the study file's ``fixed``
    budget: Mapping[str, Any] = field(default_factory=dict)  # the study file's per-trial epochs, train_samples
    sampled: Mapping[str, Any] = field(default_factory=dict)  # what the trial drew from the space
    command_line: Mapping[str, Any] = field(default_factory=dict)  # the tune command's seed, data_dir, budget
    final: Mapping[str, Any] = field(default_factory=dict)  # the study file's ``final`` (and the final's seed)

    def merged(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for layer in (self.fixed, self.budget, self.sampled, self.command_line, self.final):
            out.update(layer)
        return out


def compose(name: str, layers: Layers) -> typed.NetworkParams:
    """A trial's (or final retrain's) parameters: the table's defaults, the family's own, then the
    study file's fixed values and budget, the sampled values, the command line, the final retrain;
    each layer overrides those before it."""
    return network(name, layers.merged())
