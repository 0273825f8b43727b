"""The servable classifier: a pyfunc around the Keras model that takes raw images of its dataset
and answers label, class name and the class probabilities.

Requests are checked here, with messages that say what was wrong; MLflow's scoring server
turns these errors into HTTP 400 and keeps serving. For a dataset of HxW grayscale images
(Fashion-MNIST: 28x28):

    {"inputs": [[[0, 0, ..., 255], ...]]}       # (n, H, W) raw pixels 0-255; (n, H, W, 1) too
    {"inputs": [[0, 0, ..., 255]]}               # (n, H*W) flattened rows also work
    {"inputs": {"uint8_b64": "AAAA..."}}         # compact: base64 of n*H*W bytes, one per pixel
    {"inputs": {"png_b64": ["iVBORw0...", ...]}} # compact: base64 PNG/JPEG files, one per image

and for colour images (n, H, W, C), (n, H*W*C) and n*H*W*C bytes. The model knows its dataset
(``dataset.json`` beside the Keras model: data.DatasetInfo); a model logged before datasets were
values has none and is Fashion-MNIST's.

The compact forms ride inside MLflow's own JSON, so the stock `mlflow models serve` takes them
unchanged: a batch of 1,000 images is one 1 MB string to parse instead of 784,000 JSON numbers
(3.1 MB) to parse and check one by one, which was what bound served throughput.

The signature states the image shape as a tensor schema, but the model is marked as one whose
inputs it checks itself (see ``train.model_logging.log_classifier``): MLflow then enforces no
schema and the scoring server hands predict() the request's JSON value as it came, so the other
accepted shapes are not rejected first, and a JSON ``true`` or ``null`` among the pixels, or rows
of unequal length, can be told apart and named instead of being turned into 1, an object array
or a numpy error first. What fails before predict() runs (a body too large, nested too deep, or
not JSON) is refused by the checks request_body.py puts in front of the scoring server when it
loads the classifier. MLflow's other request formats, ``{"dataframe_split": ...}``,
``{"dataframe_records": ...}``, ``{"instances": ...}`` and CSV, reach predict() as a DataFrame of pixel
columns or as the rows themselves through request_formats.py, which the classifier installs when MLflow
serves it (or runs `mlflow models predict`): a DataFrame is checked by :func:`frame_pixels`, then as any batch.

The classifier is logged as code (classifier_model.py), the way MLflow recommends, so nothing
is unpickled on load.
"""

from __future__ import annotations

import base64
import binascii
import io
import numbers
import re
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel
from mlflow.types import Schema, TensorSpec

from ..data import FASHION_MNIST, DataError, DatasetInfo, decode_image
from . import request_body
from .request_body import BadRequest, column_name

DATASET_ARTIFACT = "dataset"  # the pyfunc artifact that holds the model's DatasetInfo as JSON
# Images per request; larger batches are refused, not truncated. In-process users can raise it:
# mlflow.pyfunc.load_model(uri, model_config={"max_batch": 100_000}).
MAX_BATCH = 1024
# The keys a loader may set (MLflow drops a key the logged model lacks): max_body_mb, served only,
# caps a request's body; None gives 32 KiB per image of max_batch (32 MiB for 1,024 images).
MODEL_CONFIG = {"max_batch": MAX_BATCH, "max_body_mb": None}


UINT8_B64, PNG_B64 = "uint8_b64", "png_b64"  # the compact request keys inside "inputs"
# A DataFrame (CSV, dataframe_split/records) in the project's CSV layout (data/files.py): a label column,
# ignored, and pixel1..pixelN, taken in N's order (pixel0..pixelN-1 too, as MNIST's Kaggle CSVs number them).
LABEL_COLUMN = "label"
PIXEL_COLUMN = re.compile(r"pixel(\d{1,6})")  # a longer number is no pixel (and no int() of 5,000 digits)


def input_schema(info: DatasetInfo) -> Schema:
    """What the signature says the model takes: raw integer pixels 0-255 in the dataset's layout (as the
    input example holds them; floats 0-255 and the other shapes of :func:`expected` are taken too)."""
    return Schema([TensorSpec(np.dtype("int64"), (-1, *info.array_shape))])


def expected(info: DatasetInfo) -> str:
    """The accepted tensor shapes, as a refusal states them."""
    h, w, c = info.shape
    if c == 1:
        return f"images of shape (n, {h}, {w}), (n, {h}, {w}, 1) or (n, {h * w}) with raw pixel values 0-255"
    return f"images of shape (n, {h}, {w}, {c}) or (n, {h * w * c}) with raw pixel values 0-255"


def compact_forms(info: DatasetInfo) -> str:
    return (f'{{"inputs": {{"{UINT8_B64}": "<base64 of n*{info.pixels} bytes>"}}}} '
            f'or {{"inputs": {{"{PNG_B64}": ["<base64 PNG>", ...]}}}}')


def compact_request(images: np.ndarray) -> dict:
    """The compact JSON body for a batch of uint8 images (n, ...) in the model's layout: what a client sends."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim < 2:
        raise ValueError(f"compact_request takes a batch of uint8 images, shape (n, H, W) or (n, H*W) (colour: "
                         f"(n, H, W, C)); got {images.dtype} {images.shape}: convert 0-255 pixels with "
                         ".astype(np.uint8)")
    return {"inputs": {UINT8_B64: base64.b64encode(images.tobytes()).decode("ascii")}}


def _b64(text, where: str) -> bytes:
    if not isinstance(text, str):
        raise BadRequest(f"{where} must be a base64 string; got {_json_name(type(text))}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"{where} is not valid base64 ({e})") from None


def compact_images(model_input: dict, info: DatasetInfo, max_batch: int = MAX_BATCH) -> np.ndarray:
    """Decode a compact request's "inputs" object into uint8 images (n, *info.array_shape), or raise BadRequest."""
    pixels = info.pixels
    if list(model_input) == [UINT8_B64]:
        raw = _b64(model_input[UINT8_B64], UINT8_B64)
        n, extra = divmod(len(raw), pixels)
        if extra:
            raise BadRequest(f"{UINT8_B64} holds {len(raw)} bytes, not a multiple of {pixels}: send {pixels} bytes "
                             f"({_size(info)}, one byte each, row by row) per image")
        images = np.frombuffer(raw, dtype=np.uint8).reshape(n, *info.array_shape)
    elif list(model_input) == [PNG_B64]:
        files = model_input[PNG_B64]
        if not isinstance(files, list):
            raise BadRequest(f"{PNG_B64} must be a list of base64 strings, one PNG/JPEG file each")
        if len(files) > max_batch:
            raise BadRequest(f"{len(files)} images in one request; the limit is {max_batch}: split the batch")
        images = np.stack([load_image(io.BytesIO(_b64(f, f"{PNG_B64}[{i}]")), info, f"{PNG_B64}[{i}]")
                           for i, f in enumerate(files)]) if files else np.zeros((0, *info.array_shape), np.uint8)
    else:
        raise BadRequest(f'"inputs" is an object with keys {sorted(model_input)}: send {compact_forms(info)}, '
                         f"or a tensor {{\"inputs\": [...]}} with {expected(info)}")
    if not len(images):
        raise BadRequest("the batch is empty: send at least one image")
    if len(images) > max_batch:
        raise BadRequest(f"{len(images)} images in one request; the limit is {max_batch}: split the batch")
    return images


def _check_cells(model_input, info: DatasetInfo) -> None:
    """Refuse nested lists (or object arrays) that hold anything but numbers, naming what."""
    try:
        cells = np.array(model_input, dtype=object)
    except ValueError:  # ragged at a depth numpy cannot even hold as objects
        cells = None
    kinds = set() if cells is None else {type(v) for v in cells.ravel()}
    if cells is None or kinds & {list, tuple, np.ndarray}:
        if cells is not None and cells.ndim > 4:  # numpy stops at 64 levels, lists inside
            raise BadRequest(f"\"inputs\" nests lists {cells.ndim} levels deep or more; images nest 2 to 4 "
                             f"levels: send {expected(info)}")
        raise BadRequest(f"rows of unequal length: send {expected(info)}")
    bad = _not_numbers(kinds)
    if bad:
        raise BadRequest(f"pixel values must be numbers 0-255; got {bad}")


def _not_numbers(kinds: set[type]) -> str:
    """The kinds of value among ``kinds`` that are not numbers, as JSON names them ("text and null"), or ""."""
    return " and ".join(sorted({_json_name(k) for k in kinds
                                if not issubclass(k, numbers.Real) or issubclass(k, (bool, np.bool_))}))


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


def frame_pixels(frame: pd.DataFrame, info: DatasetInfo) -> np.ndarray:
    """A DataFrame's pixel values, one row per image (n, info.pixels), or BadRequest naming the column at fault.

    One column per pixel value, row by row. A ``label`` column is dropped (a test CSV is sent as it is);
    columns named pixel<N> are taken in N's order, whatever order they come in; columns named otherwise
    are taken in theirs (pandas' 0..N-1 for a DataFrame of an array). Refused: a duplicate name, another
    column beside pixel<N> columns, gaps in the numbering, the wrong number of columns, and a column that
    holds text, true/false or empty cells.
    """
    n = info.pixels
    layout = f"{n} pixel columns pixel1..pixel{n} ({_size(info)}), and optionally {LABEL_COLUMN!r}"
    if not frame.columns.is_unique:
        raise BadRequest(f"column {column_name(frame.columns[frame.columns.duplicated()][0])} appears more than "
                         f"once: send {layout}")
    columns = [c for c in frame.columns if c != LABEL_COLUMN]
    numbered = {c: int(m[1]) for c in columns if isinstance(c, str) and (m := PIXEL_COLUMN.fullmatch(c))}
    if numbered:
        other = next((c for c in columns if c not in numbered), None)
        if other is not None:
            index = " (a CSV's unnamed first column is its index: write it with df.to_csv(index=False))" \
                if str(other).startswith("Unnamed:") else ""
            raise BadRequest(f"column {column_name(other)} is not a pixel column: send {layout}{index}")
        columns.sort(key=numbered.__getitem__)
        first, last = numbered[columns[0]], numbered[columns[-1]]
        if first not in (0, 1) or last - first != len(columns) - 1:
            raise BadRequest(f"{len(columns)} pixel columns numbered from pixel{first} to pixel{last}: send {layout}")
    if len(columns) != n:
        raise BadRequest(f"each row must hold {n} pixel values ({_size(info)}), one per column; got {len(columns)} "
                         f"columns{' besides the label' if LABEL_COLUMN in frame.columns else ''}: send {layout}")
    pixels = frame[columns]
    for name, dtype in pixels.dtypes.items():
        if dtype.kind not in "iuf":  # text, true/false, or objects: numbers past int64 pass on to to_images
            bad = _not_numbers({type(v) for v in pixels[name] if v is not None})  # null: an empty cell, below
            if bad:
                raise BadRequest(f"column {column_name(name)} holds {bad}, not pixel values: send numbers 0-255")
    empty = pixels.isna().any()
    if empty.any():
        raise BadRequest(f"column {column_name(empty.idxmax())} has empty cells (null or NaN): send a number 0-255 "
                         "for every pixel")
    return pixels.to_numpy()


def to_images(model_input, info: DatasetInfo, max_batch: int = MAX_BATCH) -> np.ndarray:
    """Check a batch and return float32 images of shape (n, *info.array_shape), or raise BadRequest.

    ``model_input`` is a numpy array or DataFrame in-process, the request's JSON value
    (nested lists, possibly with null, true or text inside) when served, or a DataFrame (CSV, the
    dataframe forms: request_formats.py).
    """
    want = expected(info)
    if isinstance(model_input, pd.DataFrame):
        model_input = frame_pixels(model_input, info)
    if model_input is None:
        raise BadRequest(f"\"inputs\" is null: send {want}")
    if isinstance(model_input, dict):
        return compact_images(model_input, info, max_batch).astype("float32")  # uint8: in range by construction
    if isinstance(model_input, (str, bytes)):
        raise BadRequest(f"\"inputs\" is text: send {want}")
    if isinstance(model_input, (list, tuple)):
        if len(model_input) > max_batch:  # before any per-pixel work
            raise BadRequest(f"{len(model_input)} images in one request; the limit is {max_batch}: split the batch")
        _check_cells(model_input, info)
    elif isinstance(model_input, np.ndarray) and model_input.dtype == object:
        _check_cells(model_input, info)
    try:
        x = np.asarray(model_input)
        if x.dtype == object:  # numbers only (checked above), but too large for any numpy number
            x = x.astype(np.float64)
    except OverflowError:  # an integer of hundreds of digits, which no float holds
        raise BadRequest(f"pixel values must be raw 0-255 {_levels(info)}; got an integer too large for any "
                         "float") from None
    except (ValueError, TypeError) as e:
        raise BadRequest(f"pixel values must be numbers 0-255 ({e})") from None
    if x.dtype.kind == "b":
        raise BadRequest("pixel values must be numbers 0-255; got true/false")
    if x.dtype.kind not in "iuf":
        raise BadRequest(f"pixel values must be numbers 0-255; got values of type {x.dtype}")
    if x.ndim == 0:
        raise BadRequest(f"\"inputs\" is a single number: send {want}")
    if x.shape[0] == 0:
        raise BadRequest("the batch is empty: send at least one image")
    x = _as_layout(x, info)
    if len(x) > max_batch:
        raise BadRequest(f"{len(x)} images in one request; the limit is {max_batch}: split the batch")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise BadRequest("pixel values must be finite numbers 0-255; found NaN or infinity (JSON NaN, Infinity, "
                         "or a number too large for a float, such as 1e400)")
    lo, hi = x.min(), x.max()  # in the sent dtype, before float32 could round 255.00001 or overflow 1e300
    if lo < 0 or hi > 255:
        raise BadRequest(f"pixel values must be raw 0-255 {_levels(info)}; got values from {lo:g} to {hi:g}")
    return x.astype("float32")


def _levels(info: DatasetInfo) -> str:
    return "grey levels" if info.channels == 1 else "colour levels"


def _as_layout(x: np.ndarray, info: DatasetInfo) -> np.ndarray:
    """``x`` in the model's layout (n, *info.array_shape): flattened rows unfolded, a grayscale batch's
    trailing channel axis of 1 dropped; any other shape refused, naming the image size."""
    if x.ndim == 2 and x.shape[1] == info.pixels:
        return x.reshape(-1, *info.array_shape)
    if info.channels == 1 and x.ndim == 4 and x.shape[1:] == info.shape:
        return x.reshape(-1, *info.array_shape)
    if x.shape[1:] != info.array_shape:
        raise BadRequest(f"each image must be {_size(info)} ({expected(info)}); got shape {x.shape}")
    return x


def _size(info: DatasetInfo) -> str:
    """One image's size as a refusal names it: "28x28 pixels", "32x32 pixels of 3 channels"."""
    h, w, c = info.shape
    return f"{h}x{w} pixels" + (f" of {c} channels" if c > 1 else "")


def format_predictions(probs: np.ndarray, info: DatasetInfo) -> pd.DataFrame:
    labels = probs.argmax(axis=1)
    return pd.DataFrame({
        "label": labels.astype("int64"),
        "class_name": [info.class_names[i] for i in labels],
        "probabilities": [row.astype("float64").tolist() for row in probs],
    })


def read_info(context) -> DatasetInfo:
    """The dataset a logged classifier was trained on: its ``dataset`` artifact, else Fashion-MNIST (a
    model logged before datasets were values)."""
    import json

    path = (context.artifacts or {}).get(DATASET_ARTIFACT)
    if path is None:
        return FASHION_MNIST
    with open(path) as f:
        return DatasetInfo.from_json(json.load(f))


class ImageClassifier(PythonModel):
    """Raw images in; label, class name and probabilities out, as the model's dataset names them."""

    def load_context(self, context):
        import keras

        self.model = keras.saving.load_model(context.artifacts["keras_model"], compile=False)
        self.info = read_info(context)
        config = context.model_config or {}
        self.max_batch = int(config.get("max_batch", MAX_BATCH))
        # Served, `SERVING_MODEL_CONFIG='{"max_batch": ..., "max_body_mb": ...}'` sets these.
        pixels = self.info.pixels
        self.request_limits = request_body.Limits(
            request_body.body_limit(config.get("max_body_mb"), self.max_batch, pixels), pixels, expected(self.info))
        if request_body.in_scoring_server():  # loaded in-process, requests are Python values, not bodies
            request_body.install(self.request_limits)
        from . import request_formats  # MLflow's scoring server with it: only where MLflow serves

        if request_formats.parsed_by_mlflow():  # MLflow's parsers take only {"inputs": ...} for this model
            request_formats.install(self.request_limits)

    # The hint is what in-process callers pass (a DataFrame or nested lists work too). MLflow
    # neither checks nor converts an ndarray-annotated input; served, model_input is the
    # request's JSON value (see train.model_logging.log_classifier); to_images checks what arrives.
    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:
        x = to_images(model_input, self.info, self.max_batch)
        # Keras's predict() builds a dataset pipeline per call, which costs more than a small batch
        # itself; its compiled predict_on_batch does not, and one request is one batch.
        probs = np.concatenate([self.model.predict_on_batch(x[i:i + MAX_BATCH]) for i in range(0, len(x), MAX_BATCH)])
        assert probs.shape[1] == self.info.num_classes
        return format_predictions(probs, self.info)


# ----------------------------------------------------------------------------- image files


def load_image(path: Path | io.BytesIO, info: DatasetInfo, name: str = "") -> np.ndarray:
    """Read a PNG/JPEG (a file, or its bytes) as one uint8 image of ``info``'s size and channels, in the
    dataset's convention.

    A folder dataset's images (background "as-is") are decoded exactly as its loader read the
    training images (data.decode_image: resized to the size, converted to the channels). For
    datasets that came as arrays of objects on a dark background (Fashion-MNIST, digits; background
    "dark"): convert to grayscale (or RGB); an image of another aspect ratio is padded to the
    dataset's with its border colour; anything not the dataset's size is resized (Lanczos); and a
    grayscale image whose border is mostly light is inverted, to light on dark.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    where = name or str(path)
    if info.background == "as-is":
        try:
            return decode_image(path, info.shape, where)
        except DataError as e:
            raise BadRequest(str(e)) from None
    mode = "L" if info.channels == 1 else "RGB"
    try:
        with Image.open(path) as opened:
            im = ImageOps.exif_transpose(opened).convert(mode)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise BadRequest(f"{where}: not a readable PNG/JPEG image ({e})") from None
    a = np.asarray(im)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    target_h, target_w = info.shape[:2]
    if a.shape[:2] != (target_h, target_w):
        h, w = a.shape[:2]
        # the smallest canvas of the dataset's aspect ratio that holds the image (a square for 28x28)
        scale = max(h / target_h, w / target_w)
        canvas_h, canvas_w = max(h, round(target_h * scale)), max(w, round(target_w * scale))
        fill = tuple(int(v) for v in np.median(border.reshape(len(border), -1), axis=0))
        canvas = Image.new(mode, (canvas_w, canvas_h), fill[0] if mode == "L" else fill)
        canvas.paste(im, ((canvas_w - w) // 2, (canvas_h - h) // 2))
        a = np.asarray(canvas.resize((target_w, target_h), Image.Resampling.LANCZOS))
    if info.channels == 1 and np.median(border) > 127:
        a = 255 - a
    return a.astype(np.uint8)
