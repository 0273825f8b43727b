"""Follow a registry alias: read it, load the version it names beside the one serving, check it, swap.

Each followed alias has one thread that does all of it, and loads are one at a time in the
process: loading a model logged as code runs its classifier_model.py, whose ``set_model`` writes a
process-wide MLflow global, so two loads at once would race. A version is loaded from
``models:/NAME/VERSION``, never through the alias, so what is loaded is exactly what was read. The
swap is one attribute assignment; a request reads :attr:`Follower.current` once and keeps that
:class:`Served` (model and version) to the end,
so requests in flight finish on the version they started on while new ones go to the new one.
A version holds only its model (no per-version web app), so one evicted from memory is freed.

A version that fails to download, load or answer its logged input example is not swapped in: the
one serving goes on, the reason is logged and kept (``/version``), and that version is tried again
when the alias moves (elsewhere and back), on a ``POST /reload``, and at every poll while nothing is
served yet (a registry or store that was briefly unreachable must not leave a new replica unready).

A version is loaded by this process's fmnist_exp (already imported), not by the code logged with
it, which `mlflow models serve` would import in a fresh process: serve a version logged by newer
classifier code with a server of that code.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
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
RETRY_MAX_S = 300  # while nothing is served, a failed version is tried again after poll_s, doubling up to this
_LOADING = threading.Lock()  # one load at a time in the process, whichever follower (alias) asks


@dataclass(frozen=True)
class Served:
    """One loaded, checked version: its model, and its answer to a request (:meth:`invoke`)."""

    version: str
    run_id: str | None
    created_ms: int | None
    loaded_at: float
    model: Any  # mlflow.pyfunc.PyFuncModel
    example: str | None  # the serving input example logged with it: a request body

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "run_id": self.run_id, "version_created": iso(self.created_ms / 1000)
                if self.created_ms else None, "loaded_at": iso(self.loaded_at)}

    def invoke(self, body: bytes | str, content_type: str | None) -> tuple[int, str, str]:
        """What MLflow's scoring server answers for this version (status, body, media type): its own
        /invocations handler, the request guard and request formats in front, its error mapping."""
        from mlflow.pyfunc import scoring_server

        try:
            result = scoring_server.invocations(body, content_type, self.model, self.model.metadata.get_input_schema())
        except MlflowException as e:
            return e.get_http_status_code(), e.serialize_as_json(), "application/json"
        return result.status, result.response, result.mimetype


def iso(t: float) -> str:
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
        self._failed: dict[str, tuple[float, float]] = {}  # version -> (next try, delay), while the alias names it
        self._retry = False  # a POST /reload: try a failed version again
        self._loaded: OrderedDict[str, Served] = OrderedDict()
        self._kept, self._on_demand = threading.Lock(), threading.Lock()  # _loaded's; a version a request names
        self._refused: dict[str, tuple[float, str]] = {}  # a named version that failed: until when, why
        self._cache = Path(tempfile.mkdtemp(prefix="fmnist-serve-"))
        weakref.finalize(self, shutil.rmtree, self._cache, True)
        self._on_swap, self._on_failure, self._on_poll = on_swap, on_failure, on_poll
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._steps = threading.Condition()
        self._started = self._finished = 0
        self._waiting: list[tuple[int, Any]] = []
        self._thread = threading.Thread(target=self._loop, name="follow-alias", daemon=True)

    # ------------------------------------------------------------------ the thread

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self, retry: bool = False) -> int:
        """Ask for a read of the alias now (``retry``: and a failed version's load again); return the step that
        will have read it (for :meth:`when_done`). Wakes that come while a step runs merge into the next one."""
        with self._steps:
            self._retry = self._retry or retry
            self._wake.set()
            return self._started + 1  # a step already running may have read the alias before this call

    def when_done(self, step: int, callback) -> None:
        """Call ``callback()`` (from the follower's thread) once ``step`` has finished: read the alias and
        loaded what it names, or failed. No thread waits meanwhile."""
        with self._steps:
            if self._finished < step:
                self._waiting.append((step, callback))
                return
        callback()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._steps:
                self._wake.clear()
                self._started += 1
                step = self._started
            try:
                self.step()
            except Exception:  # never let the thread die: the server would serve a stale version forever
                _logger.exception("following %s@%s failed unexpectedly; trying again in %g s", self.name, self.alias,
                                  self.poll_s)
            with self._steps:
                self._finished = step
                done = [callback for wanted, callback in self._waiting if wanted <= step]
                self._waiting = [(wanted, callback) for wanted, callback in self._waiting if wanted > step]
            for callback in done:
                try:
                    callback()
                except Exception:  # e.g. the event loop of a /reload that has closed: nobody waits any more
                    _logger.debug("a step's waiter could not be told", exc_info=True)
            if self._on_poll:  # after the waiters: a /reload does not wait on it
                try:
                    self._on_poll()
                except Exception as e:
                    _logger.warning("after a read of %s@%s: %s: %s", self.name, self.alias, type(e).__name__,
                                    first_line(e))
            self._wake.wait(self.poll_s)

    def close(self) -> None:
        """Stop following and remove the downloads (at the server's shutdown)."""
        self.stop()
        shutil.rmtree(self._cache, ignore_errors=True)

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
        with self._steps:
            retry, self._retry = self._retry, False
        if self.current is not None and self.current.version == version:
            self._failed.clear()
            self.last_error = None
            return
        failed = self._failed.get(version)
        # a version that failed at this move is tried again when the alias moves, on a /reload, and, while this
        # replica serves nothing yet (a store briefly out of reach must not leave it unready), after a backoff
        again = self.role == "serving" and self.current is None and failed is not None and time.time() >= failed[0]
        if failed is not None and not (retry or again):
            return
        self._failed = {}
        try:
            with self._kept:
                kept = self._loaded.get(version)
            served = kept or self.load(mv)
            check(served)
        except NotServable as e:
            reason = str(e)
            delay = min(RETRY_MAX_S, 2 * failed[1]) if failed else self.poll_s
            self._failed[version] = (time.time() + delay, delay)
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
        with self._kept:
            self._loaded[served.version] = served
            self._loaded.move_to_end(served.version)
            while len(self._loaded) > KEEP_LOADED:  # the oldest first, never the version serving
                serving = self.current.version if self.current else None
                oldest = next(v for v in self._loaded if v != serving)
                del self._loaded[oldest]  # requests still holding it finish; memory goes with the last

    def loaded(self, version: str) -> Served | None:
        """Version ``version`` where this replica holds it: the one serving or one kept loaded; else None."""
        current = self.current
        if current is not None and current.version == version:
            return current
        with self._kept:
            return self._loaded.get(version)

    def version(self, version: str) -> Served:
        """Version ``version`` of the followed model, as a request that names it gets it (the Open Inference
        Protocol's /versions/N): where loaded, at once; else downloaded, loaded and checked now and kept within
        KEEP_LOADED (never evicting the version serving). NotServable if it cannot be loaded (said again without
        a new try for a while); MlflowException if the registry has no such version."""
        served = self.loaded(version)
        if served is not None:
            return served
        refused = self._refused.get(version)
        if refused is not None and time.time() < refused[0]:
            raise NotServable(refused[1])
        with self._on_demand:  # one load at a time; the requests wanting the same version then take it
            served = self.loaded(version)
            if served is None:
                try:
                    served = self.load(MlflowClient().get_model_version(self.name, version))
                    check(served)
                except NotServable as e:
                    self._refused[version] = (time.time() + max(self.poll_s, 30.0), str(e))
                    raise
                self._keep(served)
            return served

    def load(self, mv) -> Served:
        """Download version ``mv`` into this server's cache and load it; NotServable saying why it cannot."""
        uri = f"models:/{self.name}/{mv.version}"
        path = self._cache / f"v{mv.version}-{time.monotonic_ns()}"
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(path))
            with _LOADING:  # a model logged as code sets an MLflow global while it loads
                before = list(sys.path)
                try:
                    model = mlflow.pyfunc.load_model(local, model_config=self.model_config or None)
                finally:  # its code/ folder, which this process never imports from (fmnist_exp is loaded)
                    sys.path[:] = before
            example = model.metadata.get_serving_input(local)
        except Exception as e:  # a missing artifact, a model of another flavour, an import its code needs
            shutil.rmtree(path, ignore_errors=True)
            raise NotServable(f"could not load {uri}: {type(e).__name__}: {first_line(e)}") from e
        served = Served(str(mv.version), mv.run_id, mv.creation_timestamp, time.time(), model, example)
        weakref.finalize(served, shutil.rmtree, path, True)  # once no request holds it any more
        return served


def check(served: Served) -> None:
    """Answer the input example logged with the version, through the same handler requests go through
    (so its first prediction, which traces the network, is not a client's); NotServable unless it answers
    200 with one row per example image and probabilities that sum to 1."""
    body = served.example
    if body is None:
        raise NotServable("it has no logged input example to check it on (log it with input_example=...)")
    try:
        status, answer, _ = served.invoke(body, "application/json")
        sent = json.loads(body).get("inputs")
        rows = json.loads(answer).get("predictions") if status == 200 else None
    except Exception as e:
        raise NotServable(f"its input example failed: {type(e).__name__}: {first_line(e)}") from e
    if status != 200:
        raise NotServable(f"its input example got HTTP {status}: {answer[:300]}")
    if not isinstance(rows, list) or not rows or (isinstance(sent, list) and len(rows) != len(sent)):
        raise NotServable(f"its input example got {answer[:300]}, not one prediction per image")
    for row in rows:
        probs = row.get("probabilities") if isinstance(row, dict) else None
        if probs is not None and abs(sum(probs) - 1) > 1e-3:
            raise NotServable(f"its input example got probabilities summing to {sum(probs):g}, not 1")


def first_line(e: BaseException) -> str:
    text = str(getattr(e, "message", None) or e).strip()
    return (text.splitlines() or [""])[0][:500]


def _why_unread(name: str, alias: str, e: MlflowException) -> str:
    code = getattr(e, "error_code", "")
    if code == "RESOURCE_DOES_NOT_EXIST":
        return f"no registered model {name!r} yet"
    if code == "INVALID_PARAMETER_VALUE":
        return f"{name!r} has no alias {alias!r} yet"
    return f"the registry did not answer: {first_line(e)}"
