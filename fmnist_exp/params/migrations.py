"""Earlier runs read as today's recipe: one chain of numbered steps, as Optuna reads an older store.

Every run that trains a network logs ``recipe_version`` (:data:`VERSION`). What an earlier run logged
reaches today's parameters through :func:`upgrade` alone, whoever reads it: ``reproduce`` (of a run, a
trial or a registered version's run), a resumed study finding its reference and twin trials
(study/candidate.py); a study file stored with its study goes through :func:`drop_retired`, as a command
line does. (A registered version is served and gated by its logged model and scores, which read no recipe
parameter.) It applies each step after the run's own version in order;
a run from before versions were logged is version 0 and goes through every step. A step that adds a
parameter gives it the value earlier runs trained with only where a run did not log it, so a run logged
between two steps reads the same. A step that retires a parameter (a lever measured that did not pay,
STYLE) reads it as absent at the value that trains as today's code does and refuses any other value,
naming the commit that still trains it.

A change to what a recipe trains is a new step here: add it at the end, never edit an earlier one.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .table import FALSE_WORDS, NETWORK_FAMILIES, NOT_GIVEN, TRUE_WORDS, VERSION_PARAM

__all__ = ["VERSION", "VERSION_PARAM", "digested", "drop_retired", "refusal", "retired", "unquoted", "upgrade"]


@dataclass(frozen=True)
class Added:
    """A parameter runs before the step did not log; ``before`` trains as they did."""

    name: str
    before: Any
    families: tuple[str, ...] = NETWORK_FAMILIES  # whose runs it was added to


@dataclass(frozen=True)
class Retired:
    """A parameter that left the package. ``today``: the value that trains as today's code does.
    ``only_with``: it changed nothing unless another parameter (also logged) had this value.
    ``families``: whose parameter it was (another family's builder may have one of that name: its own).
    ``recipe_only``: a recipe setting a model its builder compiled did not use (a run that logged
    compiled_by=builder trained as today whatever it logged; a value of that name was the builder's).
    ``digested``: digests stored before it left hold it at ``today`` (FitParams.digest), so today's
    recipe digests it still."""

    name: str
    today: Any
    why: str
    only_with: tuple[str, Any] | None = None
    families: tuple[str, ...] = NETWORK_FAMILIES
    recipe_only: bool = False
    digested: bool = True

    def applies(self, family: str | None, beside: Mapping[str, Any]) -> bool:
        """Whether a value of it (given or logged beside ``beside``) is this parameter's, in ``family`` (None:
        unknown, any)."""
        if family is not None and family not in self.families:
            return False
        return not (self.recipe_only and _text(beside.get("compiled_by", "")) == "builder")


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
    Step(2, "residual blocks added (6de2e7d)", "", (Added("residual", False, families=("cnn",)),)),
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
                f"already ends on small steps ({_RECIPES})", recipe_only=True),
        Retired("residual", False, f"residual blocks did not pay on the long network ({_RECIPES}); a residual "
                "network of your own: examples/residual.py", families=("cnn",)),
        Retired("optimizer", "adam", f"SGD with Nesterov momentum did not pay: 94.70-94.92% validation against "
                f"Adam's 95.17% ({_RECIPES})", recipe_only=True),
        Retired("lr_schedule", "cosine", _PLATEAU, recipe_only=True),
        # the plateau schedule's two settings changed nothing under the cosine decay
        Retired("lr_patience", 2, _PLATEAU, only_with=("lr_schedule", "plateau"), recipe_only=True),
        Retired("lr_factor", 0.5, _PLATEAU, only_with=("lr_schedule", "plateau"), recipe_only=True),
        Retired("aug_erase", 0.0, "random erasing did not pay at the long schedule (BENCHMARKS.md, 'The long study')",
                only_with=("augment", True)),
    )),
)
VERSION = STEPS[-1].number  # what today's runs log
assert [s.number for s in STEPS] == list(range(1, VERSION + 1)), "steps are numbered 1, 2, ... with none left out"


@functools.cache  # STEPS never change: every digest and every family's values read it
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
        if not _same(beside.get(other, ""), mattered):
            return True
    return _same(value, change.today)


def _same(value: Any, today: Any) -> bool:
    """Whether ``value`` (text as logged or given, or a value) is ``today``, read as the parameter's type was."""
    text = _text(value).strip()
    if isinstance(today, bool):
        return text.lower() in (TRUE_WORDS if today else FALSE_WORDS)
    if isinstance(today, (int, float)):
        try:
            return float(text) == float(today)
        except ValueError:
            return False
    return text == today


def _text(value: Any) -> str:
    return unquoted(value) if isinstance(value, str) else str(value)


def unquoted(value: str) -> str:
    """A parameter as the program got it: `mlflow run` records a value with spaces as the shell-quoted text it
    ran (-P hp="{width: 16}" is recorded '{width: 16}'), its '' for "not given" kept as table.NOT_GIVEN says."""
    import shlex

    if len(value) > 2 and value[0] == value[-1] == "'":
        try:
            parts = shlex.split(value)
        except ValueError:
            return value
        return parts[0] if len(parts) == 1 else value
    return value


def drop_retired(values: Mapping[str, Any], what: str, family: str | None = None, *,
                 beside: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``values`` (given on a command line or in a study file, for ``family``'s network where known, among the
    values ``beside`` where more were given) without the retired parameters they give at the value that trains as
    today, or not at all ('' as MLproject forwards it); any other value of one is refused, naming the commit that
    trains it."""
    out, beside = dict(values), {**(beside or {}), **values}
    for name, (change, _) in retired().items():
        if name not in out or not change.applies(family, beside):
            continue
        value = out[name]
        given = value is not None and _text(value).strip() not in NOT_GIVEN
        if given and not trains_as_today(change, value, beside):
            if builders_own(change, family):
                continue  # another value is the builder's own parameter of that name (hp.Choice("optimizer", ...))
            raise ConfigError(f"{what}: {refusal(name, _text(value))}; leave it out")
        del out[name]
    return out


def builders_own(change: Retired, family: str | None) -> bool:
    """Whether a user's builder may have a parameter of ``change``'s name: a recipe setting that left (a
    keras-tuner builder's hp.Choice("optimizer", ...) is its own, unchanged)."""
    return family == "custom" and change.recipe_only


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
    family = _text(logged.get("family", "")) or None
    for step in STEPS[version:]:
        for change in step.changes:
            if isinstance(change, Added):
                if family is None or family in change.families:
                    out.setdefault(change.name, change.before)
            elif change.name in out and change.applies(family, logged):
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
