"""Earlier runs read as today's recipe: one chain of numbered steps, as Optuna reads an older store.

Every run that trains a network logs ``recipe_version`` (:data:`VERSION`). What an earlier run logged
reaches today's parameters through :func:`upgrade` alone, whoever reads it: ``reproduce``, a resumed
study finding its reference and twin trials (study/candidate.py), the gate's champion, a study file
stored with a study (:func:`drop_retired`). It applies each step after the run's own version in order;
a run from before versions were logged is version 0 and goes through every step. A step that adds a
parameter gives it the value earlier runs trained with only where a run did not log it, so a run logged
between two steps reads the same. A step that retires a parameter (a lever measured that did not pay,
STYLE) reads it as absent at the value that trains as today's code does and refuses any other value,
naming the commit that still trains it.

A change to what a recipe trains is a new step here: add it at the end, never edit an earlier one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

VERSION_PARAM = "recipe_version"  # logged by every run that trains a network (train/job.py)


@dataclass(frozen=True)
class Added:
    """A parameter runs before the step did not log; ``before`` trains as they did."""

    name: str
    before: Any


@dataclass(frozen=True)
class Retired:
    """A parameter that left the package. ``today``: the value that trains as today's code does.
    ``only_with``: it changed nothing unless another parameter (also logged) had this value.
    ``digested``: digests stored before it left hold it at ``today`` (FitParams.digest), so
    today's recipe digests it still."""

    name: str
    today: Any
    why: str
    only_with: tuple[str, str] | None = None
    digested: bool = True


@dataclass(frozen=True)
class Step:
    number: int
    what: str  # the change, and the commit that made it: its runs and later ones log what the step says
    trains_at: str  # for a retired parameter: a commit that trains every value it had
    changes: tuple[Added | Retired, ...]


_RECIPES = "BENCHMARKS.md, 'Recipes: what each choice bought'"
_PLATEAU = "the plateau schedule: the cosine decay replaced it in every recipe and shipped study"
_BEFORE_RETIREMENT = "55dbc2bb573b18f478a24a5ed627d02b8e627705"  # the last commit that trains them

STEPS: tuple[Step, ...] = (
    Step(1, "weight averaging and multi-view answers added (73c4523)", "", (Added("ema", 0.0), Added("tta_shift", 0))),
    Step(2, "residual blocks added (6de2e7d)", "", (Added("residual", False),)),
    Step(3, "a split seed of its own (5859f31)", "", (Added("split_seed", None),)),
    Step(4, "the optimizer named (e82fe20)", "", (Added("optimizer", "adam"),)),
    Step(5, "datasets as values (c6856d5)", "", (Added("data", "fashion-mnist"),)),
    Step(6, "random erasing as published left (eedecc7)", "8c16013b8dbb508fbf48c33df308ec4e0e674ef4", (
        # it left the digest when it left: digests stored since then lack it
        Retired("aug_erase_shape", "keras", "random erasing as published did not pay at the long schedule: "
                "BENCHMARKS.md, 'The long study'", digested=False),)),
    Step(7, "batch-norm statistics settled within an epoch (165d2ef)", "", (Added("bn_settle", False),)),
    Step(8, "the levers that did not pay left (issue 53)", _BEFORE_RETIREMENT, (
        Retired("ema", 0.0, f"weight averaging did not pay: +0.05 points of validation, a cosine decay to zero "
                f"already ends on small steps ({_RECIPES})"),
        Retired("residual", False, f"residual blocks did not pay on the long network ({_RECIPES}); a residual "
                "network of your own: examples/residual.py"),
        Retired("optimizer", "adam", f"SGD with Nesterov momentum did not pay: 94.70-94.92% validation against "
                f"Adam's 95.17% ({_RECIPES})"),
        # the plateau schedule's two settings changed nothing under the cosine decay: read before lr_schedule
        Retired("lr_patience", 2, _PLATEAU, only_with=("lr_schedule", "plateau")),
        Retired("lr_factor", 0.5, _PLATEAU, only_with=("lr_schedule", "plateau")),
        Retired("lr_schedule", "cosine", _PLATEAU),
        Retired("aug_erase", 0.0,
                "random erasing did not pay at the long schedule (BENCHMARKS.md, 'The long study')"),
    )),
)
VERSION = STEPS[-1].number  # what today's runs log


def retired() -> dict[str, tuple[Retired, Step]]:
    return {c.name: (c, s) for s in STEPS for c in s.changes if isinstance(c, Retired)}


def refusal(name: str, value: Any) -> str:
    change, step = retired()[name]
    commit = step.trains_at[:12]
    return (f"{name}={value}: that parameter has left the package ({change.why}); it still trains at "
            f"commit {commit} (`git checkout {commit}`)")


def trains_as_today(change: Retired, value: Any, beside: Mapping[str, Any]) -> bool:
    """Whether ``value`` (as logged or given: text or a value) of a retired parameter trains as today."""
    if change.only_with is not None:
        other, mattered = change.only_with
        if _text(beside.get(other, "")) != mattered:
            return True
    if isinstance(change.today, bool):
        return _text(value).lower() == str(change.today).lower()
    if isinstance(change.today, (int, float)):
        try:
            return float(_text(value)) == float(change.today)
        except ValueError:
            return False
    return _text(value) == change.today


def _text(value: Any) -> str:
    return unquoted(value) if isinstance(value, str) else str(value)


def unquoted(value: str) -> str:
    """A parameter as the program got it: `mlflow run` records a value with spaces as the shell-quoted text it
    ran (-P hp="{width: 16}" is recorded '{width: 16}'), its '' for "not given" kept as resolve.NOT_GIVEN says."""
    import shlex

    if len(value) > 2 and value[0] == value[-1] == "'":
        try:
            parts = shlex.split(value)
        except ValueError:
            return value
        return parts[0] if len(parts) == 1 else value
    return value


def drop_retired(values: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``values`` (given on a command line or in a study file) without the retired parameters they give at
    the value that trains as today; any other value of one is refused, naming the commit that trains it."""
    out = dict(values)
    for name, (change, _) in retired().items():
        if name in out and out[name] is not None and not trains_as_today(change, out[name], values):
            raise ConfigError(f"{what}: {refusal(name, _text(out[name]))}; leave it out")
        out.pop(name, None)
    return out


def upgrade(logged: Mapping[str, str]) -> dict[str, Any]:
    """What a run logged, as today's recipe reads it: the steps after the run's ``recipe_version``, in
    order. A retired parameter logged at another value than today's training is refused, naming the
    commit that rebuilds it."""
    try:
        version = int(_text(logged.get(VERSION_PARAM, "0")) or 0)
    except ValueError:
        raise ConfigError(f"{VERSION_PARAM}={logged[VERSION_PARAM]!r}: not a recipe version") from None
    if version > VERSION:
        raise ConfigError(f"{VERSION_PARAM}={version}: logged by a later version of fmnist-exp than this one "
                          f"(recipe version {VERSION}); update fmnist-exp to read it")
    out = {k: v for k, v in logged.items() if k != VERSION_PARAM}
    for step in STEPS[version:]:
        for change in step.changes:
            if isinstance(change, Added):
                out.setdefault(change.name, change.before)
            elif change.name in out:
                value = out.pop(change.name)
                if not trains_as_today(change, value, logged):
                    raise ConfigError(f"it trained with {refusal(change.name, _text(value))}")
    return out


def digested(logged: Mapping[str, Any]) -> dict[str, Any]:
    """Today's recipe (its flat, logged form) as earlier versions digested it: without the parameters added
    since while they hold the value that trains as before, with the retired ones earlier digests held at
    the value that trains as today. The same recipe keeps its digest across versions."""
    out = dict(logged)
    added = {c.name: c.before for s in STEPS for c in s.changes if isinstance(c, Added)}
    for change, _ in retired().values():
        if change.digested and change.name not in added:
            out[change.name] = change.today
    return {k: v for k, v in out.items() if k not in added or _flat(added[k]) != v}


def _flat(v: Any) -> Any:
    return "" if v is None else v
