"""MLflow's other request formats for the classifier (classifier.request_formats, classifier.pyfunc.frame_pixels), on
in-memory values: the dataframe forms, "instances" and CSV give the images {"inputs"} gives, the pixel
columns in any order with the project's label column dropped, and a malformed request is a BadRequest
that says what was wrong without repeating the request. Served end to end: tests/test_serving.py."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.pyfunc import scoring_server
from mlflow.types import ColSpec, DataType, Schema

from fmnist_exp.classifier import request_body, request_formats
from fmnist_exp.classifier.pyfunc import expected, input_schema, to_images
from fmnist_exp.classifier.request_body import OUTPUT_SCHEMA, BadRequest, BodyTooLarge
from fmnist_exp.data import FASHION_MNIST as FM

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (5, 28, 28), dtype=np.uint8)
PIXELS = [f"pixel{i}" for i in range(1, 785)]


def table(images: np.ndarray = IMAGES, label: bool = True) -> pd.DataFrame:
    """The project's CSV layout (data/files.py): label, pixel1..pixel784."""
    frame = pd.DataFrame(images.reshape(len(images), -1), columns=PIXELS)
    if label:
        frame.insert(0, "label", np.arange(len(images)) % 10)
    return frame


def sent(frame: pd.DataFrame, orient: str) -> dict:
    """The body a pandas user sends, as the server parses it."""
    return json.loads(json.dumps({f"dataframe_{orient}": json.loads(frame.to_json(orient=orient))}))


def images_of(body: dict) -> np.ndarray:
    parsed = request_formats.adapt(body)
    assert parsed is not None and parsed.is_unified_llm_input is False
    return to_images(parsed.data, FM)


def classifier_metadata() -> Model:
    """A classifier's metadata as train.model_logging.log_classifier logs it."""
    signature = ModelSignature(inputs=input_schema(FM), outputs=OUTPUT_SCHEMA)
    signature._is_signature_from_type_hint = True
    return Model(signature=signature)


@pytest.mark.parametrize("frame", [table(), table(label=False), table().iloc[:, RNG.permutation(785)]],
                         ids=["with_label", "pixels_only", "shuffled"])
@pytest.mark.parametrize("orient", ["split", "records"])
def test_dataframe_forms_give_the_images_inputs_gives(frame, orient):
    np.testing.assert_array_equal(images_of(sent(frame, orient)), to_images(IMAGES.tolist(), FM))


def test_instances_csv_and_other_column_names_give_the_same_images():
    want = to_images(IMAGES.tolist(), FM)
    np.testing.assert_array_equal(images_of({"instances": IMAGES.tolist()}), want)
    np.testing.assert_array_equal(images_of({"instances": IMAGES.reshape(5, -1).tolist()}), want)
    np.testing.assert_array_equal(to_images(request_formats.read_csv(io.StringIO(table().to_csv(index=False))), FM),
                                  want)
    zero_based = table(label=False).set_axis([f"pixel{i}" for i in range(784)], axis=1)  # MNIST's Kaggle CSVs
    np.testing.assert_array_equal(to_images(zero_based, FM), want)
    np.testing.assert_array_equal(to_images(pd.DataFrame(IMAGES.reshape(5, -1)), FM), want)  # 0..783, in order
    parsed = request_formats.adapt({"dataframe_split": json.loads(table().to_json(orient="split")), "params": {"a": 1}})
    assert parsed is not None and parsed.params == {"a": 1}


def test_other_bodies_are_left_to_mlflow():
    for body in ({"inputs": []}, {"imgs": []}, {"instances": [], "inputs": []},
                 {"dataframe_split": {}, "instances": []}):
        assert request_formats.adapt(body) is None


def wrong(**changes) -> dict:
    """A one-image split body with ``changes`` to its columns or data."""
    split = json.loads(table(IMAGES[:1]).to_json(orient="split"))
    return {"dataframe_split": {**split, **changes}}


LONG = "x" * 5000
BAD = {
    "split_no_columns": ({"dataframe_split": {"data": [[0] * 784]}},
                         "\"dataframe_split\" must be an object {\"columns\": [\"pixel1\", ...], \"data\""),
    "split_a_list": ({"dataframe_split": [[0] * 784]}, '"dataframe_split" must be an object'),
    "split_unknown_key": (wrong(dtype="int"), '"dataframe_split" must be an object'),
    "split_short_row": (wrong(data=[[0] * 784]), '"dataframe_split": row 0 of "data" has 784 values for 785 columns'),
    "split_column_object": (wrong(columns=[{"a": 1}] * 785), '"dataframe_split": "columns" must be a list of column'),
    "records_an_object": ({"dataframe_records": {"pixel1": 0}}, '"dataframe_records" must be a list of objects'),
    "records_of_lists": ({"dataframe_records": [[0] * 784]}, '"dataframe_records" must be a list of objects'),
    "records_differ": ({"dataframe_records": [{"pixel1": 0, "pixel2": 0}, {"pixel1": 0}]},
                       "\"dataframe_records\": record 1 lacks 'pixel2': every record names the same columns"),
    "text_column": (wrong(columns=["name", *PIXELS], data=[["coat", *[0] * 784]]),
                    "column 'name' is not a pixel column: send 784 pixel columns pixel1..pixel784 (28x28 pixels)"),
    "long_name": (wrong(columns=[LONG, *PIXELS], data=[[0] * 785]), "column 'xxxxxxxxx"),
    "text_pixel": (wrong(data=[[0, "7", *[0] * 783]]), "column 'pixel1' holds text, not pixel values"),
    "bool_pixel": (wrong(data=[[0, True, *[0] * 783]]), "column 'pixel1' holds true/false, not pixel values"),
    "null_pixel": (wrong(data=[[0, None, *[0] * 783]]), "column 'pixel1' has empty cells (null or NaN)"),
    "783_pixels": (wrong(columns=["label", *PIXELS[:-1]], data=[[0] * 784]),
                   "each row must hold 784 pixel values (28x28 pixels), one per column; got 783 columns besides the "
                   "label"),
    "gap": (wrong(columns=["label", *PIXELS[:-1], "pixel999"]),
            "784 pixel columns numbered from pixel1 to pixel999"),
    "twice": (wrong(columns=["label", *PIXELS[:-1], "pixel1"]), "column 'pixel1' appears more than once"),
    "no_rows": (wrong(data=[]), "the batch is empty"),
    "over_255": (wrong(data=[[0, 256, *[0] * 783]]), "pixel values must be raw 0-255 grey levels; got values from 0"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_frames_are_refused_saying_what_was_wrong(case):
    body, message = BAD[case]
    with pytest.raises(BadRequest) as refused:
        images_of(body)
    assert refused.value.reason.startswith(message), refused.value.reason
    assert len(refused.value.reason) < 400 and LONG not in refused.value.reason


@pytest.mark.parametrize(("text", "message"), [
    ("pixel1,pixel2\n1,2\n3,4,5,6\n", "the CSV body is not a table pandas can read (Error tokenizing data"),
    ("", "the CSV body is not a table pandas can read (No columns to parse from file)"),
    ("pixel1,pixel2\n1,2,3\n", "the CSV's rows hold more values than its header row names"),
])
def test_csv_that_is_not_a_table_is_refused(text, message):
    with pytest.raises(BadRequest, match=message.replace("(", r"\(").replace(")", r"\)")):
        request_formats.read_csv(io.StringIO(text))


def test_csv_with_its_index_written_names_the_fix():
    with pytest.raises(BadRequest, match=r"column 'Unnamed: 0' is not a pixel column.*df.to_csv\(index=False\)"):
        to_images(request_formats.read_csv(io.StringIO(table().to_csv())), FM)


def test_mlflow_parsers_adapted_for_our_classifier_only(monkeypatch):
    """The replacements as MLflow calls them: `mlflow models predict` hands the input file over as text; a
    model that is not our classifier (here a list[...]-hinted one) gets MLflow's parse and refusal."""
    # this test's install from MLflow's own parsers, undone with the attributes below: an earlier test in this
    # process may have installed the replacements already (`serve` in-process does)
    parsers = ("_parse_json_data", "parse_csv_input")
    mlflows = {name: request_formats._MLFLOW.get(name) or getattr(scoring_server, name) for name in parsers}
    monkeypatch.setattr(request_formats, "_MLFLOW", {})
    for name in parsers:
        monkeypatch.setattr(scoring_server, name, mlflows[name])
    mlflow_parse = scoring_server._parse_json_data
    limits = request_body.Limits(2000, FM.pixels, expected(FM))
    assert request_formats.install(limits) and request_formats.install()  # the second keeps MLflow's parsers
    assert scoring_server._parse_json_data is request_formats.parse_json_data
    assert request_formats._MLFLOW["_parse_json_data"] is mlflow_parse

    ours = classifier_metadata()
    split = json.dumps(sent(table(IMAGES[:1], label=False), "split"))
    parsed = scoring_server._parse_json_data(data=json.dumps({"inputs": [[1, 2]]}), metadata=ours,
                                             input_schema=ours.get_input_schema())
    assert parsed.data == [[1, 2]]  # MLflow's own parse of {"inputs"}
    with pytest.raises(BodyTooLarge, match="the limit is 2,000 bytes"):  # a one-image split is larger
        scoring_server._parse_json_data(data=split, metadata=ours, input_schema=ours.get_input_schema())
    request_formats.install(request_body.Limits(2**20, FM.pixels, expected(FM)))
    with pytest.raises(BadRequest, match="the JSON body nests arrays or objects about"):
        scoring_server._parse_json_data(data='{"inputs": ' + "[" * 5000 + "]" * 5000 + "}", metadata=ours,
                                        input_schema=None)
    parsed = scoring_server._parse_json_data(data=split, metadata=ours, input_schema=ours.get_input_schema())
    np.testing.assert_array_equal(to_images(parsed.data, FM), IMAGES[:1])
    csv = scoring_server.parse_csv_input(csv_input=io.StringIO(table().to_csv(index=False)),
                                         schema=ours.get_input_schema())
    np.testing.assert_array_equal(to_images(csv, FM), IMAGES)

    hinted = ModelSignature(inputs=Schema([ColSpec(DataType.long)]))
    hinted._is_signature_from_type_hint = True
    with pytest.raises(MlflowException, match="Request payload must be a dictionary with 'inputs' key"):
        scoring_server._parse_json_data(data=split, metadata=Model(signature=hinted), input_schema=hinted.inputs)
    unmarked = Model(signature=ModelSignature(inputs=input_schema(FM), outputs=OUTPUT_SCHEMA))
    assert not request_formats.is_classifier(unmarked)
    columns = Schema([ColSpec(DataType.long, "a")])
    assert scoring_server.parse_csv_input(csv_input=io.StringIO("a\n1\n"), schema=columns)["a"].tolist() == [1]
