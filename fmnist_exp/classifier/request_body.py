"""A request's body before MLflow's scoring server parses it, and the 4xx answer to a bad request.

`mlflow models serve` (MLflow 3: FastAPI on uvicorn) reads the whole body, parses it with Python's
``json.loads`` and only then calls the model; neither uvicorn nor the scoring server has a setting for
a body's size or nesting. So some bodies fail in MLflow's parse, before the classifier sees them:
arrays nested deeper than the parser's recursion limit (``[[[[...`` 20,000 levels is 40 KB) and an
integer of more than 4,300 digits raise errors MLflow does not catch (HTTP 500); a body that is not
JSON at all is echoed whole in MLflow's 400 (50 MB in, 50 MB out); and a 50 MB body is parsed, in
seconds, before the classifier can say it holds too many pixels.

The classifier, once a scoring server has loaded it, therefore puts :func:`install`'s checks in front
of the server's request handler: the size limit first, then one parse of a JSON body that turns
those errors into a 4xx with a short message. MLflow takes the parsed object as it is, so a JSON
body is parsed once instead of the twice MLflow's own handler parses it. Loaded in-process,
nothing is installed: there is no body. The checks replace a module attribute of MLflow's
(``invocations``, which the /invocations route calls by name), since no setting or hook exists;
should a later MLflow change its shape, install() logs a warning and serves without them, and
the hostile-body cases of tests/test_serving.py fail.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import Array

_logger = logging.getLogger(__name__)
SCORING_SERVER = "mlflow.pyfunc.scoring_server"
JSON_MIME = "application/json"
# A body may be this large per image of the batch limit: room for 784 pixels (a 28x28 image) written as
# JSON floats of 17 digits and more, or for a small PNG/JPEG file in base64; larger images get
# BODY_BYTES_PER_PIXEL for each of their values (height x width x channels).
BODY_BYTES_PER_IMAGE, BODY_BYTES_PER_PIXEL = 32 * 1024, 40
_MLFLOW_HANDLER: dict[str, Any] = {}
# What the classifier answers, one row per image: the other end of the wire (classifier.pyfunc), and how
# request_formats tells a loaded model is ours
OUTPUT_SCHEMA = Schema([
    ColSpec(DataType.long, "label"),
    ColSpec(DataType.string, "class_name"),
    ColSpec(Array(DataType.double), "probabilities"),
])


class BadRequest(MlflowException):
    """A request the classifier cannot answer; served as HTTP 400 (or ``status``) with this message."""

    status = 400

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)
        self.reason = message

    def get_http_status_code(self) -> int:
        return self.status

    def serialize_as_json(self) -> str:
        # The scoring server rewrites .message to "Failed to predict data '<the whole batch>'.
        # Error: ..." before answering; the client gets what was wrong, first, instead.
        return json.dumps({**json.loads(super().serialize_as_json()), "message": self.reason})


class BodyTooLarge(BadRequest):
    status = 413


class NoContentType(BadRequest):
    status = 415


def column_name(name) -> str:
    """A column's name as a refusal shows it, cut short: the name is part of the request."""
    text = repr(name)
    return text if len(text) <= 40 else text[:40] + "...'"


def body_limit(max_body_mb, max_batch: int, pixels: int) -> int:
    """The body limit in bytes: ``max_body_mb`` MiB, or room for ``max_batch`` images of ``pixels`` values
    each when it is None."""
    if max_body_mb is None:
        return max_batch * max(BODY_BYTES_PER_IMAGE, BODY_BYTES_PER_PIXEL * pixels)
    if isinstance(max_body_mb, bool) or not isinstance(max_body_mb, (int, float)) or not max_body_mb > 0:
        raise ValueError(f"model_config max_body_mb={max_body_mb!r}: give the largest request body to take in MiB, "
                         'a number above 0, e.g. SERVING_MODEL_CONFIG=\'{"max_body_mb": 64}\'')
    return int(max_body_mb * 2**20)


def check_size(body: bytes | str, limit: int, pixels: int) -> None:
    """Refuse a body over ``limit`` bytes before any parsing (``pixels``: values per image, for the advice)."""
    if len(body) > limit:
        raise BodyTooLarge(f"the request body is {len(body):,} bytes; the limit is {limit:,} bytes "
                           f"({limit / 2**20:g} MiB): split the batch into smaller requests, or send the "
                           f'compact {{"inputs": {{"uint8_b64": ...}}}} form ({pixels:,} bytes of base64 per image)')


def parse_json(body: bytes | str, shapes: str) -> dict:
    """The body as a JSON object, or BadRequest saying what was wrong (never echoing the body; ``shapes``:
    what the model takes, for the advice)."""
    try:
        value = json.loads(body)
    except RecursionError:
        raise BadRequest(f"the JSON body nests arrays or objects about {sys.getrecursionlimit():,} levels deep or "
                         f"more, too deep to parse; images nest 2 to 4 levels: send {{\"inputs\": ...}} with "
                         f"{shapes}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        # MLflow's own words, less its copy of the whole body after them
        raise BadRequest(f"Invalid input. Ensure that input is a valid JSON formatted string. Error: {e}") from None
    except ValueError:  # json.loads reads integers as int, whose text Python limits to so many digits
        raise BadRequest(f"a number in the body has more than {sys.get_int_max_str_digits():,} digits: "
                         "pixel values are 0-255") from None
    if not isinstance(value, dict):
        raise BadRequest(f'the body must be a JSON object {{"inputs": ...}}; got {type(value).__name__}')
    return value


def parse_within(body: bytes | str, limits: Limits | None) -> dict:
    """A JSON body checked against a model's limits (when it carries any) and parsed as :func:`parse_json`
    parses it: what the guard does for `mlflow models serve` and request_formats for `mlflow models predict`."""
    if limits is not None:
        check_size(body, limits.max_body_bytes, limits.pixels)
    return parse_json(body, limits.shapes if limits is not None else "images")


def _is_plain_json(content_type: str) -> bool:
    """application/json with no parameter but charset=utf-8: the type whose body MLflow parses as JSON
    (it answers any other parameter with its own 415, which this leaves to it)."""
    mime, *parameters = (part.strip().lower() for part in content_type.split(";"))
    return mime == JSON_MIME and all(p == "charset=utf-8" for p in parameters)


@dataclass(frozen=True)
class Limits:
    """What one served model takes: the largest body in bytes, and its images' values per image and shapes
    (for the advice a refusal gives)."""

    max_body_bytes: int
    pixels: int
    shapes: str


def limits_of(model: Any) -> Limits | None:
    """The limits a loaded classifier set for itself (``ImageClassifier.request_limits``), or None."""
    unwrap = getattr(model, "unwrap_python_model", None)
    try:
        inner = unwrap() if unwrap is not None else None
    except Exception:  # not a PythonModel-based pyfunc
        return None
    limits = getattr(inner, "request_limits", None)
    return limits if isinstance(limits, Limits) else None


def in_scoring_server() -> bool:
    """Whether this process is one MLflow's scoring server started (`mlflow models serve`, the image of
    `mlflow models build-docker`): it names the model to load in an environment variable."""
    server: Any = sys.modules.get(SCORING_SERVER)
    return server is not None and getattr(server, "_SERVER_MODEL_PATH", None) in os.environ


def install(limits: Limits | None) -> bool:
    """Check each request's body before MLflow's scoring server does; return whether the checks are in place.

    Each request is checked against the limits of the model it goes to (several versions may be loaded
    in one process, as `serve` does); ``limits`` is for a model that carries none. Installed once per
    process; a later call changes nothing but the fallback."""
    from mlflow.pyfunc import scoring_server as server

    # MLflow's own handler, kept from the first install: a second one replaces the checks, not stacks them
    handler = _MLFLOW_HANDLER.setdefault("invocations", getattr(server, "invocations", None))
    if handler is None or list(inspect.signature(handler).parameters)[:3] != ["data", "content_type", "model"]:
        _logger.warning("this MLflow's scoring server has no invocations(data, content_type, model, ...): serving "
                        "without the checks on a request's size and JSON (see fmnist_exp.classifier.request_body)")
        return False
    if limits is not None:
        _MLFLOW_HANDLER["fallback"] = limits

    @functools.wraps(handler)
    def invocations(data, content_type, model=None, *args, **kwargs):
        if content_type is None:  # MLflow's handler would fail on it with a 500
            raise NoContentType("the request has no Content-Type: send the header Content-Type: application/json")
        own = limits_of(model) or _MLFLOW_HANDLER.get("fallback")
        if isinstance(data, (bytes, str)) and _is_plain_json(content_type):
            data = parse_within(data, own)  # MLflow's handler takes a parsed object as it is
        elif own is not None:  # CSV, parquet: the size only, MLflow parses them
            check_size(data, own.max_body_bytes, own.pixels)
        return handler(data, content_type, model, *args, **kwargs)

    server.invocations = invocations
    return True
