"""The servable classifier: a pyfunc around the Keras model that takes raw images and
answers label, class name and the 10 class probabilities.

Requests are checked here, with messages that say what was wrong; MLflow's scoring server
turns these errors into HTTP 400 and keeps serving:

    {"inputs": [[[0, 0, ..., 255], ...]]}       # (n, 28, 28) raw pixels 0-255
    {"inputs": [[0, 0, ..., 255]]}               # (n, 784) flattened rows also work
    {"inputs": {"uint8_b64": "AAAA..."}}         # compact: base64 of n*784 bytes, one per pixel
    {"inputs": {"png_b64": ["iVBORw0...", ...]}} # compact: base64 PNG/JPEG files, one per image

The compact forms ride inside MLflow's own JSON, so the stock `mlflow models serve` takes them
unchanged: a batch of 1,000 images is one 1 MB string to parse instead of 784,000 JSON numbers
(3.1 MB) to parse and check one by one, which was what bound served throughput.

No input schema is declared on purpose: a tensor schema would fix one of the two shapes and
reject the other before these checks run. The input example shows the (n, 28, 28) form.
The signature is marked as one whose inputs the model checks itself, so the scoring server
hands predict() the request's JSON value as it came (see ``train.model_logging.log_classifier``): only then
can a JSON ``true`` or ``null`` among the pixels, or rows of unequal length, be told apart
and named, instead of being turned into 1, an object array or a numpy error first.
What fails before predict() runs (a body too large, nested too deep, or not JSON) is refused by
the checks request_body.py puts in front of the scoring server when it loads the classifier.

The classifier is logged as code (classifier_model.py), the way MLflow recommends, so nothing
is unpickled on load.
"""

from __future__ import annotations

import base64
import binascii
import io
import numbers
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import Array

from ..data import CLASS_NAMES, IMAGE_SHAPE, NUM_CLASSES
from . import request_body
from .request_body import BadRequest

# Images per request; larger batches are refused, not truncated. In-process users can raise it:
# mlflow.pyfunc.load_model(uri, model_config={"max_batch": 100_000}).
MAX_BATCH = 1024
# The keys a loader may set (MLflow drops a key the logged model lacks): max_body_mb, served only,
# caps a request's body; None gives 32 KiB per image of max_batch (32 MiB for 1,024 images).
MODEL_CONFIG = {"max_batch": MAX_BATCH, "max_body_mb": None}
OUTPUT_SCHEMA = Schema([
    ColSpec(DataType.long, "label"),
    ColSpec(DataType.string, "class_name"),
    ColSpec(Array(DataType.double), "probabilities"),
])


EXPECTED = "images of shape (n, 28, 28) or (n, 784) with raw pixel values 0-255"
PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
UINT8_B64, PNG_B64 = "uint8_b64", "png_b64"  # the compact request keys inside "inputs"
COMPACT = (f'{{"inputs": {{"{UINT8_B64}": "<base64 of n*{PIXELS} bytes>"}}}} '
           f'or {{"inputs": {{"{PNG_B64}": ["<base64 PNG>", ...]}}}}')


def compact_request(images: np.ndarray) -> dict:
    """The compact JSON body for uint8 images of shape (n, 28, 28) or (n, 784): what a client sends."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.size != len(images) * PIXELS:
        raise ValueError(f"compact_request takes uint8 images of shape (n, 28, 28) or (n, 784); got {images.dtype} "
                         f"{images.shape}: convert 0-255 pixels with .astype(np.uint8)")
    return {"inputs": {UINT8_B64: base64.b64encode(images.tobytes()).decode("ascii")}}


def _b64(text, where: str) -> bytes:
    if not isinstance(text, str):
        raise BadRequest(f"{where} must be a base64 string; got {_json_name(type(text))}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"{where} is not valid base64 ({e})") from None


def compact_images(model_input: dict, max_batch: int = MAX_BATCH) -> np.ndarray:
    """Decode a compact request's "inputs" object into uint8 images (n, 28, 28), or raise BadRequest."""
    if list(model_input) == [UINT8_B64]:
        raw = _b64(model_input[UINT8_B64], UINT8_B64)
        n, extra = divmod(len(raw), PIXELS)
        if extra:
            raise BadRequest(f"{UINT8_B64} holds {len(raw)} bytes, not a multiple of {PIXELS}: send {PIXELS} bytes "
                             f"(28x28 pixels, one byte each, row by row) per image")
        images = np.frombuffer(raw, dtype=np.uint8).reshape(n, *IMAGE_SHAPE)
    elif list(model_input) == [PNG_B64]:
        files = model_input[PNG_B64]
        if not isinstance(files, list):
            raise BadRequest(f"{PNG_B64} must be a list of base64 strings, one PNG/JPEG file each")
        if len(files) > max_batch:
            raise BadRequest(f"{len(files)} images in one request; the limit is {max_batch}: split the batch")
        images = np.stack([load_image(io.BytesIO(_b64(f, f"{PNG_B64}[{i}]")), f"{PNG_B64}[{i}]")
                           for i, f in enumerate(files)]) if files else np.zeros((0, *IMAGE_SHAPE), np.uint8)
    else:
        raise BadRequest(f'"inputs" is an object with keys {sorted(model_input)}: send {COMPACT}, '
                         f"or a tensor {{\"inputs\": [...]}} with {EXPECTED}")
    if not len(images):
        raise BadRequest("the batch is empty: send at least one image")
    if len(images) > max_batch:
        raise BadRequest(f"{len(images)} images in one request; the limit is {max_batch}: split the batch")
    return images


def _check_cells(model_input) -> None:
    """Refuse nested lists (or object arrays) that hold anything but numbers, naming what."""
    try:
        cells = np.array(model_input, dtype=object)
    except ValueError:  # ragged at a depth numpy cannot even hold as objects
        cells = None
    kinds = set() if cells is None else {type(v) for v in cells.ravel()}
    if cells is None or kinds & {list, tuple, np.ndarray}:
        if cells is not None and cells.ndim > len(IMAGE_SHAPE) + 1:  # numpy stops at 64 levels, lists inside
            raise BadRequest(f"\"inputs\" nests lists {cells.ndim} levels deep or more; images nest 2 or 3 "
                             f"levels: send {EXPECTED}")
        raise BadRequest(f"rows of unequal length: send {EXPECTED}")
    bad = sorted({_json_name(k) for k in kinds if not issubclass(k, numbers.Real) or issubclass(k, (bool, np.bool_))})
    if bad:
        raise BadRequest(f"pixel values must be numbers 0-255; got {' and '.join(bad)}")


def _json_name(kind: type) -> str:
    if kind is type(None):
        return "null"
    if issubclass(kind, (bool, np.bool_)):
        return "true/false"
    if issubclass(kind, str):
        return "text"
    if issubclass(kind, dict):
        return "objects {...}"
    return kind.__name__


def to_images(model_input, max_batch: int = MAX_BATCH) -> np.ndarray:
    """Check a batch and return float32 images of shape (n, 28, 28), or raise BadRequest.

    ``model_input`` is a numpy array or DataFrame in-process, the request's JSON value
    (nested lists, possibly with null, true or text inside) when served.
    """
    if isinstance(model_input, pd.DataFrame):
        model_input = model_input.to_numpy()
    if model_input is None:
        raise BadRequest(f"\"inputs\" is null: send {EXPECTED}")
    if isinstance(model_input, dict):
        return compact_images(model_input, max_batch).astype("float32")  # uint8: in range by construction
    if isinstance(model_input, (str, bytes)):
        raise BadRequest(f"\"inputs\" is text: send {EXPECTED}")
    if isinstance(model_input, (list, tuple)):
        if len(model_input) > max_batch:  # before any per-pixel work
            raise BadRequest(f"{len(model_input)} images in one request; the limit is {max_batch}: split the batch")
        _check_cells(model_input)
    elif isinstance(model_input, np.ndarray) and model_input.dtype == object:
        _check_cells(model_input)
    try:
        x = np.asarray(model_input)
        if x.dtype == object:  # numbers only (checked above), but too large for any numpy number
            x = x.astype(np.float64)
    except OverflowError:  # an integer of hundreds of digits, which no float holds
        raise BadRequest("pixel values must be raw 0-255 grey levels; got an integer too large for any float") from None
    except (ValueError, TypeError) as e:
        raise BadRequest(f"pixel values must be numbers 0-255 ({e})") from None
    if x.dtype.kind == "b":
        raise BadRequest("pixel values must be numbers 0-255; got true/false")
    if x.dtype.kind not in "iuf":
        raise BadRequest(f"pixel values must be numbers 0-255; got values of type {x.dtype}")
    if x.ndim == 0:
        raise BadRequest(f"\"inputs\" is a single number: send {EXPECTED}")
    if x.shape[0] == 0:
        raise BadRequest("the batch is empty: send at least one image")
    if x.ndim == 2 and x.shape[1] == IMAGE_SHAPE[0] * IMAGE_SHAPE[1]:
        x = x.reshape(-1, *IMAGE_SHAPE)
    if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
        raise BadRequest(f"each image must be 28x28 pixels (shape (n, 28, 28) or (n, 784)); got shape {x.shape}")
    if len(x) > max_batch:
        raise BadRequest(f"{len(x)} images in one request; the limit is {max_batch}: split the batch")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise BadRequest("pixel values must be finite numbers 0-255; found NaN or infinity (JSON NaN, Infinity, "
                         "or a number too large for a float, such as 1e400)")
    lo, hi = x.min(), x.max()  # in the sent dtype, before float32 could round 255.00001 or overflow 1e300
    if lo < 0 or hi > 255:
        raise BadRequest(f"pixel values must be raw 0-255 grey levels; got values from {lo:g} to {hi:g}")
    return x.astype("float32")


def format_predictions(probs: np.ndarray) -> pd.DataFrame:
    labels = probs.argmax(axis=1)
    return pd.DataFrame({
        "label": labels.astype("int64"),
        "class_name": [CLASS_NAMES[i] for i in labels],
        "probabilities": [row.astype("float64").tolist() for row in probs],
    })


class FashionClassifier(PythonModel):
    """Raw images in; label, class name and probabilities out."""

    def load_context(self, context):
        import keras

        self.model = keras.saving.load_model(context.artifacts["keras_model"], compile=False)
        config = context.model_config or {}
        self.max_batch = int(config.get("max_batch", MAX_BATCH))
        # Served, `SERVING_MODEL_CONFIG='{"max_batch": ..., "max_body_mb": ...}'` sets these.
        request_body.install(request_body.body_limit(config.get("max_body_mb"), self.max_batch))

    # The hint is what in-process callers pass (a DataFrame or nested lists work too). MLflow
    # neither checks nor converts an ndarray-annotated input; served, model_input is the
    # request's JSON value (see train.model_logging.log_classifier); to_images checks what arrives.
    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:
        x = to_images(model_input, self.max_batch)
        # Keras's predict() builds a dataset pipeline per call, which costs more than a small batch
        # itself; its compiled predict_on_batch does not, and one request is one batch.
        probs = np.concatenate([self.model.predict_on_batch(x[i:i + MAX_BATCH]) for i in range(0, len(x), MAX_BATCH)])
        assert probs.shape[1] == NUM_CLASSES
        return format_predictions(probs)


# ----------------------------------------------------------------------------- image files


def load_image(path: Path | io.BytesIO, name: str = "") -> np.ndarray:
    """Read a PNG/JPEG (a file, or its bytes) as a 28x28 uint8 image in the dataset's convention.

    Rule: convert to grayscale; a non-square image is padded to a square with its border
    colour; anything not 28x28 is resized (Lanczos); and since Fashion-MNIST is light garments
    on a black background, an image whose border is mostly light is inverted.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            im = ImageOps.exif_transpose(opened).convert("L")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise BadRequest(f"{name or path}: not a readable PNG/JPEG image ({e})") from None
    a = np.asarray(im)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    if a.shape != IMAGE_SHAPE:
        h, w = a.shape
        side = max(h, w)
        fill = int(np.median(border))
        square = Image.new("L", (side, side), fill)
        square.paste(im, ((side - w) // 2, (side - h) // 2))
        a = np.asarray(square.resize(IMAGE_SHAPE[::-1], Image.Resampling.LANCZOS))
    if np.median(border) > 127:
        a = 255 - a
    return a.astype(np.uint8)
