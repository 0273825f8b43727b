"""Move an alias (champion) to an existing version by hand: a rollback, or forward again.

    python -m fmnist_exp promote --version 3 --reason "v5 mislabels sandals"
    mlflow run . -e promote -P version=3 -P reason="v5 mislabels sandals"

Everything is checked before anything changes: the version and a reason are given, the alias is one
MLflow lets us set, the model and the version exist (a wrong number is answered with the versions
that do), the version is READY, and it was trained on images of the same shape and the same dataset
as the version that holds the alias now (a served alias that moved to another dataset's model would
refuse every client's images). With no holder yet, nothing is served that could break: it is not
compared. Then the alias moves and the move is written on both versions: ``promoted_*`` tags and
``alias_decision`` on the new holder, ``replaced_*`` on the old one, and on each a ``promotions``
JSON list of every hand move to or from it (tags overwrite; the list keeps them all). Under
`mlflow run` the run that MLflow made records the move too and is ended here, whatever happens.
Running `serve` processes follow the alias within one poll.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone

import mlflow
from mlflow.entities import RunTag
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ..params import ConfigError, PromoteArgs, ServeArgs, command
from ..scale.health import check_tracking_server, shown_uri
from .names import with_registered_model

HISTORY_TAG = "promotions"  # JSON list of the hand moves to and from a version, oldest first
DECISION_TAG = "alias_decision"  # the gate's sentence (gate.py); a hand move writes its own
MAX_REASON = 1000  # a sentence or two; the detail belongs in the version's description
MAX_TAG_VALUE = 100_000  # MLflow's limit on a registry tag's value: the history drops its oldest moves to fit
UNKNOWN = (None, "", "unknown")  # a data tag a version lacks, or one its run could not know


@dataclass(frozen=True)
class Data:
    """What a version was trained on, as far as its tags (else its signature) say."""

    shape: str | None  # "28x28x1"
    name: str | None
    sha256: str | None

    def describe(self) -> str:
        return f"{self.name or 'unknown data'} ({self.shape or 'unknown shape'} images)"


def main(args: PromoteArgs) -> int:
    """Check, move the alias, record the move; 0 when done or already there. Refusals raise ConfigError."""
    run_id = os.environ.get("MLFLOW_RUN_ID")  # `mlflow run` made a run before this code started
    client = MlflowClient()
    try:
        line, tags = _promote(client, args, run_id)
    except BaseException as e:  # a refusal, a registry error or Ctrl-C: the run must not stay RUNNING
        asked = {"promote_model": args.model_name, "promote_alias": args.alias, "promote_to": str(args.version),
                 "promote_reason": str(args.reason)}
        outcome = f"refused: {e}" if isinstance(e, ConfigError) else f"failed: {type(e).__name__}: {e}"
        _end_run(client, run_id, {**asked, "promote_outcome": outcome}, "FAILED")
        raise
    _end_run(client, run_id, {**tags, "mlflow.note.content": line}, "FINISHED")
    print(line, flush=True)
    return 0


def _promote(client: MlflowClient, args: PromoteArgs, run_id: str | None) -> tuple[str, dict[str, str]]:
    """Do it; return the line to print and the tags for the run."""
    _check_given(client, args)
    args = with_registered_model(args, "promote")  # the model meant where none is named
    name, alias = args.model_name, args.alias
    check_tracking_server()  # an http registry that does not answer: said in seconds, not after minutes of retries
    assert args.version is not None and args.reason is not None  # _check_given refused otherwise
    model = _registered_model(client, name)
    versions = _versions(client, name)
    wanted = str(args.version)
    if wanted not in versions:
        raise ConfigError(f"{name} has no version {wanted}: {_listing(versions)} exist "
                          f"({_holder_text(model.aliases, alias)}); pass one of them as version")
    target = client.get_model_version(name, wanted)
    _check_ready(target, versions)
    holder = _holder(model.aliases, alias)
    run = {"promote_model": name, "promote_alias": alias, "promote_from": holder or "none", "promote_to": wanted,
           "promote_reason": args.reason, "registered_model": f"{name}/{wanted}",
           "mlflow.runName": f"promote {name}@{alias} v{wanted}"}
    if holder == wanted:
        return (f"{name}@{alias} is already v{wanted}: nothing moved, nothing recorded",
                {**run, "promote_outcome": "unchanged: already there"})
    old = client.get_model_version(name, holder) if holder else None
    _check_same_data(name, alias, target, old)

    at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    by = f"promote command, user {_user()}"
    move = {"at": at, "alias": alias, "from": holder, "to": wanted, "reason": args.reason, "by": by,
            "run_id": run_id}
    was = f"v{holder}" if holder else "none"
    now = _holder(client.get_registered_model(name).aliases, alias)  # MLflow has no compare-and-set: read again
    if now != holder:
        raise ConfigError(f"{name}@{alias} moved from {was} to v{now} while this was checked (a study's "
                          "promotion gate?): nothing changed; run promote again if it should still move")
    client.set_registered_model_alias(name, alias, wanted)
    try:  # the alias has moved (what serves follows it): then the record
        _record(client, name, target, {
            "promoted_alias": alias, "promoted_at": at, "promoted_reason": args.reason, "promoted_from": was,
            "promoted_by": by, DECISION_TAG: f"{alias} by hand: {args.reason} ({was} -> v{wanted}, {at})"}, move)
        if old is not None:
            _record(client, name, old, {
                "replaced_alias": alias, "replaced_at": at, "replaced_by": f"v{wanted}", "replaced_reason": args.reason,
                DECISION_TAG: f"{alias} moved to v{wanted} by hand at {at}: {args.reason}"}, move)
    except MlflowException as e:
        print(f"error: {name}@{alias} has moved {was} -> v{wanted}, but recording the move on the versions failed "
              f"({e.message}); the alias stays moved", file=sys.stderr, flush=True)
        raise
    where = shown_uri(mlflow.get_tracking_uri())
    serve = command("serve")  # serve's defaults, from the one table
    assert isinstance(serve, ServeArgs)
    line = (f"{name}@{alias}: {was} -> v{wanted} ({args.reason}), recorded on the version{'s' if old else ''} in "
            f"{where}; running `serve` processes of {name}@{alias} switch within one poll (their poll_s, default "
            f"{serve.poll_s:g} s)")
    return line, {**run, "promote_outcome": "moved"}


def _check_given(client: MlflowClient, args: PromoteArgs) -> None:
    """What can be wrong before the registry is asked: the version, the reason, the alias."""
    problems = []
    if args.version is None:
        problems.append("version is required: the version to move the alias to (--version N; mlflow run: "
                        "-P version=N)")
    if args.reason is None:
        problems.append("reason is required: why, in words, recorded on the version (--reason \"...\"; "
                        "mlflow run: -P reason=\"...\")")
    elif len(args.reason) > MAX_REASON:
        problems.append(f"reason has {len(args.reason)} characters: say it in at most {MAX_REASON} and put the "
                        "detail in the version's description")
    alias = args.alias
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        problems.append(f"alias={alias!r} is reserved by MLflow (latest and v<N> name versions themselves): "
                        "give another, e.g. champion")
    elif not re.fullmatch(r"[\w-]{1,255}", alias):
        problems.append(f"alias={alias!r}: MLflow takes 1-255 letters, digits, _ and -, e.g. champion")
    if not problems:
        return
    if args.version is None:  # the versions to choose from, when the registry can say
        try:
            check_tracking_server()
            name = args.model_name.strip() or with_registered_model(args, "promote").model_name
            versions = _versions(client, name)
            aliases = client.get_registered_model(name).aliases
            problems.append(f"{name}: {_listing(versions)} exist ({_holder_text(aliases, alias)})")
        except (MlflowException, ConfigError):
            pass
    raise ConfigError("promote refused, nothing changed:\n  " + "\n  ".join(problems))


def _registered_model(client: MlflowClient, name: str) -> RegisteredModel:
    try:
        return client.get_registered_model(name)
    except MlflowException as e:
        if e.error_code == "INVALID_PARAMETER_VALUE":
            raise ConfigError(f"model_name={name!r}: {e.message}") from None
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    names = sorted(m.name for m in client.search_registered_models(max_results=50))
    there = f"registered models there: {', '.join(names)}" if names else "it holds no registered model"
    raise ConfigError(f"no registered model named {name!r} in {shown_uri(mlflow.get_tracking_uri())} ({there}); "
                      "pass model_name, or point MLFLOW_TRACKING_URI at the registry that holds it") from None


def _versions(client: MlflowClient, name: str) -> dict[str, ModelVersion]:
    """Every version of ``name`` by number (as text), in number order."""
    quoted = name.replace("'", "\\'")
    found, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{quoted}'", page_token=token)
        found += list(page)
        token = page.token
        if not token:
            break
    return {str(mv.version): mv for mv in sorted(found, key=lambda mv: int(mv.version))}  # int or text by store


def _listing(versions: dict[str, ModelVersion]) -> str:
    """'versions 1-4, 6', the runs of consecutive numbers joined (deleted versions leave gaps)."""
    if not versions:
        return "no versions"
    runs: list[list[int]] = []
    for v in map(int, versions):
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    text = ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)
    return f"version{'s' if len(versions) > 1 else ''} {text}"


def _holder(aliases: dict, alias: str) -> str | None:
    version = aliases.get(alias)
    return None if version is None else str(version)


def _holder_text(aliases: dict, alias: str) -> str:
    holder = _holder(aliases, alias)
    return f"@{alias} is v{holder}" if holder else f"no version is @{alias}"


def _check_ready(mv: ModelVersion, versions: dict[str, ModelVersion]) -> None:
    if mv.status == "READY":
        return
    ready = {v: m for v, m in versions.items() if m.status == "READY"}
    why = f": {mv.status_message}" if mv.status_message else ""
    what = ("its registration failed; register the model again" if mv.status == "FAILED_REGISTRATION"
            else "wait until its registration finishes")
    raise ConfigError(f"{mv.name} v{mv.version} is {mv.status}{why}, not READY: nothing could load it. "
                      f"{what.capitalize()}, or pass a READY version ({_listing(ready)})")


def _check_same_data(name: str, alias: str, target: ModelVersion, old: ModelVersion | None) -> None:
    """Refuse a version trained on another image shape or another dataset than the alias's holder: its
    clients' images would be refused, and one registered name holds one dataset (study/setup.py
    check_champion_data). Unknown on either side: not compared."""
    if old is None:
        return  # nothing served under the alias that could break
    mine, theirs = _data(name, target), _data(name, old)
    advice = (f"pass a version trained on the same data as v{old.version}; a model of other data belongs under "
              "its own registered name")
    if mine.shape and theirs.shape and mine.shape != theirs.shape:
        raise ConfigError(f"{name} v{target.version} was trained on {mine.describe()}, but @{alias} v{old.version} "
                          f"on {theirs.describe()}: the clients of {name}@{alias} send {theirs.shape} images, which "
                          f"v{target.version} would refuse; {advice}")
    if mine.sha256 and theirs.sha256 and mine.sha256 != theirs.sha256:
        raise ConfigError(f"{name} v{target.version} was trained on {mine.describe()} (sha256 {mine.sha256[:12]}...), "
                          f"but @{alias} v{old.version} on {theirs.describe()} (sha256 {theirs.sha256[:12]}...): "
                          f"another dataset, whose classes may differ; {advice}")


def _data(name: str, mv: ModelVersion) -> Data:
    tags = mv.tags or {}
    known = {k: (None if tags.get(k) in UNKNOWN else tags[k]) for k in ("data_shape", "data_name", "data_sha256")}
    return Data(known["data_shape"] or _signature_shape(name, mv.version), known["data_name"], known["data_sha256"])


def _signature_shape(name: str, version: str) -> str | None:
    """'HxWxC' from the signature of the version's MLmodel (only that file is read): (-1, H, W) for
    grayscale, (-1, H, W, C) for colour (classifier/pyfunc.py input_schema). None: no such signature."""
    from mlflow.models import Model

    try:
        signature = Model.load(f"models:/{name}/{version}").signature
    except (MlflowException, OSError, ValueError):  # no MLmodel, or not one we can read: shape unknown
        return None
    inputs = signature.inputs if signature is not None else None
    if inputs is None or not inputs.is_tensor_spec() or len(inputs.inputs) != 1:
        return None
    shape = tuple(inputs.inputs[0].shape)[1:]
    if len(shape) == 2:
        shape = (*shape, 1)
    return "x".join(map(str, shape)) if len(shape) == 3 and all(d > 0 for d in shape) else None


def _record(client: MlflowClient, name: str, mv: ModelVersion, tags: dict[str, str], move: dict) -> None:
    """The move's tags on ``mv`` and the move appended to its history."""
    history = _history((mv.tags or {}).get(HISTORY_TAG))
    history.append(move)
    text = json.dumps(history)
    while len(text) > MAX_TAG_VALUE and len(history) > 1:
        history.pop(0)
        text = json.dumps(history)
    for key, value in {**tags, HISTORY_TAG: text}.items():
        client.set_model_version_tag(name, mv.version, key, value)


def _history(text: str | None) -> list:
    if not text:
        return []
    try:
        history = json.loads(text)
    except ValueError:
        history = None
    return history if isinstance(history, list) else [{"unreadable_history": text}]


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in this container
        return "unknown"


def _end_run(client: MlflowClient, run_id: str | None, tags: dict[str, str], status: str) -> None:
    """Under `mlflow run`: the run records what was done and ends (mlflow run leaves a run we ended as it is)."""
    if not run_id:
        return
    try:
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    except MlflowException as e:
        print(f"warning: the run {run_id} could not record the promotion ({e.message})", file=sys.stderr)
    try:
        client.set_terminated(run_id, status)
    except MlflowException as e:
        print(f"warning: the run {run_id} could not be ended {status} ({e.message})", file=sys.stderr)
