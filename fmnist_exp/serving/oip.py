"""The Open Inference Protocol (KServe's "v2" data plane, which KServe, NVIDIA Triton and Seldon Core 2 speak,
and whose clients are ``tritonclient.http`` and KServe's SDK) on `serve`, beside ``/invocations``:

- ``GET /v2/health/live``, ``/v2/health/ready``; ``GET /v2``: the server's metadata;
- ``GET /v2/models/<registered name>[/versions/<v>]``: the model's metadata, ``.../ready``: whether it answers;
- ``POST /v2/models/<registered name>[/versions/<v>]/infer``: the followed alias's version answers, or
  version ``v`` (loaded on demand within the server's bound of loaded versions, never evicting the version
  serving: serving.follow ``Follower.version``).

A request carries one of two inputs:

- ``images``: the pixels, UINT8 (FP32 0-255 taken too), shape ``[N, H, W]`` for grayscale (``[N, H, W, 1]``
  too) or ``[N, H, W, C]``, in the dataset's size;
- ``image_files``: BYTES ``[N]``, one PNG/JPEG file per element, decoded as ``predict`` decodes a file. In the
  JSON form each element is the file's base64 text (a client may mark it ``"parameters": {"content_type":
  "base64"}``, as MLServer's base64 codec does; any element is read as base64), in the binary form its bytes.

Outputs, each selectable by the request's ``outputs`` and returned as binary data where asked
(``"binary_data": true`` on an output, or ``"binary_data_output": true`` on the request): ``probabilities``
FP32 ``[N, classes]``, ``label`` INT64 ``[N]``, ``class_name`` BYTES ``[N]``. Every answer names
``model_name`` and ``model_version`` (the version that answered, as ``X-Model-Version`` does) and echoes
``id``. The binary tensor extension (``Inference-Header-Content-Length``) is read and written as
tritonclient sends and reads it. An error is ``{"error": "..."}`` with a 4xx (5xx where the server failed).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PIXELS, FILES = "images", "image_files"
OUTPUTS = {"probabilities": "FP32", "label": "INT64", "class_name": "BYTES"}
PIXEL_TYPES: dict[str, np.dtype] = {"UINT8": np.dtype("uint8"), "FP32": np.dtype("<f4")}
HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ["binary_tensor_data"]


class ProtocolError(Exception):
    """A request the protocol refuses: its HTTP status and the ``error`` text."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def refuse(message: str, status: int = 400) -> ProtocolError:
    return ProtocolError(status, message)


@dataclass
class InferRequest:
    """What an infer request asks: its input (``images``: an array in the dataset's layout; ``image_files``:
    the files' bytes), the outputs wanted (name, as binary data) and the id to echo."""

    input_name: str
    images: np.ndarray | None = None
    files: list[bytes] = field(default_factory=list)
    outputs: list[tuple[str, bool]] = field(default_factory=list)
    id: str | None = None


def server_metadata() -> dict[str, Any]:
    from .. import __version__

    return {"name": "fmnist-exp", "version": __version__, "extensions": EXTENSIONS}


def pixel_shape(info) -> list[int]:
    h, w, c = info.shape
    return [-1, h, w] if c == 1 else [-1, h, w, c]


def model_metadata(name: str, version: str, info) -> dict[str, Any]:
    """The model's metadata: the version that would answer, its inputs and outputs in the dataset's shapes."""
    return {"name": name, "versions": [version], "platform": "mlflow_pyfunc",
            "inputs": [{"name": PIXELS, "datatype": "UINT8", "shape": pixel_shape(info)},
                       {"name": FILES, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, info.num_classes]},
                        {"name": "label", "datatype": "INT64", "shape": [-1]},
                        {"name": "class_name", "datatype": "BYTES", "shape": [-1]}]}


def split_body(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    """The request's JSON and the binary data after it (the binary tensor extension), or 400 saying why not."""
    if header_length is None:
        json_part, binary = body, memoryview(b"")
    else:
        try:
            n = int(header_length.strip())
        except ValueError:
            raise refuse(f"Inference-Header-Content-Length={header_length[:40]!r}: not a whole number of "
                         "bytes (the length of the JSON before the binary data)") from None
        if not 0 < n <= len(body):
            raise refuse(f"Inference-Header-Content-Length={n}, but the body holds {len(body)} bytes: it must be "
                         "the length of the JSON part, which the binary data follows")
        json_part, binary = body[:n], memoryview(body)[n:]
    from ..classifier.request_body import BadRequest, parse_json

    try:  # as /invocations parses a body: too deep, too long a number, not JSON, not an object: each said
        request = parse_json(bytes(json_part), "an \"inputs\" list of one tensor")
    except BadRequest as e:
        raise refuse(f"{e.message} (binary tensors need the Inference-Header-Content-Length header)") from None
    return request, binary


def parse_infer(body: bytes, header_length: str | None, info, max_batch: int) -> InferRequest:
    """An infer request read and checked against the model's dataset (``info``) and batch limit."""
    request, binary = split_body(body, header_length)
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise refuse(f"\"inputs\" must be a list of one tensor: {PIXELS!r} (UINT8 or FP32 pixels, shape "
                     f"{pixel_shape(info)}) or {FILES!r} (BYTES, one PNG/JPEG file each)")
    if len(inputs) != 1:
        names = [i.get("name") if isinstance(i, dict) else i for i in inputs]
        raise refuse(f"\"inputs\" holds {len(inputs)} tensors {names}; send one: {PIXELS!r} or {FILES!r}")
    spec = inputs[0]
    if not isinstance(spec, dict):
        raise refuse("each input must be an object with name, shape, datatype and data")
    name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if not isinstance(name, str) or name not in (PIXELS, FILES):
        raise refuse(f"no input named {str(name)[:40]!r}: this model takes {PIXELS!r} or {FILES!r}")
    if not isinstance(datatype, str):
        raise refuse(f"{name}: datatype must be text such as \"UINT8\"; got {type(datatype).__name__}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise refuse(f"{name}: shape must be a list of whole numbers; got {shape!r}")
    size = _parameters(spec, name).get("binary_data_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise refuse(f"{name}: binary_data_size must be a whole number of bytes; got {size!r}")
    if size is not None and size != len(binary):
        raise refuse(f"{name}: binary_data_size={size}, but {len(binary)} bytes follow the JSON")
    if size is None and len(binary):
        raise refuse(f"{len(binary)} bytes follow the JSON, but no input says binary_data_size")
    if size is None and "data" not in spec:
        raise refuse(f"{name}: no \"data\" (or binary data, with parameters.binary_data_size)")
    raw = binary if size is not None else None
    out = InferRequest(name, outputs=wanted_outputs(request), id=_id(request))
    if name == PIXELS:
        out.images = pixels(spec, datatype, shape, raw, info, max_batch)
    else:
        out.files = files(datatype, shape, spec.get("data"), raw, max_batch)
    return out


def _id(request: dict) -> str | None:
    given = request.get("id")
    if given is not None and not isinstance(given, str):
        raise refuse(f"id must be text; got {type(given).__name__}")
    return given


def wanted_outputs(request: dict) -> list[tuple[str, bool]]:
    """(name, as binary data) of each output asked for, every output where none is named."""
    binary_default = _flag(_parameters(request, "the request"), "binary_data_output", False)
    asked = request.get("outputs")
    if asked is None:
        return [(name, binary_default) for name in OUTPUTS]
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise refuse("\"outputs\" must be a list of objects, each with a name")
    out: list[tuple[str, bool]] = []
    for o in asked:
        name = o.get("name")
        if not isinstance(name, str) or name not in OUTPUTS:
            raise refuse(f"no output named {str(name)[:40]!r}: this model answers {', '.join(OUTPUTS)}")
        if name in (n for n, _ in out):
            raise refuse(f"output {name!r} asked for twice")
        out.append((name, _flag(_parameters(o, f"output {name}"), "binary_data", binary_default)))
    return out


def _parameters(holder: dict, where: str) -> dict:
    parameters = holder.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise refuse(f"{where}: parameters must be an object")
    return parameters


def _flag(parameters: dict, name: str, default: bool) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise refuse(f"{name} must be true or false; got {json.dumps(value)[:40]}")
    return value


def pixels(spec: dict, datatype: Any, shape: list[int], raw: memoryview | None, info, max_batch: int) -> np.ndarray:
    """The ``images`` tensor as an array of the dataset's layout (n, *info.array_shape)."""
    if datatype not in PIXEL_TYPES:
        raise refuse(f"{PIXELS}: datatype {datatype!r}; it takes UINT8 pixels 0-255 (FP32 0-255 too), or send the "
                     f"files as {FILES!r} (BYTES)")
    h, w, c = info.shape
    fits = [[h, w]] + ([[h, w, 1]] if c == 1 else [[h, w, c]])
    if len(shape) < 1 or shape[1:] not in fits:
        raise refuse(f"{PIXELS}: shape {shape}; this model takes {pixel_shape(info)} ({h}x{w} pixels"
                     f"{'' if c == 1 else f' of {c} channels'}, -1 = any number of images)")
    n, count = shape[0], math.prod(shape)
    if n == 0:
        raise refuse(f"{PIXELS}: the batch is empty: send at least one image")
    if n > max_batch:
        raise refuse(f"{PIXELS}: {n} images in one request; the limit is {max_batch}: split the batch")
    dtype = PIXEL_TYPES[datatype]
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise refuse(f"{PIXELS}: {len(raw)} bytes of binary data for shape {shape} of {datatype}: "
                         f"{count * dtype.itemsize} expected")
        x = np.frombuffer(raw, dtype=dtype)
    else:
        x = _json_numbers(spec.get("data"), datatype, count)
    return x.reshape(n, *info.array_shape)


def _json_numbers(data: Any, datatype: str, count: int) -> np.ndarray:
    try:
        x = np.asarray(data, dtype=object).ravel()
    except ValueError as e:  # ragged lists
        raise refuse(f"{PIXELS}: data must be numbers, flat or nested by the shape ({e})") from None
    if len(x) != count:
        raise refuse(f"{PIXELS}: {len(x)} values in data for a shape of {count}")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in x):
        bad = next(v for v in x if not (isinstance(v, int | float) and not isinstance(v, bool)))
        raise refuse(f"{PIXELS}: data holds {json.dumps(bad)[:40]}; send numbers 0-255")
    try:
        values = np.array(x.tolist(), dtype=np.float64)
    except OverflowError:  # an integer of hundreds of digits, which no float holds
        raise refuse(f"{PIXELS}: pixel values must be 0-255; got an integer too large for any float") from None
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 255:
        raise refuse(f"{PIXELS}: pixel values must be 0-255; got values from {values.min():g} to {values.max():g}")
    if datatype == "UINT8" and not np.array_equal(values, np.round(values)):
        raise refuse(f"{PIXELS}: UINT8 values must be whole numbers 0-255 (send FP32 for fractions)")
    return values.astype(PIXEL_TYPES[datatype])


def files(datatype: Any, shape: list[int], data: Any, raw: memoryview | None, max_batch: int) -> list[bytes]:
    """The ``image_files`` tensor: each element's bytes (binary: length-prefixed; JSON: base64 text)."""
    import base64
    import binascii

    if datatype != "BYTES":
        raise refuse(f"{FILES}: datatype {datatype!r}; it takes BYTES, one PNG/JPEG file per element (pixels go "
                     f"in {PIXELS!r})")
    if len(shape) != 1:
        raise refuse(f"{FILES}: shape {shape}; it takes [N], one file per element")
    n = shape[0]
    if n == 0:
        raise refuse(f"{FILES}: the batch is empty: send at least one file")
    if n > max_batch:
        raise refuse(f"{FILES}: {n} files in one request; the limit is {max_batch}: split the batch")
    out: list[bytes] = []
    if raw is not None:
        at = 0
        while at < len(raw):
            if at + 4 > len(raw):
                raise refuse(f"{FILES}: the binary data ends inside an element's 4-byte length")
            size = int.from_bytes(raw[at:at + 4], "little")
            if at + 4 + size > len(raw):
                raise refuse(f"{FILES}: element {len(out)} says {size} bytes, but {len(raw) - at - 4} follow")
            out.append(bytes(raw[at + 4:at + 4 + size]))
            at += 4 + size
    else:
        elements = np.asarray(data, dtype=object).ravel().tolist() if isinstance(data, list) else None
        if elements is None or not all(isinstance(e, str) for e in elements):
            raise refuse(f"{FILES}: in JSON, data must be a list of base64 strings, one PNG/JPEG file each")
        try:
            out = [base64.b64decode(e, validate=True) for e in elements]
        except (binascii.Error, ValueError) as e:
            raise refuse(f"{FILES}: an element is not base64 text ({e}): send each file base64-encoded "
                         "(parameters.content_type \"base64\"), or its bytes as binary data") from None
    if len(out) != n:
        raise refuse(f"{FILES}: {len(out)} elements for shape [{n}]")
    return out


def decoded(files_: list[bytes], info) -> np.ndarray:
    """The files as images of the dataset's layout, decoded as ``predict`` decodes a file."""
    from ..classifier.pyfunc import load_image

    return np.stack([load_image(io.BytesIO(b), info, f"{FILES}[{i}]") for i, b in enumerate(files_)])


def _bytes_tensor(values: list[str]) -> bytes:
    return b"".join(len(b).to_bytes(4, "little") + b for b in (v.encode() for v in values))


def answer(request: InferRequest, frame, name: str, version: str) -> tuple[bytes, str, list[tuple[bytes, bytes]]]:
    """The infer response for the model's answers ``frame`` (label, class_name, probabilities): body, content type
    and other headers (the JSON's length where binary outputs follow it)."""
    n = len(frame)
    probabilities = np.asarray(np.stack(frame["probabilities"].to_list()), dtype="<f4").reshape(n, -1)
    tensors: dict[str, Any] = {"probabilities": probabilities, "label": np.asarray(frame["label"], dtype="<i8"),
                               "class_name": [str(c) for c in frame["class_name"]]}
    outputs, chunks = [], []
    for output, binary in request.outputs:
        value = tensors[output]
        shape = [n] if output != "probabilities" else list(value.shape)
        head: dict[str, Any] = {"name": output, "datatype": OUTPUTS[output], "shape": shape}
        if binary:
            raw = _bytes_tensor(value) if isinstance(value, list) else value.tobytes()
            head["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            head["data"] = value if isinstance(value, list) else value.ravel().tolist()
        outputs.append(head)
    body = {"model_name": name, "model_version": version, **({"id": request.id} if request.id is not None else {}),
            "outputs": outputs}
    text = json.dumps(body).encode()
    if not chunks:
        return text, "application/json", []
    return text + b"".join(chunks), "application/octet-stream", [(HEADER_LENGTH.encode(), str(len(text)).encode())]
