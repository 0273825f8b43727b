"""A study file's search space as typed distributions, and the only place that calls ``trial.suggest_*``.

Space entries in a study file::

    dropout:       {type: float, low: 0.1, high: 0.5}
    learning_rate: {type: float, low: 3.0e-4, high: 5.0e-3, log: true}
    dense_units:   {type: categorical, choices: [64, 128, 256]}
    filters:       {type: widths, layers: [2, 3], units: [16, 32, 64, 128]}

``widths`` suggests a number of layers, then a width per layer (the comma list the builders take).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from ..params import ConfigError, parse_int_list

SPACE_TYPES = ("float", "int", "categorical", "widths")


@dataclass(frozen=True)
class Dist:
    """One searched parameter: a float or int range (maybe log-scaled), a set of choices, or widths."""

    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()
    layers: tuple[int, int] = (0, 0)  # widths: fewest and most layers
    units: tuple[int, ...] = ()  # widths: the width of each layer is one of these

    def as_file(self) -> dict[str, Any]:
        """The entry as a study file writes it (for messages)."""
        if self.kind in ("float", "int"):
            return {"type": self.kind, "low": self.low, "high": self.high, **({"log": True} if self.log else {})}
        if self.kind == "categorical":
            return {"type": self.kind, "choices": list(self.choices)}
        return {"type": self.kind, "layers": list(self.layers), "units": list(self.units)}

    def corners(self) -> list[Any]:
        """The extreme values this distribution can produce, checked like user input."""
        if self.kind in ("float", "int"):
            return [self.low, self.high]
        if self.kind == "categorical":
            return list(self.choices)
        lo, hi = self.layers
        return [",".join([str(u)] * n) for n in (lo, hi) for u in (min(self.units), max(self.units))]

    def contains(self, value: Any) -> bool:
        if self.kind == "widths":
            try:
                widths = parse_int_list(value)
            except ValueError:
                return False
            return self.layers[0] <= len(widths) <= self.layers[1] and all(w in self.units for w in widths)
        if self.kind == "categorical":
            return value in self.choices
        return self.low <= value <= self.high


def parse_dist(key: str, raw: Any, where: str) -> Dist:
    """One space entry of a study file, refused with the reason when malformed."""
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind not in SPACE_TYPES:
        raise ConfigError(f"{where}: {key} has type {kind!r}; use one of {', '.join(SPACE_TYPES)}")
    try:
        if kind in ("float", "int"):
            d = Dist(kind, low=raw["low"], high=raw["high"], log=bool(raw.get("log")))
            if d.low > d.high:
                raise ConfigError(f"{where}: {key} has low > high")
            if d.log and d.low <= 0:
                raise ConfigError(f"{where}: {key} is log-scaled, so low must be > 0")
            return d
        if kind == "categorical":
            if not raw["choices"]:
                raise ConfigError(f"{where}: {key} has no choices")
            return Dist(kind, choices=tuple(raw["choices"]))
        lo, hi = raw["layers"]
        units = tuple(int(u) for u in raw["units"])
        if not units:
            raise ValueError("no units")
        return Dist(kind, layers=(int(lo), int(hi)), units=units)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {key} is malformed ({e!r}); see the examples in docs/studies.md") from None


def parse_space(raw: Any, where: str) -> dict[str, Dist]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: space must map parameter names to distributions; got {raw!r}")
    return {key: parse_dist(key, value, where) for key, value in raw.items()}


def as_trial_params(space: dict[str, Dist], point: dict[str, Any]) -> dict[str, Any]:
    """An ``enqueue`` point in Optuna's own parameter names (``widths`` become a count and one
    choice per layer, as :func:`suggest` draws them)."""
    out: dict[str, Any] = {}
    for key, value in point.items():
        if key in space and space[key].kind == "widths":  # else searched as named (a builder's own: hp.Int ...)
            widths = parse_int_list(value)
            out[f"{key}_layers"] = len(widths)
            out.update({f"{key}_{i}": w for i, w in enumerate(widths)})
        else:
            out[key] = value
    return out


def suggest(trial: optuna.Trial | optuna.trial.FixedTrial, space: dict[str, Dist]) -> dict[str, Any]:
    """Draw one configuration. The only place that calls ``trial.suggest_*``."""
    out: dict[str, Any] = {}
    for key, d in space.items():
        if d.kind == "float":
            out[key] = trial.suggest_float(key, d.low, d.high, log=d.log)
        elif d.kind == "int":
            out[key] = trial.suggest_int(key, int(d.low), int(d.high), log=d.log)
        elif d.kind == "categorical":
            out[key] = trial.suggest_categorical(key, list(d.choices))
        else:
            n = trial.suggest_int(f"{key}_layers", *d.layers)
            out[key] = ",".join(str(trial.suggest_categorical(f"{key}_{i}", list(d.units))) for i in range(n))
    return out
