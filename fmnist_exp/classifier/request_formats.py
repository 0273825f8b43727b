"""MLflow's other request formats for the served classifier: ``{"dataframe_split": ...}``,
``{"dataframe_records": ...}``, ``{"instances": ...}`` and CSV, answered as ``{"inputs": ...}`` is.

The classifier's signature is marked as one whose inputs the model checks itself
(train.model_logging.log_classifier); unmarked, MLflow would enforce the tensor schema and refuse the
other image shapes and the compact forms. MLflow's scoring server reads the mark as "a type-hinted
model" and then refuses every JSON key but "inputs" (``_parse_json_data``), and it builds a CSV's column
types from the tensor schema, which it cannot ("TensorSpec only supports numpy types", in
``parse_csv_input``). So :func:`install` replaces those two parsers, module attributes of MLflow's
scoring server that its request handler and `mlflow models predict` both look up when called (no
setting or hook exists). For our classifiers only, the replacements turn the three JSON forms into
what predict() takes (the rows themselves for "instances", a DataFrame for the dataframe forms); a
CSV is read without the schema's types for any model with a tensor schema (the CSV parser is not
told which model it is, and MLflow's own fails for all of them); every other body goes to MLflow's
parser unchanged, so
``{"inputs"}`` and MLflow's own refusals keep its behaviour and words. predict() (classifier.to_images)
then checks every form alike.

Served by `mlflow models serve`, a JSON body arrives here already parsed by request_body's guard.
`mlflow models predict` has no HTTP body and no guard: it hands its input file over as text, which is
checked here against the model's body limit and parsed with the same guarded parse.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import pandas as pd
from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT
from mlflow.pyfunc import scoring_server
from mlflow.pyfunc.scoring_server import (
    DF_RECORDS,
    DF_SPLIT,
    INPUTS,
    INSTANCES,
    SERVING_PARAMS_KEY,
    SUPPORTED_FORMATS,
    ParsedJsonInput,
)

from . import request_body
from .request_body import OUTPUT_SCHEMA, BadRequest, column_name

_logger = logging.getLogger(__name__)
# MLflow's parsers (kept from the first install, so a second one replaces rather than stacks) and the
# limits of the model loaded for `mlflow models predict`, the one model of that process.
_MLFLOW: dict[str, Any] = {}
_PARAMETERS = {"_parse_json_data": ["data", "metadata", "input_schema"], "parse_csv_input": ["csv_input", "schema"]}
SPLIT_KEYS = {"columns", "data", "index"}


def install(limits: request_body.Limits | None = None) -> bool:
    """Let MLflow's scoring server (and `mlflow models predict`) take the other request formats for our
    classifiers; return whether it does. ``limits``: those of the model `mlflow models predict` loaded,
    for its input file. Idempotent: a later call changes nothing but the limits."""
    for name, parameters in _PARAMETERS.items():
        original = _MLFLOW.setdefault(name, getattr(scoring_server, name, None))
        if original is None or list(inspect.signature(original).parameters)[:len(parameters)] != parameters:
            _logger.warning("this MLflow's scoring server has no %s(%s): serving {\"inputs\": ...} only (see "
                            "fmnist_exp.classifier.request_formats)", name, ", ".join(parameters))
            return False
    if limits is not None:
        _MLFLOW["limits"] = limits
    scoring_server._parse_json_data = parse_json_data
    scoring_server.parse_csv_input = parse_csv_input
    return True


def parsed_by_mlflow() -> bool:
    """Whether this process's requests reach the model through MLflow's parsers: a scoring server
    (`mlflow models serve`), or `mlflow models predict`, which loads the model with MLflow's serving flag set."""
    return request_body.in_scoring_server() or bool(_MLFLOW_IS_IN_SERVING_ENVIRONMENT.get())


def is_classifier(metadata: Any) -> bool:
    """Whether a model (its MLflow ``Model`` metadata) is one of our classifiers: a tensor input, our
    output columns, and the mark that it checks its inputs itself. MLflow marks only list[...]-hinted
    models so, and their inputs are columns, never a tensor."""
    signature = getattr(metadata, "signature", None)
    return (signature is not None and getattr(signature, "_is_signature_from_type_hint", False) is True
            and signature.inputs is not None and bool(signature.inputs.is_tensor_spec())
            and signature.outputs == OUTPUT_SCHEMA)


def parse_json_data(data, metadata, input_schema) -> ParsedJsonInput:
    """MLflow's ``_parse_json_data``, which for our classifiers also takes the dataframe forms and "instances"."""
    original = _MLFLOW["_parse_json_data"]
    if not is_classifier(metadata):
        return original(data, metadata, input_schema)
    if isinstance(data, (str, bytes)):  # `mlflow models predict`'s input file, not a guarded request
        data = request_body.parse_within(data, _MLFLOW.get("limits"))
    parsed = adapt(data) if isinstance(data, dict) else None
    return parsed if parsed is not None else original(data, metadata, input_schema)


def adapt(body: dict) -> ParsedJsonInput | None:
    """What predict() takes for a body in one of the three formats (the rows themselves for "instances",
    a DataFrame for the dataframe forms) and its "params"; None for any other body, MLflow's to answer.
    Keys other than MLflow's formats and "params" are ignored, as MLflow does."""
    keys = set(body) & SUPPORTED_FORMATS
    if len(keys) != 1 or keys == {INPUTS}:
        return None
    (key,) = keys
    value = body[key]
    data = value if key == INSTANCES else split_frame(value) if key == DF_SPLIT else records_frame(value)
    return ParsedJsonInput(data, body.get(SERVING_PARAMS_KEY), False)


def split_frame(value) -> pd.DataFrame:
    """A ``dataframe_split`` object as a DataFrame, or BadRequest saying what is wrong with it."""
    shape = ('{"columns": ["pixel1", ...], "data": [[0, ...], ...]} (and optionally "index"), as pandas\' '
             'df.to_json(orient="split") writes it')
    if not isinstance(value, dict):
        raise BadRequest(f'"{DF_SPLIT}" must be an object {shape}; got {_kind(value)}')
    if not {"columns", "data"} <= set(value) or not set(value) <= SPLIT_KEYS:
        raise BadRequest(f'"{DF_SPLIT}" must be an object {shape}; got one with keys {_keys(value)}')
    columns, rows = value["columns"], value["data"]
    if not isinstance(columns, list) or not all(isinstance(c, (str, int)) and not isinstance(c, bool)
                                                for c in columns):
        raise BadRequest(f'"{DF_SPLIT}": "columns" must be a list of column names, one per pixel')
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        raise BadRequest(f'"{DF_SPLIT}": "data" must be a list of rows, one list of pixel values per image')
    # pandas would pad a short row with NaN
    short = next((i for i, r in enumerate(rows) if len(r) != len(columns)), None)
    if short is not None:
        raise BadRequest(f'"{DF_SPLIT}": row {short} of "data" has {len(rows[short])} values for '
                         f'{len(columns)} columns')
    return _frame(rows, columns, DF_SPLIT)


def records_frame(value) -> pd.DataFrame:
    """A ``dataframe_records`` list as a DataFrame, or BadRequest saying what is wrong with it."""
    shape = ('a list of objects {"pixel1": 0, ...}, one per image, as pandas\' df.to_json(orient="records") '
             'writes it')
    if not isinstance(value, list):
        raise BadRequest(f'"{DF_RECORDS}" must be {shape}; got {_kind(value)}')
    odd = next((i for i, r in enumerate(value) if not isinstance(r, dict)), None)
    if odd is not None:
        raise BadRequest(f'"{DF_RECORDS}" must be {shape}; record {odd} is {_kind(value[odd])}')
    columns = list(value[0]) if value else []
    for i, record in enumerate(value):
        if record.keys() != value[0].keys():  # pandas would fill a missing field with NaN
            missing, extra = value[0].keys() - record.keys(), record.keys() - value[0].keys()
            what = (f"lacks {column_name(min(missing))}" if missing
                    else f"has {column_name(min(extra))}, which record 0 lacks")
            raise BadRequest(f'"{DF_RECORDS}": record {i} {what}: every record names the same columns')
    return _frame([[r[c] for c in columns] for r in value], columns, DF_RECORDS)


def _frame(rows: list, columns: list, key: str) -> pd.DataFrame:
    try:
        return pd.DataFrame(rows, columns=columns)
    except (ValueError, TypeError) as e:
        raise BadRequest(f'"{key}" is not a table pandas can read ({_short(e)})') from None


def parse_csv_input(csv_input, schema=None):
    """MLflow's ``parse_csv_input``, which reads a CSV without the column types a tensor schema cannot give."""
    if schema is None or not schema.is_tensor_spec():
        return _MLFLOW["parse_csv_input"](csv_input=csv_input, schema=schema)
    return read_csv(csv_input)


def read_csv(source) -> pd.DataFrame:
    """A CSV body (text, a stream or a path) as a DataFrame, or BadRequest saying why it is not one."""
    layout = ("send a header row (pixel1,pixel2,..., and optionally label) and one row of numbers per image, as "
              "df.to_csv(index=False) writes them")
    try:
        frame = pd.read_csv(source)
    except ValueError as e:  # pandas' ParserError and EmptyDataError among them
        raise BadRequest(f"the CSV body is not a table pandas can read ({_short(e)}): {layout}") from None
    if not isinstance(frame.index, pd.RangeIndex):  # pandas takes a first field the header lacks as the index
        raise BadRequest(f"the CSV's rows hold more values than its header row names: {layout}")
    return frame


def _short(error: Exception, most: int = 160) -> str:
    """An error's text, cut short: a parser's message may quote the input."""
    text = str(error).strip()
    return text if len(text) <= most else text[:most] + "..."


def _keys(value: dict) -> str:
    names = sorted(value, key=str)
    return ", ".join(column_name(k) for k in names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def _kind(value) -> str:
    """A JSON value's kind, as a refusal names it."""
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "text", bool: "true/false"}.get(type(value), "a number")
