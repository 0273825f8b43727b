"""Follow a registry alias: read it, load the version it names beside the one serving, check it, swap.

One thread does all of it, one version at a time: loading a model logged as code runs its
classifier_model.py, whose ``set_model`` writes a process-wide MLflow global, so two loads at
once would race. A version is loaded from ``models:/NAME/VERSION``, never through the alias, so
what is loaded is exactly what was read. The swap is one attribute assignment; a request reads
:attr:`Follower.current` once and keeps that :class:`Served` (model, app and version) to the end,
so requests in flight finish on the version they started on while new ones go to the new one.

A version that fails to download, load or answer its logged input example is not swapped in: the
one serving goes on, the reason is logged and kept (``/version``), and that version is tried again
only when the alias has moved elsewhere and back (a re-registered or repaired version needs a move).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

_logger = logging.getLogger(__name__)
KEEP_LOADED = 3  # versions kept in memory (the one serving and the last ones), so a rollback swaps at once
_LOADING = threading.Lock()  # one load at a time in the process, whichever follower (alias) asks


@dataclass(frozen=True)
class Served:
    """One loaded, checked version and the MLflow scoring app that answers with it."""

    version: str
    run_id: str | None
    created_ms: int | None
    loaded_at: float
    model: Any  # mlflow.pyfunc.PyFuncModel
    example: str | None  # the serving input example logged with it: a request body
    app: Any  # MLflow's scoring server app (FastAPI) for this model: the same /invocations as `mlflow models serve`

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "run_id": self.run_id, "version_created": _iso(self.created_ms / 1000)
                if self.created_ms else None, "loaded_at": _iso(self.loaded_at)}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class NotServable(Exception):
    """A version that cannot be swapped in, with the reason in words."""


class Follower:
    """Keeps :attr:`current` on the version ``name@alias`` names, read every ``poll_s`` and on :meth:`wake`."""

    def __init__(self, name: str, alias: str, poll_s: float, model_config: dict | None = None,
                 on_swap=None, on_failure=None, on_poll=None, role: str = "serving"):
        self.name, self.alias, self.poll_s, self.role = name, alias, poll_s, role
        self.model_config = model_config or {}
        self.current: Served | None = None
        self.alias_version: str | None = None  # what the alias named at the last read
        self.last_poll: float | None = None
        self.last_error: dict[str, str] | None = None  # {"version", "reason"} of the last failed read or load
        self._failed: dict[str, str] = {}  # version -> reason, while the alias names it
        self._loaded: OrderedDict[str, Served] = OrderedDict()
        self._cache = Path(tempfile.mkdtemp(prefix="fmnist-serve-"))
        weakref.finalize(self, shutil.rmtree, self._cache, True)
        self._on_swap, self._on_failure, self._on_poll = on_swap, on_failure, on_poll
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._steps = threading.Condition()
        self._started = self._finished = 0
        self._thread = threading.Thread(target=self._loop, name="follow-alias", daemon=True)

    # ------------------------------------------------------------------ the thread

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> int:
        """Ask for a read of the alias now; return the step that will have read it (for :meth:`wait`)."""
        with self._steps:
            self._wake.set()
            return self._started + 1  # a step already running may have read the alias before this call

    def wait(self, step: int, timeout: float) -> bool:
        """Wait until ``step`` has finished (read the alias and loaded what it names, or failed)."""
        with self._steps:
            return self._steps.wait_for(lambda: self._finished >= step, timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._steps:
                self._wake.clear()
                self._started += 1
                step = self._started
            try:
                self.step()
                if self._on_poll:
                    self._on_poll()
            except Exception:  # never let the thread die: the server would serve a stale version forever
                _logger.exception("following %s@%s failed unexpectedly; trying again in %g s", self.name, self.alias,
                                  self.poll_s)
            with self._steps:
                self._finished = step
                self._steps.notify_all()
            self._wake.wait(self.poll_s)

    # ------------------------------------------------------------------ one read

    def step(self) -> None:
        """Read the alias once; load, check and swap in the version it names if that is new."""
        client = MlflowClient()
        self.last_poll = time.time()
        try:
            mv = client.get_model_version_by_alias(self.name, self.alias)
        except MlflowException as e:
            # no such model or alias yet (served: nothing, or the version serving), or the registry is down
            self.last_error = {"version": "", "reason": _why_unread(self.name, self.alias, e)}
            return
        version = str(mv.version)
        self.alias_version = version
        if self.current is not None and self.current.version == version:
            self._failed.clear()
            return
        if version in self._failed:
            return  # failed at this move already; tried again when the alias moves elsewhere and back
        self._failed.clear()
        try:
            served = self._loaded.get(version) or self.load(mv)
            check(served)
        except NotServable as e:
            reason = str(e)
            self._failed[version] = reason
            self.last_error = {"version": version, "reason": reason}
            _logger.error("%s@%s moved to version %s, which is NOT %s: %s. Still %s version %s.", self.name,
                          self.alias, version, self.role.replace("ing", "ed"), reason, self.role,
                          self.current.version if self.current else "none")
            if self._on_failure:
                self._on_failure(version)
            return
        previous, self.current = self.current, served  # the swap: one assignment
        self.last_error = None
        self._keep(served)
        _logger.info("%s@%s: %s version %s (run %s)%s", self.name, self.alias, self.role, version, served.run_id,
                     f", was version {previous.version}" if previous else "")
        if self._on_swap:
            self._on_swap(previous, served)

    def _keep(self, served: Served) -> None:
        self._loaded[served.version] = served
        self._loaded.move_to_end(served.version)
        while len(self._loaded) > KEEP_LOADED:
            self._loaded.popitem(last=False)  # requests still holding it finish; memory goes with the last

    def load(self, mv) -> Served:
        """Download version ``mv`` into this server's cache and load it with MLflow's scoring app."""
        from mlflow.pyfunc import scoring_server

        uri = f"models:/{self.name}/{mv.version}"
        path = self._cache / f"v{mv.version}-{time.monotonic_ns()}"
        try:
            with _LOADING:  # a model logged as code sets an MLflow global while it loads
                local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(path))
                model = mlflow.pyfunc.load_model(local, model_config=self.model_config or None)
        except Exception as e:  # a missing artifact, a model of another flavour, an import its code needs
            shutil.rmtree(path, ignore_errors=True)
            raise NotServable(f"could not load {uri}: {type(e).__name__}: {_first_line(e)}") from e
        served = Served(str(mv.version), mv.run_id, mv.creation_timestamp, time.time(), model,
                        model.metadata.get_serving_input(local), scoring_server.init(model))
        weakref.finalize(served, shutil.rmtree, path, True)  # once no request holds it any more
        return served


def check(served: Served) -> None:
    """Answer the input example logged with the version, through the same handler requests go through
    (so its first prediction, which traces the network, is not a client's); NotServable unless it answers
    200 with one row per example image and probabilities that sum to 1."""
    from mlflow.pyfunc import scoring_server

    body = served.example
    if body is None:
        raise NotServable("it has no logged input example to check it on (log it with input_example=...)")
    try:
        answer = scoring_server.invocations(body, "application/json", served.model,
                                            served.model.metadata.get_input_schema())
    except MlflowException as e:
        raise NotServable(f"its input example was refused: {_first_line(e)}") from e
    except Exception as e:
        raise NotServable(f"its input example failed: {type(e).__name__}: {_first_line(e)}") from e
    if answer.status != 200:
        raise NotServable(f"its input example got HTTP {answer.status}: {answer.response[:300]}")
    rows = json.loads(answer.response).get("predictions")
    want = len(json.loads(body)["inputs"]) if isinstance(json.loads(body).get("inputs"), list) else None
    if not isinstance(rows, list) or not rows or (want is not None and len(rows) != want):
        raise NotServable(f"its input example got {answer.response[:300]}, not one prediction per image")
    for row in rows:
        probs = row.get("probabilities") if isinstance(row, dict) else None
        if probs is not None and abs(sum(probs) - 1) > 1e-3:
            raise NotServable(f"its input example got probabilities summing to {sum(probs):g}, not 1")


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "message", None) or e).strip()
    return (text.splitlines() or [""])[0][:500]


def _why_unread(name: str, alias: str, e: MlflowException) -> str:
    code = getattr(e, "error_code", "")
    if code == "RESOURCE_DOES_NOT_EXIST":
        return f"no registered model {name!r} yet"
    if code == "INVALID_PARAMETER_VALUE":
        return f"{name!r} has no alias {alias!r} yet"
    return f"the registry did not answer: {_first_line(e)}"
