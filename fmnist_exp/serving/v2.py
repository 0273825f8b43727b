"""The Open Inference Protocol's routes on `serve` (``/v2/...``, serving.oip says what each takes and answers):
the followed alias's version answers unless the path names a version; each answer's version is read once, when
the request arrives, as /invocations reads it."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from . import oip
from .follow import VERSION_HEADER, Follower, NotServable, Served

_logger = logging.getLogger(__name__)
MODEL_PATH = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<action>/ready|/infer)?")


class Routes:
    """``/v2`` and below, for the model ``follower`` follows; ``count(route, version, code)`` counts each answer."""

    def __init__(self, follower: Follower, count: Callable[[str, str, int], None], timeout: float):
        self.follower, self.count, self.timeout = follower, count, timeout

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        path, method = scope["path"].rstrip("/") or "/", scope["method"]
        route, version, code = "other", "none", 500
        try:
            if path == "/v2":
                route = "server_metadata"
                code = await reply(send, 200, oip.server_metadata(), method)
                return
            if path in ("/v2/health/live", "/v2/health/ready"):
                route = path.rsplit("/", 1)[1]
                ready = route == "live" or self.follower.current is not None
                code = await reply(send, 200 if ready else 503, {route: ready}, method)
                return
            match = MODEL_PATH.fullmatch(path)
            if match is None:
                raise oip.refuse(f"no such path {path}: see /v2, /v2/health/ready, /v2/models/"
                                 f"{self.follower.name}[/versions/N][/ready|/infer]", 404)
            action = (match["action"] or "/metadata")[1:]
            route = action if action != "metadata" else "model_metadata"
            served = await self.served(match["name"], match["version"], wait=action == "infer")
            version = served.version if served else "none"
            if action == "ready":
                code = await reply(send, 200 if served else 503, {"name": self.follower.name,
                                                                  "ready": served is not None}, method)
                return
            if served is None:
                raise oip.refuse(f"no version of {self.follower.name}@{self.follower.alias} is loaded yet", 503)
            if action == "metadata":
                meta = oip.model_metadata(self.follower.name, served.version, classifier(served).info)
                code = await reply(send, 200, meta, method)
                return
            if method != "POST":
                raise oip.refuse(f"{path} takes POST", 405)
            code, body, headers = await self.infer(served, scope, receive)
            await send_raw(send, code, body, headers, served.version)
        except oip.ProtocolError as e:
            code = await reply(send, e.status, {"error": e.message})
        finally:
            self.count(route, version, code)

    async def served(self, name: str, version: str | None, *, wait: bool) -> Served | None:
        """The version a request names (else the alias's; None where nothing is loaded yet)."""
        if name != self.follower.name:
            raise oip.refuse(f"unknown model {name!r}: this server serves {self.follower.name!r}", 404)
        if version is None:
            return self.follower.current
        if not version.isdigit():
            raise oip.refuse(f"version {version!r}: a registered version is a number", 404)
        try:
            return await asyncio.to_thread(self.follower.version, str(int(version)))
        except NotServable as e:
            raise oip.refuse(f"version {version} of {name} cannot answer: {e}", 503) from None
        except Exception as e:  # the registry has no such version, or did not answer
            if "RESOURCE_DOES_NOT_EXIST" in str(getattr(e, "error_code", "")) or "not found" in str(e).lower():
                raise oip.refuse(f"{name} has no version {version}", 404) from None
            raise oip.refuse(f"version {version} of {name} could not be read: {type(e).__name__}", 503) from None

    async def infer(self, served: Served, scope: dict, receive: Callable) -> tuple[int, bytes, list]:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        clf = classifier(served)
        body = await read_body(receive, clf.request_limits.max_body_bytes)
        try:
            return await asyncio.wait_for(asyncio.to_thread(answer, self.follower.name, served, clf, body, headers),
                                          self.timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise oip.refuse("the request took longer than the server's limit "
                             "(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT)", 504) from None


def classifier(served: Served) -> Any:
    """The classifier a version loaded (classifier.pyfunc.ImageClassifier): its dataset, batch and body limits."""
    return served.model.unwrap_python_model()


def answer(name: str, served: Served, clf: Any, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, list]:
    """An infer request answered by ``served`` (in a thread): status, body, headers."""
    from ..classifier.request_body import BadRequest

    request = oip.parse_infer(body, headers.get(oip.HEADER_LENGTH), clf.info, clf.max_batch)
    try:
        images = request.images if request.images is not None else oip.decoded(request.files, clf.info)
        frame = served.model.predict(images)
    except BadRequest as e:
        raise oip.refuse(f"{request.input_name}: {e.message}", getattr(e, "status", 400)) from None
    except Exception:
        _logger.exception("version %s failed on a v2 request", served.version)
        raise oip.refuse("the model failed on this request (the server's log says why)", 500) from None
    raw, extra = oip.answer(request, frame, name, served.version)
    return 200, raw, extra


async def read_body(receive: Callable, limit: int) -> bytes:
    """The request's body, or 413 once it passes ``limit`` bytes."""
    chunks, total = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise oip.refuse(f"the body passes this model's limit of {limit:,} bytes: split the batch "
                             "(SERVING_MODEL_CONFIG's max_body_mb raises it)", 413)
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def reply(send: Callable, status: int, body: dict, method: str = "GET") -> int:
    """A JSON answer (405 to a GET path asked otherwise); the status sent."""
    if method not in ("GET", "HEAD") and "error" not in body:
        status, body = 405, {"error": "this path takes GET"}
    await send_raw(send, status, json.dumps(body).encode(), [(b"content-type", b"application/json")], None)
    return status


async def send_raw(send: Callable, status: int, body: bytes, headers: list, version: str | None) -> None:
    head = [*headers, (b"content-length", str(len(body)).encode())]
    if version:
        head.append((VERSION_HEADER, version.encode()))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})

