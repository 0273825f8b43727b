"""The Open Inference Protocol's routes on `serve` (``/v2/...``, serving.oip says what each takes and answers):
the followed alias's version answers unless the path names a version; each answer's version is read once, when
the request arrives, as /invocations reads it."""

from __future__ import annotations

import asyncio
import logging
import re
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mlflow.exceptions import MlflowException

from . import oip
from .asgi import respond
from .follow import Follower, NotServable, Served

_logger = logging.getLogger(__name__)
MODEL_PATH = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<action>/ready|/infer)?")
VERSION = re.compile(r"[0-9]{1,9}")


class Routes:
    """``/v2`` and below, for the model ``follower`` follows; ``count(route, version, code)`` counts each answer."""

    def __init__(self, follower: Follower, count: Callable[[str, str, int], None], timeout: float):
        self.follower, self.count, self.timeout = follower, count, timeout
        # loads of a version a request names run here, not in the pool /invocations and infer answer in
        self.loads = ThreadPoolExecutor(2, thread_name_prefix="v2-load")
        self.draining: Callable[[], bool] = lambda: False  # the server's SIGTERM drain: not ready meanwhile

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        path, method = scope["path"].rstrip("/") or "/", scope["method"]
        route, version, code = "other", "none", 500
        try:
            match = MODEL_PATH.fullmatch(path)
            route = {"/v2": "server_metadata", "/v2/health/live": "live", "/v2/health/ready": "ready"}.get(
                path, "other" if match is None else (match["action"] or "/model_metadata")[1:])
            want = "POST" if route == "infer" else "GET"
            if method != want and not (want == "GET" and method == "HEAD"):
                raise oip.refuse(f"{path} takes {want}", 405)
            if path == "/v2":
                code = await reply(send, 200, oip.server_metadata())
            elif path in ("/v2/health/live", "/v2/health/ready"):
                ready = path.endswith("live") or (self.follower.current is not None and not self.draining())
                code = await reply(send, 200 if ready else 400, {route: ready})  # the protocol: 4xx for false
            elif match is None:
                raise oip.refuse(f"no such path {path}: see /v2, /v2/health/ready, /v2/models/"
                                 f"{self.follower.name}[/versions/N][/ready|/infer]", 404)
            elif route == "infer":
                served = await self.served(match["name"], match["version"], load=True)
                assert served is not None
                version = served.version
                body, content_type, headers = await self.infer(served, scope, receive)
                code = 200
                await respond(send, code, body, headers, content_type=content_type, version=served.version)
            else:  # ready and metadata: of a version held here, never loading one (a probe walking versions)
                served = await self.served(match["name"], match["version"], load=False)
                version = served.version if served else "none"
                if route == "ready":
                    code = await reply(send, 200 if served else 400, {"name": self.follower.name,
                                                                      "ready": served is not None})
                elif served is None:
                    raise oip.refuse(f"version {match['version'] or self.follower.alias} of {self.follower.name} is "
                                     "not loaded on this server (an infer request naming it loads it)", 400)
                else:
                    code = await reply(send, 200, oip.model_metadata(self.follower.name, served.version,
                                                                     classifier(served).info))
        except oip.ProtocolError as e:
            code = await reply(send, e.status, {"error": e.message})
        except Exception:  # never a bare 500 without the protocol's error body
            _logger.exception("a v2 request to %s failed", path)
            code = await reply(send, 500, {"error": "the server failed on this request (its log says why)"})
        finally:
            self.count(route, version, code)

    async def served(self, name: str, version: str | None, *, load: bool) -> Served | None:
        """The version a request names (else the alias's; None where nothing is loaded yet), loaded on demand
        where ``load``."""
        if name != self.follower.name:
            raise oip.refuse(f"unknown model {name[:100]!r}: this server serves {self.follower.name!r}", 404)
        if version is None:
            served = self.follower.current
            if served is None and load:
                raise oip.refuse(f"no version of {self.follower.name}@{self.follower.alias} is loaded yet", 503)
            return served
        if not VERSION.fullmatch(version):
            raise oip.refuse(f"version {version[:20]!r}: a registered version is a number", 404)
        if not load:
            return self.follower.loaded(str(int(version)))
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self.loads, self.follower.version, str(int(version))),
                                          self.timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise oip.refuse(f"version {version} is still loading: try again shortly", 503) from None
        except NotServable as e:
            raise oip.refuse(f"version {version} of {name} cannot answer: {e}", 503) from None
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise oip.refuse(f"{name} has no version {version}", 404) from None
            raise oip.refuse(f"version {version} of {name} could not be read from the registry", 503) from None

    async def infer(self, served: Served, scope: dict, receive: Callable) -> tuple[bytes, str, list]:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        clf = classifier(served)
        limit = clf.request_limits.max_body_bytes
        body = inflated(await read_body(receive, limit), headers.get("content-encoding"), limit)
        try:
            return await asyncio.wait_for(asyncio.to_thread(answer, self.follower.name, served, clf, body, headers),
                                          self.timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise oip.refuse("the request took longer than the server's limit "
                             "(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT)", 504) from None


def inflated(body: bytes, encoding: str | None, limit: int) -> bytes:
    """A body tritonclient compressed (Content-Encoding gzip or deflate), decompressed up to ``limit`` bytes."""
    if encoding in (None, "", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise oip.refuse(f"Content-Encoding {encoding[:20]!r}: send the body as is, gzip or deflate", 415)
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise oip.refuse(f"the body is not valid {encoding} ({e})") from None
    if len(out) > limit:
        raise oip.refuse(f"the body decompressed passes this model's limit of {limit:,} bytes: split the batch", 413)
    return out


def classifier(served: Served) -> Any:
    """The classifier a version loaded (classifier.pyfunc.ImageClassifier): its dataset, batch and body limits."""
    return served.model.unwrap_python_model()


def answer(name: str, served: Served, clf: Any, body: bytes, headers: dict[str, str]) -> tuple[bytes, str, list]:
    """An infer request answered by ``served`` (in a thread): body, content type, other headers."""
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
    return oip.answer(request, frame, name, served.version)


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


async def reply(send: Callable, status: int, body: dict) -> int:
    """A JSON answer; the status sent."""
    await respond(send, status, body)
    return status
