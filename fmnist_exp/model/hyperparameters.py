"""The ``hp`` a builder gets: keras-tuner's ``HyperParameters`` calls, answered by Optuna define-by-run.

A builder written for keras-tuner (``build_model(hp)`` calling ``hp.Int``, ``hp.Float``, ``hp.Choice``,
``hp.Boolean``, ``hp.Fixed``, ``hp.conditional_scope``, ``hp.get``, ``hp.values``) runs unchanged: each
call answers, in this order, the value the recipe gives (a study's ``fixed``, an ``enqueue`` point, a
final retrain, ``reproduce``: what a run recorded), else the trial's suggestion (``draw``: an
``optuna.Trial``), else keras-tuner's default. Read as a mapping (``hp["width"]``) it is the issue-41
builder's ``hp``: the given values.

Values are keras-tuner's, not Optuna's nearest: an ``Int``/``Float`` grid that Optuna cannot express
(``sampling="log"`` with a ``step`` multiplies: 32, 64, 128, ...; a float ``step`` by keras-tuner's
own arithmetic) is suggested as a categorical over exactly the values keras-tuner would offer.
docs/keras-tuner.md maps each call to its Optuna suggestion.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class Draw(Protocol):
    """What suggests a value the recipe does not give: an ``optuna.Trial`` (the builder never sees it)."""

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...
    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...
    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


class _Values(dict):
    """keras-tuner's ``hp.values``, a dict of the active definitions; called, the mapping's ``values()``: what
    ``hp`` holds, given or defined (a ``build(hp, input_shape, num_classes)`` builder may walk them)."""

    def __init__(self, owner: HyperParameters):
        super().__init__()
        self._owner = owner

    def __call__(self) -> Any:
        return [self._owner[name] for name in self._owner]


@dataclass(frozen=True)
class Defined:
    """One hyperparameter as the builder defined it: the call and its arguments (for messages and checks)."""

    name: str
    call: str  # Int, Float, Choice, Boolean, Fixed
    args: Mapping[str, Any]
    default: Any
    grid: tuple[Any, ...] | None  # every value it can take, where finite; None: a continuous range

    def contains(self, value: Any) -> bool:
        if self.grid is not None:
            return value in self.grid or (isinstance(value, float) and any(
                isinstance(g, float) and math.isclose(value, g, rel_tol=1e-12) for g in self.grid))
        low, high = self.args.get("min_value"), self.args.get("max_value")
        return isinstance(value, int | float) and low is not None and high is not None and low <= value <= high

    def shown(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.args.items() if v is not None)
        return f"hp.{self.call}({self.name!r}, {args})"


class HyperParameters(Mapping[str, Any]):
    """keras-tuner's ``HyperParameters`` for one build (see the module's docstring). ``values`` holds the
    active values the builder read or defined (what a run logs and ``reproduce`` gives back);
    ``defined`` every definition, also inactive ones; ``read`` every name asked for."""

    def __init__(self, given: Mapping[str, Any] | None = None, draw: Draw | None = None,
                 platform: Mapping[str, Any] | None = None, explicit: Collection[str] = ()):
        self._given = dict(given or {})
        self._draw = draw
        # The recipe's training parameters (batch_size, learning_rate, ...): a definition of the same name is the
        # builder's; it answers the recipe's value outside a search where the range holds it; one the recipe
        # sets (``explicit``: not the family's default) that the range cannot take is refused, not replaced.
        self._platform = dict(platform or {})
        self._explicit = set(explicit)
        self.values: _Values = _Values(self)
        self.defined: dict[str, Defined] = {}
        self.read: set[str] = set()
        self._conditions: list[tuple[str, tuple[Any, ...]]] = []
        self._scopes: list[str] = []

    # -- keras-tuner's definitions ---------------------------------------------------------------------------

    def Int(self, name: str, min_value: int, max_value: int, step: int | None = None, sampling: str = "linear",
            default: int | None = None, parent_name: str | None = None, parent_values: Any = None) -> int | None:
        for arg, v in (("min_value", min_value), ("max_value", max_value), ("step", step)):
            if v is not None and int(v) != v:
                raise ValueError(f"hp.Int({name!r}): {arg} must be an int, got {v!r}")
        sampling = _sampling(name, sampling, min_value, max_value, step)
        lo, hi = int(min_value), int(max_value)
        step = int(step) if step is not None else (1 if sampling == "linear" else None)
        grid = None if step is None or step == 1 and sampling == "linear" else tuple(
            int(v) for v in _grid(lo, hi, step, sampling))
        if grid is None:
            grid = tuple(range(lo, hi + 1)) if hi - lo < 10_000 else None

        def suggest(draw: Draw, full: str) -> Any:
            if step is None:  # every int in range; reverse_log has no Optuna prior: uniform
                return draw.suggest_int(full, lo, hi, log=sampling == "log")
            if sampling == "linear":
                return draw.suggest_int(full, lo, lo + (hi - lo) // step * step, step=step)
            return draw.suggest_categorical(full, list(_grid(lo, hi, step, sampling, cast=int)))

        args = {"min_value": lo, "max_value": hi, "step": step, "sampling": sampling}
        return self._define(name, "Int", args, lo if default is None else int(default), grid, suggest,
                            parent_name, parent_values)

    def Float(self, name: str, min_value: float, max_value: float, step: float | None = None,
              sampling: str = "linear", default: float | None = None, parent_name: str | None = None,
              parent_values: Any = None) -> float | None:
        sampling = _sampling(name, sampling, min_value, max_value, step)
        lo, hi = float(min_value), float(max_value)
        grid = tuple(_grid(lo, hi, step, sampling)) if step is not None else None

        def suggest(draw: Draw, full: str) -> Any:
            if grid is not None:  # keras-tuner's own grid: Optuna's float step would also offer max_value
                return draw.suggest_categorical(full, list(grid))
            return draw.suggest_float(full, lo, hi, log=sampling == "log")

        args = {"min_value": lo, "max_value": hi, "step": step, "sampling": sampling}
        return self._define(name, "Float", args, lo if default is None else float(default), grid, suggest,
                            parent_name, parent_values)

    def Choice(self, name: str, values: Sequence[Any], ordered: bool | None = None, default: Any = None,
               parent_name: str | None = None, parent_values: Any = None) -> Any:
        choices = _choices(name, values)
        if default is not None and default not in choices:
            raise ValueError(f"hp.Choice({name!r}): the default value should be one of the choices {choices}")
        return self._define(name, "Choice", {"values": list(choices)}, choices[0] if default is None else default,
                            choices, lambda draw, full: draw.suggest_categorical(full, list(choices)),
                            parent_name, parent_values)

    def Boolean(self, name: str, default: bool = False, parent_name: str | None = None,
                parent_values: Any = None) -> bool | None:
        if default not in (True, False):
            raise ValueError(f"hp.Boolean({name!r}): default must be True or False, got {default!r}")
        return self._define(name, "Boolean", {}, bool(default), (True, False),
                            lambda draw, full: draw.suggest_categorical(full, [True, False]),
                            parent_name, parent_values)

    def Fixed(self, name: str, value: Any, parent_name: str | None = None, parent_values: Any = None) -> Any:
        if not isinstance(value, bool | int | float | str):
            raise ValueError(f"hp.Fixed({name!r}): the value must be an int, float, str or bool, got {value!r}")
        # recorded like any value (keras-tuner's values hold it too), never searched
        return self._define(name, "Fixed", {"value": value}, value, (value,), lambda draw, full: value,
                            parent_name, parent_values)

    # -- scopes and conditions -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def conditional_scope(self, parent_name: str, parent_values: Any) -> Iterator[None]:
        """Definitions inside are active only where ``parent_name``'s value is one of ``parent_values``; an
        inactive one answers None, is not searched and is not recorded (keras-tuner's rule)."""
        full = self._full(parent_name)
        if full not in self.defined:
            raise ValueError(f"`HyperParameter` named: {full} not defined.")
        wanted = tuple(parent_values) if isinstance(parent_values, list | tuple | set) else (parent_values,)
        self._conditions.append((full, wanted))
        try:
            yield
        finally:
            self._conditions.pop()

    @contextlib.contextmanager
    def name_scope(self, name: str) -> Iterator[None]:
        self._scopes.append(str(name))
        try:
            yield
        finally:
            self._scopes.pop()

    def is_active(self, name: str) -> bool:
        return self._full(name) in self.values

    # -- reading ----------------------------------------------------------------------------------------------

    def get(self, name: str, default: Any = None) -> Any:
        """keras-tuner's ``hp.get(name)`` (a defined or given value), or a mapping's: ``default`` when absent."""
        try:
            return self[name]
        except KeyError:  # an inactive one raises ValueError, as keras-tuner's does
            self.read.add(self._full(name))
            return default

    def __getitem__(self, name: str) -> Any:
        full = self._full(name)
        if full in self.values or (full in self._given and full not in self.defined):
            self.read.add(full)
            return self.values[full] if full in self.values else self._given[full]
        if full in self.defined:
            raise ValueError(f"{full} is currently inactive.")
        raise KeyError(f"{full!r}: the builder reads hp[{full!r}], but it was not given (given: "
                       f"{', '.join(sorted(self._given)) or 'none'}): add it to hp (-P hp=...) or to the study file's "
                       "fixed or searched values, define it (hp.Int, hp.Choice, ...) before reading it, or use "
                       f"hp.get({full!r}, default) for an optional one")

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        full = self._full(name)
        self.read.add(full)
        return full in self.values or (full in self._given and full not in self.defined)

    def __iter__(self) -> Iterator[str]:
        names = {**self._given, **self.values}
        self.read.update(names)  # a builder that walks them all reads them all
        return iter(names)

    def __len__(self) -> int:
        return len({**self._given, **self.values})

    def __repr__(self) -> str:
        return f"HyperParameters({self.recorded()!r})"

    def recorded(self) -> dict[str, Any]:
        """What a run records: the values given and read that were not defined here, and every active
        definition's value (conditional ones only where active)."""
        plain = {k: v for k, v in self._given.items() if k in self.read and k not in self.defined}
        return {**plain, **self.values}

    # -- internals ---------------------------------------------------------------------------------------------

    def _full(self, name: str) -> str:
        return "/".join([*self._scopes, str(name)])

    def _define(self, name, call, args, default, grid, suggest, parent_name, parent_values):
        if parent_name is not None:
            with self.conditional_scope(parent_name, parent_values):
                return self._define(name, call, args, default, grid, suggest, None, None)
        full = self._full(name)
        if any(parent == full for parent, _ in self._conditions):
            raise ValueError("A conditional `HyperParameter` cannot have the same name as its parent.")
        self.read.add(full)
        definition = Defined(full, call, args, default, grid)
        self.defined.setdefault(full, definition)
        if not all(parent in self.values and self.values[parent] in wanted for parent, wanted in self._conditions):
            return None  # inactive: keras-tuner answers None so that the builder relies on no value
        if full in self.values:  # defined again (e.g. in a loop): the first definition's value
            return self.values[full]
        if full in self._given:
            value = self._given[full]
            if not definition.contains(value):
                raise ValueError(f"{full}={value!r} is given, but {definition.shown()} cannot take it"
                                 + (f" (it takes {', '.join(map(repr, grid[:12]))}"
                                    f"{', ...' if len(grid) > 12 else ''})" if grid else ""))
        elif self._draw is None and full in self._platform and (definition.contains(self._platform[full])
                                                                 or full in self._explicit):
            value = self._platform[full]
            if not definition.contains(value):
                raise ValueError(f"{full}={value!r} is set for the platform, but {definition.shown()}, the "
                                 "builder's definition of that name, cannot take it: give a value it takes, or "
                                 "leave it out (the builder's default)")
        elif self._draw is not None:
            value = suggest(self._draw, full)
        else:
            value = default
        self.values[full] = value
        return value


def _sampling(name: str, sampling: str | None, lo: float, hi: float, step: float | None) -> str:
    sampling = (sampling or "linear").lower()
    if sampling not in ("linear", "log", "reverse_log"):
        raise ValueError(f"hp {name!r}: sampling must be 'linear', 'log' or 'reverse_log', got {sampling!r}")
    if lo > hi:
        raise ValueError(f"hp {name!r}: min_value {lo} is larger than max_value {hi}")
    if sampling != "linear" and lo <= 0:
        raise ValueError(f"hp {name!r}: sampling={sampling!r} needs min_value > 0, got {lo}")
    if step is not None and (step <= 1 if sampling != "linear" else step <= 0):
        raise ValueError(f"hp {name!r}: step must be {'> 1' if sampling != 'linear' else '> 0'} with "
                         f"sampling={sampling!r} (log steps multiply), got {step}")
    return sampling


def _grid(lo: float, hi: float, step: float, sampling: str, cast: type = float) -> Iterator[Any]:
    """keras-tuner's values for a range with a step (hp_types/numerical.py: _get_n_values and
    _get_value_by_index): additive when linear, multiplied under log, mirrored under reverse_log;
    max_value only where the steps land on it."""
    if sampling == "linear":
        n = int((hi - lo) // step + 1)
    else:
        n = int(math.log(hi / lo, step) + 1e-8) + 1
    for i in range(n):
        if sampling == "linear":
            v = lo + i * step
        elif sampling == "log":
            v = lo * math.pow(step, i)
        else:
            v = hi + lo - lo * math.pow(step, i)
        yield cast(v) if cast is int else v


def _choices(name: str, values: Sequence[Any]) -> tuple[Any, ...]:
    """A Choice's values as keras-tuner keeps them: one type, int/float/str/bool (bools kept as bools)."""
    values = list(values)
    if not values:
        raise ValueError(f"hp.Choice({name!r}): values must be a non-empty list")
    if len({type(v) for v in values}) > 1:
        raise TypeError(f"hp.Choice({name!r}): a Choice can contain only one type of value, got {values!r}")
    if not isinstance(values[0], bool | int | float | str):
        raise TypeError(f"hp.Choice({name!r}): values must be int, float, str or bool, got {values!r}")
    return tuple(values)
