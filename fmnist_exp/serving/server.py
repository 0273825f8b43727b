"""`serve`: a registered model's alias over HTTP, as `mlflow models serve` serves one version, following
the alias as the registry moves it.

    python -m fmnist_exp serve --model_name fmnist-classifier --alias champion --port 5001

``/invocations`` is what MLflow's scoring server does with a request (its ``invocations`` handler,
called as its route calls it, its error mapping and request timeout): the same request formats,
answers and errors, with the project's request guard in front (classifier.request_body) and MLflow's
other JSON formats and CSV (classifier.request_formats). Every /invocations answer carries
``X-Model-Version``: the version whose model computed it, read once when the request arrives.
Beside it:

- ``GET /ping`` (and ``/health``): 200 once a version is loaded, 503 before (readiness);
- ``GET /live``: 200 whenever the process answers (liveness: before any champion exists too);
- ``GET /version``: the version serving, its run, when it was loaded, what the alias names and
  the last failure;
- ``GET /metrics``: Prometheus text: requests by version and status, latency by version, swaps;
- ``POST /reload``: read the alias now (the version is never taken from the request); answers
  once the read, and a load it led to, are done, with ``/version``'s JSON;
- ``POST /webhook``: an MLflow registry webhook (``model_version_alias.created``); wakes the
  follower, checked with ``FMNIST_WEBHOOK_SECRET`` when set;
- ``/v2/...``: the Open Inference Protocol (KServe v2: health, metadata, infer; serving.oip, serving.v2).

With ``--shadow_fraction`` above 0, that share of the answered requests also goes to the version
the shadow alias (@challenger) names, after the answer has gone: how often the two agree, per
version pair, in /metrics and on the challenger's version (serving.shadow).

Following itself (read, load beside, check, swap) is serving.follow. One process, one event
loop: the model work runs in threads, as in MLflow's server.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from ..params import ConfigError, ServeArgs
from ..registry.names import with_registered_model
from .asgi import Send, respond
from .drain import DrainingServer
from .follow import Follower, Served, iso
from .shadow import Shadow
from .v2 import Routes

_logger = logging.getLogger(__name__)
SECRET_ENV = "FMNIST_WEBHOOK_SECRET"  # an environment variable, never a parameter: `mlflow run` logs parameters
RELOAD_WAIT_S = 300.0  # a /reload answers when the read and any load are done, or after this
SIGNATURE_TOLERANCE_S = 300  # a webhook delivery older than this is refused (a replayed one)
LATENCY_BUCKETS = (.0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)

class Metrics:
    """The server's Prometheus metrics, in a registry of their own (no process-global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # resident memory and CPU, for the Deployment's requests
        self.requests = Counter("fmnist_serve_requests", "/invocations answers by version and HTTP status",
                                ["version", "code"], registry=self.registry)
        self.latency = Histogram("fmnist_serve_request_seconds", "/invocations time from request to answer",
                                 ["version"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.v2_requests = Counter("fmnist_serve_v2_requests", "Open Inference Protocol answers (/v2/...) by route, "
                                   "version and HTTP status", ["route", "version", "code"], registry=self.registry)
        self.swaps = Counter("fmnist_serve_swaps", "versions swapped in", registry=self.registry)
        self.swap_failures = Counter("fmnist_serve_swap_failures", "loads of a version that failed (to download, load "
                                     "or answer its input example), by version", ["version"], registry=self.registry)
        self.version = Gauge("fmnist_serve_version", "the version answering (0: none yet)", registry=self.registry)
        self.shadow_images = Counter("fmnist_serve_shadow_images", "images of sampled requests that the shadow "
                                     "version answered too, by whether its label agreed", ["version", "shadow_version",
                                                                                           "agree"],
                                     registry=self.registry)
        self.shadow_errors = Counter("fmnist_serve_shadow_errors", "sampled requests the shadow version failed",
                                     ["shadow_version"], registry=self.registry)

    def swapped(self, _previous: Served | None, served: Served) -> None:
        self.swaps.inc()
        self.version.set(float(served.version))

    def answered_v2(self, route: str, version: str, code: int) -> None:
        self.v2_requests.labels(route=route, version=version, code=str(code)).inc()

    def answered(self, version: str, code: int, seconds: float) -> None:
        self.requests.labels(version=version, code=str(code)).inc()
        self.latency.labels(version=version).observe(seconds)


def verify_signature(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """MLflow's webhook signature: v1,base64(HMAC-SHA256(secret, "<delivery id>.<timestamp>.<body>"))."""
    sig, ts = headers.get("x-mlflow-signature", ""), headers.get("x-mlflow-timestamp", "")
    delivery = headers.get("x-mlflow-delivery-id", "")
    if not (sig.startswith("v1,") and sig.isascii() and ts.isascii() and ts.isdigit() and len(ts) <= 12 and delivery):
        return False
    if abs(time.time() - int(ts)) > SIGNATURE_TOLERANCE_S:
        return False
    mac = hmac.new(secret.encode(), f"{delivery}.{ts}.".encode() + body, hashlib.sha256).digest()
    return hmac.compare_digest(sig[3:].encode(), base64.b64encode(mac))


class App:
    """The ASGI application: routes the paths above; /invocations is answered by the version serving."""

    def __init__(self, follower: Follower, metrics: Metrics, secret: str | None = None, shadow: Shadow | None = None):
        self.follower, self.metrics, self.secret, self.shadow = follower, metrics, secret, shadow
        self.timeout = MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get()  # MLflow's server answers 504 past it
        self.v2 = Routes(follower, metrics.answered_v2, self.timeout)  # the Open Inference Protocol (serving.oip)
        self.draining = False  # set on SIGTERM (DrainingServer): not ready, every answer closes its connection
        self.v2.draining = lambda: self.draining

    async def __call__(self, scope: dict, receive: Callable, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            return
        send = self._closing_when_draining(send)
        path, method = scope["path"], scope["method"]
        routes = {"/invocations": ("POST", self.invocations), "/ping": ("GET", self.ping),
                  "/health": ("GET", self.ping), "/live": ("GET", self.live), "/version": ("GET", self.version),
                  "/metrics": ("GET", self.metrics_text), "/reload": ("POST", self.reload),
                  "/webhook": ("POST", self.webhook)}
        if path == "/v2" or path.startswith("/v2/"):
            return await self.v2(scope, receive, send)
        if path not in routes:
            return await respond(send, 404, {"message": f"no such path {path}; see /version for what is served"})
        want, handler = routes[path]
        if method != want and not (want == "GET" and method == "HEAD"):
            return await respond(send, 405, {"message": f"{path} takes {want}"}, [(b"allow", want.encode())])
        await handler(scope, receive, send)

    async def invocations(self, scope: dict, receive: Callable, send: Send) -> None:
        served = self.follower.current  # read once: this request is answered by this version to the end
        start = time.perf_counter()
        if served is None:
            await _drain(receive)
            await respond(send, 503, {"error_code": "TEMPORARILY_UNAVAILABLE",
                                      "message": f"no version of {self._what()} is loaded yet: "
                                      f"{self._why_none()}"}, [(b"retry-after", b"5")])
            self.metrics.answered("none", 503, time.perf_counter() - start)
            return
        body = await _drain(receive)
        content_type = dict(scope.get("headers", [])).get(b"content-type")
        content_type = content_type.decode("latin-1") if content_type is not None else None
        other = self.shadow.take(served) if self.shadow else None
        code, compared = 500, False
        try:
            try:
                code, answer, media = await asyncio.wait_for(asyncio.to_thread(served.invoke, body, content_type),
                                                             self.timeout)
            except (asyncio.TimeoutError, TimeoutError):
                code, answer, media = 504, "Request processing time exceeded limit", "application/json"
            except Exception:  # as MLflow's server (FastAPI) answers an exception its handler lets through
                _logger.exception("version %s failed on a request", served.version)
                code, answer, media = 500, "Internal Server Error", "text/plain"
            await respond(send, code, answer.encode(), content_type=media, version=served.version)
            if other is not None and self.shadow is not None and code == 200:
                self.shadow.compare(served, other, body, content_type, answer)
                compared = True
        finally:
            self.metrics.answered(served.version, code, time.perf_counter() - start)
            if other is not None and self.shadow is not None and not compared:
                self.shadow.release()

    def _closing_when_draining(self, send: Send) -> Send:
        """``send`` with ``Connection: close`` on the answer once the server drains (SIGTERM): the client opens
        its next connection elsewhere instead of writing a request to one that is about to close."""
        async def sending(message: dict) -> None:
            if self.draining and message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)
        return sending

    async def ping(self, scope, receive, send) -> None:
        served = self.follower.current
        if self.draining:
            await respond(send, 503, {"status": "not ready", "reason": "shutting down (SIGTERM): draining"})
        elif served is None:
            await respond(send, 503, {"status": "not ready", "reason": self._why_none()})
        else:
            await respond(send, 200, {"status": "ready", "version": served.version}, version=served.version)

    async def live(self, scope, receive, send) -> None:
        await respond(send, 200, {"status": "alive"})

    async def version(self, scope, receive, send) -> None:
        await respond(send, 200, self.describe(), version=self._serving())

    async def metrics_text(self, scope, receive, send) -> None:
        await respond(send, 200, generate_latest(self.metrics.registry), content_type=CONTENT_TYPE_LATEST)

    async def reload(self, scope, receive, send) -> None:
        await _drain(receive)  # the body, if any, is not read: the version comes from the registry only
        loop, finished = asyncio.get_running_loop(), asyncio.Event()
        self.follower.when_done(self.follower.wake(retry=True), lambda: loop.call_soon_threadsafe(finished.set))
        try:  # no thread waits: the follower's thread sets the event when the step is done
            await asyncio.wait_for(finished.wait(), RELOAD_WAIT_S)
            done = True
        except (asyncio.TimeoutError, TimeoutError):
            done = False
        await respond(send, 200 if done else 202, {**self.describe(), "reloaded": done},
                      version=self._serving())

    async def webhook(self, scope, receive, send) -> None:
        body = await _drain(receive)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.secret and not verify_signature(self.secret, headers, body):
            return await respond(send, 401, {"message": "the webhook's X-MLflow-Signature does not match "
                                             f"{SECRET_ENV}: create the webhook with the same secret"})
        try:
            data = json.loads(body)["data"]
            name, alias = data.get("name"), data.get("alias")
        except (ValueError, KeyError, TypeError, AttributeError):
            return await respond(send, 400, {"message": "not an MLflow webhook payload (JSON with 'data')"})
        woken = False
        for follower in (self.follower, self.shadow.follower if self.shadow else None):
            if follower is not None and name == follower.name and alias == follower.alias:
                follower.wake()  # MLflow waits for this answer (and retries on 5xx): answer before loading
                woken = True
        await respond(send, 200, {"woken": woken})

    def describe(self) -> dict[str, Any]:
        import mlflow

        f, served = self.follower, self.follower.current
        return {"model_name": f.name, "alias": f.alias, **(served.describe() if served else {"version": None}),
                "alias_version": f.alias_version,
                "last_poll": iso(f.last_poll) if f.last_poll else None,
                "poll_s": f.poll_s, "last_error": f.last_error, "mlflow_version": mlflow.__version__,
                **({"shadow": self.shadow.describe()} if self.shadow else {})}

    async def _lifespan(self, receive: Callable, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":  # after the requests in flight are answered
                for follower in (self.follower, self.shadow.follower if self.shadow else None):
                    if follower is not None:
                        follower.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _serving(self) -> str | None:
        served = self.follower.current
        return served.version if served else None

    def _what(self) -> str:
        return f"{self.follower.name}@{self.follower.alias}"

    def _why_none(self) -> str:
        error = self.follower.last_error
        if error:
            return error["reason"] + (f" (version {error['version']})" if error["version"] else "")
        return "the first read of the registry is under way"


async def _drain(receive: Callable) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def model_config() -> dict:
    """``SERVING_MODEL_CONFIG`` as `mlflow models serve` reads it (max_batch, max_body_mb)."""
    raw = os.environ.get("SERVING_MODEL_CONFIG")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ConfigError(f"SERVING_MODEL_CONFIG={raw[:80]!r} is not a JSON object: set it like "
                          '\'{"max_batch": 1024, "max_body_mb": 64}\'')
    return value


def build(args: ServeArgs) -> tuple[App, Follower]:
    """The app and its follower (started), the request guard and MLflow's request formats installed."""
    from ..classifier import request_body, request_formats

    args = with_registered_model(args, "serve")
    request_body.install(None)  # each request checked against the limits of the version it goes to
    request_formats.install()  # MLflow's dataframe forms, instances and CSV for every version
    metrics, config = Metrics(), model_config()
    shadow = None
    if args.shadow_fraction > 0:
        shadowed = Follower(args.model_name, args.shadow_alias, args.poll_s, config, role="shadowing")
        shadow = Shadow(shadowed, args.shadow_fraction, metrics)
        shadowed.start()
    follower = Follower(args.model_name, args.alias, args.poll_s, config, on_swap=metrics.swapped,
                        on_failure=lambda v: metrics.swap_failures.labels(version=v).inc(),
                        on_poll=shadow.record if shadow else None)
    follower.start()
    return App(follower, metrics, os.environ.get(SECRET_ENV) or None, shadow), follower


def run(args: ServeArgs) -> None:
    """Check the port, start following the alias and serve until stopped (SIGTERM or Ctrl-C: requests in
    flight are answered first)."""
    import mlflow
    import uvicorn

    from ..scale.health import check_bind, shown_uri

    check_bind(args.host, args.port)
    # A poll is repeated every poll_s: a registry that does not answer should cost a poll, not the minutes of
    # backoff a study's calls are given (fmnist_exp/__init__.py); for this process only
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "30"
    args = with_registered_model(args, "serve")  # the model meant where none is named
    log = logging.getLogger(__package__)  # the follower's swaps and refusals, with the time
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s [serve] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    app, follower = build(args)
    _logger.info("serving %s@%s from %s on http://%s:%d (the alias read every %g s, POST /reload to read it now)",
                 args.model_name, args.alias, shown_uri(mlflow.get_tracking_uri()), args.host, args.port, args.poll_s)
    config = uvicorn.Config(app, host=args.host, port=args.port, lifespan="on", log_level="warning",
                            timeout_graceful_shutdown=int(app.timeout))
    try:  # on SIGTERM: drain, then uvicorn answers the requests in flight, then the lifespan removes the downloads
        DrainingServer(config, app, args.drain_s).run()  # serving.drain
    finally:
        follower.stop()

