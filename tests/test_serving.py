"""The registered classifier served by the real `mlflow models serve` on a loopback port:
answers real test images exactly as the offline pyfunc does, in JSON pixels, in the compact
base64 forms and in MLflow's other request formats (dataframe_split/records, instances, CSV; by
`mlflow models predict` too) alike, and refuses bad requests with a 4xx that says what was wrong
while it keeps answering: hostile bodies too (nested 20,000 levels deep, numbers past any float,
50 MB), which MLflow's scoring server itself would answer with a 500 or parse for seconds."""

from __future__ import annotations

import base64
import http.client
import io
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import MLFLOW, REPO, cli, free_port, running_server, store_at, subprocess_env
from PIL import Image

from fmnist_exp import data as D
from fmnist_exp import params as P
from fmnist_exp.classifier import pyfunc as serving
from fmnist_exp.classifier import request_body
from fmnist_exp.commands import tune

# one test process for the whole file: its module-scoped fixtures are made once (pyproject's --dist loadgroup)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serving")]
CHAMPION = "models:/fmnist-classifier@champion"


@pytest.fixture(scope="module")
def store(tmp_path_factory, migrated_store):
    """A store with a champion from a 1-trial MLP study (real tune, tiny budget, no reference: serving reads
    only the champion). Fashion-MNIST: its own images, class names and the example ankle boot are served."""
    root = tmp_path_factory.mktemp("serve")
    with store_at(root, migrated_store) as uri:
        study = root / "serve.yaml"
        study.write_text("description: serving fixture\nfamily: mlp\nfixed: {hidden_units: '64'}\n"
                         "space:\n  dropout: {type: float, low: 0.0, high: 0.1}\nreference: off\n")
        summary = tune.run(P.tune_args({"family": "mlp", "study": str(study), "n_trials": 1, "epochs": 2,
                                        "train_samples": 3000})).flat()
        yield {"root": root, "uri": uri, "summary": summary}


@pytest.fixture(scope="module")
def server(store):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [MLFLOW, "models", "serve", "-m", CHAMPION, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
           "-w", "1"]
    env = {**subprocess_env(), "MLFLOW_TRACKING_URI": store["uri"]}
    with running_server(cmd, base + "/ping", cwd=store["root"], env=env):
        yield base


def post(base: str, body, content_type: str | None = "application/json") -> tuple[int, dict]:
    """POST to /invocations (with no Content-Type header when ``content_type`` is None); a non-JSON
    answer (MLflow's 415) comes back as {"message": its text}."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    try:
        conn.request("POST", "/invocations", raw, {} if content_type is None else {"Content-Type": content_type})
        answer = conn.getresponse()
        status, text = answer.status, answer.read()
    finally:
        conn.close()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, {"message": text.decode(errors="replace")}


def test_served_answers_equal_offline_and_logged_accuracy(server, store, dataset):
    """All 10,000 Fashion-MNIST test images, served, answer as the logged model offline and reach its logged
    accuracy. The first batch goes as JSON pixels, the rest as compact base64 bytes (which
    test_compact_requests_answer_as_json_does shows answer exactly as JSON): 7.8M numbers need not be
    JSON-encoded and parsed to show the server's answers equal."""
    offline = mlflow.pyfunc.load_model(CHAMPION)
    labels = []
    for i in range(0, 10_000, serving.MAX_BATCH):
        batch = dataset.x_test[i:i + serving.MAX_BATCH]
        status, body = post(server, {"inputs": batch.tolist()} if i == 0 else serving.compact_request(batch))
        assert status == 200, body
        preds = body["predictions"]
        assert len(preds) == len(batch)
        local = offline.predict(batch)
        assert [p["label"] for p in preds] == local["label"].tolist()
        assert [p["class_name"] for p in preds] == local["class_name"].tolist()
        np.testing.assert_allclose([p["probabilities"] for p in preds], np.stack(local["probabilities"]), atol=1e-6)
        labels += [p["label"] for p in preds]
    served_acc = float((np.array(labels) == dataset.y_test).mean())
    assert served_acc == pytest.approx(store["summary"]["test_accuracy"], abs=1e-4)


def test_flat_rows_and_example_file(server, dataset):
    status, body = post(server, {"inputs": dataset.x_test[:3].reshape(3, 784).tolist()})
    assert status == 200 and len(body["predictions"]) == 3
    example = json.loads((REPO / "examples" / "request.json").read_text())
    status, body = post(server, example)
    assert status == 200
    assert body["predictions"][0]["class_name"] == D.FASHION_CLASSES[dataset.y_test[0]]
    assert len(body["predictions"][0]["probabilities"]) == 10


def one_image(pixel=0) -> list:
    """A blank image as JSON lists, with ``pixel`` at row 3, column 4."""
    image = np.zeros((1, 28, 28), dtype=int).tolist()
    image[0][3][4] = pixel
    return image


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def png(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return b64(buf.getvalue())


def test_compact_requests_answer_as_json_does(server, dataset):
    """The same images as JSON pixels, as base64 uint8 bytes and as base64 PNGs get the same answers."""
    images = dataset.x_test[:64]
    status, by_json = post(server, {"inputs": images.tolist()})
    assert status == 200, by_json
    for body in (serving.compact_request(images), serving.compact_request(images.reshape(64, 784)),
                 {"inputs": {serving.PNG_B64: [png(i) for i in images]}}):
        status, answer = post(server, body)
        assert status == 200, answer
        assert answer == by_json  # labels, class names and probabilities, exactly
    status, one = post(server, serving.compact_request(images[:1]))
    assert status == 200, one
    (got,), want = one["predictions"], by_json["predictions"][0]  # a batch of 1 rounds differently
    assert got["label"] == want["label"]
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-6)


def other_formats(images: np.ndarray, labels: np.ndarray) -> dict[str, tuple[bytes, str]]:
    """The same images in MLflow's other request formats, by name: (body, content type). A pandas user's
    tables: the test CSV's layout with its label column, or the pixel columns alone, shuffled in one."""
    def body(key: str, value) -> tuple[bytes, str]:
        return json.dumps({key: value}).encode(), "application/json"

    labelled, pixels = pixel_table(images, labels), pixel_table(images)
    shuffled = pixels.iloc[:, np.random.default_rng(0).permutation(784)]
    return {
        "dataframe_split": body("dataframe_split", json.loads(labelled.to_json(orient="split"))),
        "dataframe_split_shuffled": body("dataframe_split", json.loads(shuffled.to_json(orient="split"))),
        "dataframe_records": body("dataframe_records", json.loads(pixels.to_json(orient="records"))),
        "instances": body("instances", images.tolist()),
        "csv": (labelled.to_csv(index=False).encode(), "text/csv"),
    }


def test_mlflow_request_formats_answer_as_inputs(server, dataset):
    """dataframe_split, dataframe_records, instances and CSV of the same images get the answer {"inputs"} gets."""
    images, labels = dataset.x_test[:64], dataset.y_test[:64]
    status, by_inputs = post(server, {"inputs": images.tolist()})
    assert status == 200, by_inputs
    for name, (body, content_type) in other_formats(images, labels).items():
        status, answer = post(server, body, content_type)
        assert status == 200, (name, answer)
        assert answer == by_inputs, name


def test_predict_command_takes_mlflow_request_formats(store, tmp_path, dataset):
    """`mlflow models predict -i file --content-type json|csv` answers every format as the offline pyfunc does,
    and refuses a malformed table saying what was wrong. The refusal runs the real command (its exit code and
    its stderr); the formats it answers go through the same MLflow function in this process
    (mlflow.models.predict, env_manager local: what the command calls), without a TensorFlow import each."""
    from mlflow.pyfunc import scoring_server

    images, labels = dataset.x_test[:16], dataset.y_test[:16]
    offline = mlflow.pyfunc.load_model(CHAMPION)
    want = offline.predict(images)
    assert scoring_server._parse_json_data.__module__ == scoring_server.__name__, "in-process: MLflow's parser"
    cases = {name: v for name, v in other_formats(images, labels).items() if name != "dataframe_split_shuffled"}
    cases["split_no_columns"] = (json.dumps({"dataframe_split": {"data": images.reshape(16, -1).tolist()}}).encode(),
                                 JSON)
    env = {**subprocess_env(), "MLFLOW_TRACKING_URI": store["uri"]}

    def files(name: str) -> tuple[Path, Path, str]:
        body, content_type = cases[name]
        kind = "csv" if content_type == "text/csv" else "json"
        source, out = tmp_path / f"{name}.{kind}", tmp_path / f"{name}.out.json"
        source.write_bytes(body)
        return source, out, kind

    source, _, kind = files("split_no_columns")
    cmd = [MLFLOW, "models", "predict", "-m", CHAMPION, "-i", str(source), "--content-type", kind,
           "--env-manager", "local", "-o", str(tmp_path / "refused.out.json")]
    command = subprocess.Popen(cmd, cwd=store["root"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    results = {}
    try:
        for name in [n for n in cases if n != "split_no_columns"]:  # meanwhile, in this process
            source, out, kind = files(name)
            mlflow.models.predict(CHAMPION, input_path=str(source), content_type=kind, output_path=str(out),
                                  env_manager="local")
            results[name] = out
        _, stderr = command.communicate(timeout=300)
    finally:
        if command.poll() is None:
            command.kill()
    assert command.returncode != 0 and '"dataframe_split" must be an object {"columns"' in stderr
    assert "0, 0, 0, 0" not in stderr, "the refusal does not echo the input"
    for name, out in results.items():
        preds = json.loads(out.read_text())["predictions"]
        assert [p["label"] for p in preds] == want["label"].tolist(), name
        np.testing.assert_allclose([p["probabilities"] for p in preds], np.stack(want["probabilities"]), atol=1e-6)


JSON = "application/json"
IN_RANGE = "pixel values must be raw 0-255 grey levels; got values from"
NUMBERS = "pixel values must be numbers 0-255; got"
FINITE = "pixel values must be finite numbers 0-255; found NaN or infinity"
TOO_DEEP = "the JSON body nests arrays or objects about"
TOO_LARGE = "the request body is 52,428,"
MB50 = 50 * 2**20
ROW = ", 0" * 783  # the rest of a flat image after its first pixel


def nested(depth: int, opening: bytes = b"[", inner: bytes = b"0", closing: bytes = b"]") -> bytes:
    return b'{"inputs": ' + opening * depth + inner + closing * depth + b"}"


def first_pixel(text: str) -> bytes:
    """A one-image (n, 784) body whose first pixel is ``text`` as written, e.g. 1e400."""
    return f'{{"inputs": [[{text}{ROW}]]}}'.encode()


def pixels_50mb() -> bytes:
    """A 50 MB body of JSON pixels (17 million zeros), built when a test runs."""
    return b'{"inputs": [[' + b", ".join([b"0"] * (MB50 // 3)) + b"]]}"


PIXELS = [f"pixel{i}" for i in range(1, 785)]


def pixel_table(images: np.ndarray, labels: np.ndarray | None = None) -> pd.DataFrame:
    """Images in the project's CSV layout (data/files.py): label (when given), pixel1..pixel784."""
    table = pd.DataFrame(images.reshape(len(images), -1), columns=PIXELS)
    if labels is not None:
        table.insert(0, "label", labels)
    return table


def split_body(columns: list, rows: list) -> dict:
    return {"dataframe_split": {"columns": columns, "data": rows}}


# (body or a function making it, content type, status, start of the message). Our checks in
# serving.to_images answer the first group; request_body.py's, put in front of MLflow's scoring
# server when it loads the classifier, answer the hostile bodies that fail in MLflow's own parse;
# MLflow answers the last group itself.
BAD_REQUESTS = {
    "nan": (b'{"inputs": [[NaN' + b", 0" * 783 + b"]]}", JSON, 400, "pixel values must be finite numbers"),
    "negative": ({"inputs": one_image(-1)}, JSON, 400, f"{IN_RANGE} -1"),
    "over_255": ({"inputs": one_image(256)}, JSON, 400, f"{IN_RANGE} 0 to 256"),
    "bool_pixel": ({"inputs": one_image(True)}, JSON, 400, f"{NUMBERS} true/false"),
    "all_bools": ({"inputs": np.ones((1, 28, 28), bool).tolist()}, JSON, 400, f"{NUMBERS} true/false"),
    "null_pixel": ({"inputs": one_image(None)}, JSON, 400, f"{NUMBERS} null"),
    "text_pixel": ({"inputs": one_image("7")}, JSON, 400, f"{NUMBERS} text"),
    "null_inputs": ({"inputs": None}, JSON, 400, '"inputs" is null'),
    "ragged_rows": ({"inputs": [[0] * 784, [0] * 783]}, JSON, 400, "rows of unequal length"),
    "ragged_images": ({"inputs": [[[0] * 28] * 28, [[0] * 28] * 27]}, JSON, 400, "rows of unequal length"),
    "three_channels": ({"inputs": np.zeros((2, 28, 28, 3), int).tolist()}, JSON, 400,
                       "each image must be 28x28 pixels (images of shape (n, 28, 28), (n, 28, 28, 1) or (n, 784) "
                       "with raw pixel values 0-255); got shape (2, 28, 28, 3)"),
    "27_rows": ({"inputs": np.zeros((2, 27, 28), int).tolist()}, JSON, 400, "each image must be 28x28 pixels"),
    "empty": ({"inputs": []}, JSON, 400, "the batch is empty"),
    "one_number": ({"inputs": 5}, JSON, 400, '"inputs" is a single number'),
    "too_many": ({"inputs": np.zeros((serving.MAX_BATCH + 1, 784), int).tolist()}, JSON, 400,
                 f"{serving.MAX_BATCH + 1} images in one request; the limit is {serving.MAX_BATCH}"),
    # the compact forms (inputs is an object)
    "b64_length": ({"inputs": {"uint8_b64": b64(bytes(785))}}, JSON, 400,
                   "uint8_b64 holds 785 bytes, not a multiple of 784"),
    "b64_junk": ({"inputs": {"uint8_b64": "not base64!"}}, JSON, 400, "uint8_b64 is not valid base64"),
    "b64_number": ({"inputs": {"uint8_b64": 7}}, JSON, 400, "uint8_b64 must be a base64 string; got int"),
    "b64_empty": ({"inputs": {"uint8_b64": ""}}, JSON, 400, "the batch is empty"),
    "b64_too_many": ({"inputs": {"uint8_b64": b64(bytes(784 * (serving.MAX_BATCH + 1)))}}, JSON, 400,
                     f"{serving.MAX_BATCH + 1} images in one request; the limit is {serving.MAX_BATCH}"),
    "png_not_png": ({"inputs": {"png_b64": [png(np.zeros((28, 28), np.uint8)), b64(b"GIF89a not a png")]}}, JSON, 400,
                    "png_b64[1]: not a readable PNG/JPEG image"),
    "png_not_list": ({"inputs": {"png_b64": b64(b"x")}}, JSON, 400, "png_b64 must be a list of base64 strings"),
    "png_too_many": ({"inputs": {"png_b64": [""] * (serving.MAX_BATCH + 1)}}, JSON, 400,
                     f"{serving.MAX_BATCH + 1} images in one request; the limit is {serving.MAX_BATCH}"),
    "unknown_object": ({"inputs": {"pixels": []}}, JSON, 400, "\"inputs\" is an object with keys ['pixels']: send"),
    # numbers no pixel can be: parsed by json.loads as infinities or huge ints, refused by the model
    "1e400": (first_pixel("1e400"), JSON, 400, FINITE),
    "minus_1e400": (first_pixel("-1e400"), JSON, 400, FINITE),
    "infinity": (first_pixel("Infinity"), JSON, 400, FINITE),
    "minus_infinity": (first_pixel("-Infinity"), JSON, 400, FINITE),
    "float_5000_digits": (first_pixel("1" + "0" * 5000 + ".5"), JSON, 400, FINITE),
    "int_400_digits": (first_pixel("1" + "0" * 400), JSON, 400,
                       "pixel values must be raw 0-255 grey levels; got an integer too large for any float"),
    "nested_900": (nested(900), JSON, 400, '"inputs" nests lists 64 levels deep or more; images nest 2 to 4 levels'),
    # hostile bodies that fail in MLflow's parse (500 or seconds of parsing), refused by request_body
    "nested_20000": (nested(20_000), JSON, 400, TOO_DEEP),
    "nested_objects_20000": (nested(20_000, b'{"a": ', b"0", b"}"), JSON, 400, TOO_DEEP),
    "int_5000_digits": (first_pixel("1" + "0" * 5000), JSON, 400, "a number in the body has more than 4,300 digits"),
    "body_50mb": (pixels_50mb, JSON, 413, TOO_LARGE),
    "body_50mb_not_json": (lambda: b"x" * MB50, JSON, 413, TOO_LARGE),
    "body_50mb_csv": (lambda: b"0," * (MB50 // 2), "text/csv", 413, TOO_LARGE),
    "not_json_10mb": (lambda: b"x" * (10 * 2**20), JSON, 400,
                      "Invalid input. Ensure that input is a valid JSON formatted string. Error: Expecting value"),
    "list_body": (b"[1, 2]", JSON, 400, 'the body must be a JSON object {"inputs": ...}; got list'),
    # MLflow's other formats (classifier.request_formats): a malformed table, and columns that are not the pixels
    "split_no_columns": ({"dataframe_split": {"data": [[0] * 784]}}, JSON, 400,
                         '"dataframe_split" must be an object {"columns": ["pixel1", ...], "data"'),
    "text_column": (split_body(["name", *PIXELS], [["coat", *[0] * 784]]), JSON, 400,
                    "column 'name' is not a pixel column: send 784 pixel columns pixel1..pixel784"),
    "text_pixels": ({"dataframe_records": [{**dict.fromkeys(PIXELS, 0), "pixel9": "dark"}]}, JSON, 400,
                    "column 'pixel9' holds text, not pixel values"),
    "783_pixel_columns": (split_body(PIXELS[:-1], [[0] * 783]), JSON, 400,
                          "each row must hold 784 pixel values (28x28 pixels), one per column; got 783 columns"),
    "csv_not_a_table": (b"pixel1,pixel2\n1,2\n3,4,5,6\n", "text/csv", 400,
                        "the CSV body is not a table pandas can read (Error tokenizing data"),
    "no_content_type": ({"inputs": one_image()}, None, 415, "the request has no Content-Type"),
    # refused by MLflow before predict() runs
    "unknown_key": ({"imgs": one_image()}, JSON, 400,
                    "Request payload must be a dictionary with 'inputs' key"),
    "malformed_json": (b'{"inputs": [[1, 2', JSON, 400, "Invalid input. Ensure that input is a valid JSON"),
    "binary_junk": (bytes(range(256)) * 8, JSON, 400, "Invalid input. Ensure that input is a valid JSON"),
    "text_plain": ({"inputs": one_image()}, "text/plain", 415,
                   "This predictor only supports the following content types"),
    "octet_stream": (bytes(range(256)) * 8, "application/octet-stream", 415,
                     "This predictor only supports the following content types"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_4xx_saying_what_was_wrong(server, dataset, case):
    body, content_type, want_status, message_start = BAD_REQUESTS[case]
    status, answer = post(server, body() if callable(body) else body, content_type)
    assert status == want_status, (status, answer)
    assert answer["message"].startswith(message_start), answer["message"][:500]
    assert len(answer["message"]) < 500, "the message says what was wrong, without echoing the request"
    status, ok = post(server, {"inputs": dataset.x_test[:1].tolist()})
    assert status == 200 and len(ok["predictions"]) == 1


def test_body_limit_leaves_room_for_the_largest_batch(server, dataset):
    """1,024 images as JSON floats of 17 digits (x.49999999999999994, 16 MB) fit the default body limit."""
    images = np.nextafter(np.minimum(dataset.x_test[:serving.MAX_BATCH], 254) + 0.5, 0)
    raw = json.dumps({"inputs": images.tolist()}).encode()
    assert 15 * 2**20 < len(raw) < serving.MAX_BATCH * request_body.BODY_BYTES_PER_IMAGE
    status, body = post(server, raw)
    assert status == 200, body
    assert len(body["predictions"]) == serving.MAX_BATCH


def test_body_limit_follows_serving_model_config(store, dataset):
    """`SERVING_MODEL_CONFIG='{"max_body_mb": 0.5}' mlflow models serve ...` refuses a 1 MB compact
    request with a 413 naming the limit, and answers a 100 KB one; loaded in-process, the classifier
    leaves MLflow's scoring server as it is."""
    from mlflow.pyfunc import scoring_server

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [MLFLOW, "models", "serve", "-m", CHAMPION, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
           "-w", "1"]
    env = {**subprocess_env(), "MLFLOW_TRACKING_URI": store["uri"], "SERVING_MODEL_CONFIG": '{"max_body_mb": 0.5}'}
    with running_server(cmd, base + "/ping", cwd=store["root"], env=env, log="server_small_limit.log"):
        status, answer = post(base, serving.compact_request(dataset.x_test[:1000]))
        assert status == 413, answer
        assert answer["message"].startswith("the request body is 1,045,"), answer["message"]
        assert "the limit is 524,288 bytes (0.5 MiB)" in answer["message"]
        status, answer = post(base, serving.compact_request(dataset.x_test[:100]))
        assert status == 200 and len(answer["predictions"]) == 100, answer
    mlflow.pyfunc.load_model(CHAMPION)
    assert scoring_server.invocations.__module__ == scoring_server.__name__


def test_body_limit_setting_is_checked():
    assert request_body.body_limit(None, serving.MAX_BATCH, D.FASHION_MNIST.pixels) == 32 * 2**20
    assert request_body.body_limit(0.5, serving.MAX_BATCH, D.FASHION_MNIST.pixels) == 2**19
    for bad in (0, -1, "64", True):
        with pytest.raises(ValueError, match=f"max_body_mb={bad!r}: give the largest request body"):
            request_body.body_limit(bad, serving.MAX_BATCH, D.FASHION_MNIST.pixels)


def test_concurrent_clients_all_answered(server, dataset):
    """Eight clients, 25 single-image requests each, at once: every answer is a 200 of the right shape."""
    def client(k: int) -> list:
        answers = []
        for i in range(25):
            image = dataset.x_test[(k * 25 + i) % len(dataset.x_test)]
            answers.append(post(server, {"inputs": image[None].tolist()}))
        return answers

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [a for answers in pool.map(client, range(8)) for a in answers]
    assert len(results) == 200
    errors = [(status, body) for status, body in results if status != 200]
    assert not errors, errors[:3]
    for _, body in results:
        (pred,) = body["predictions"]
        assert 0 <= pred["label"] < 10 and pred["class_name"] == D.FASHION_CLASSES[pred["label"]]
        assert len(pred["probabilities"]) == 10 and sum(pred["probabilities"]) == pytest.approx(1, abs=1e-4)


def test_predict_command_on_image_files(store, tmp_path, dataset):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(dataset.x_test[i]).save(folder / f"img{i}.png")
    # a large, light-background RGB photo-like version of image 0: converted by the stated rule
    big = Image.fromarray(255 - dataset.x_test[0]).resize((112, 140)).convert("RGB")
    big.save(folder / "z_big.jpg")
    expect = mlflow.pyfunc.load_model(CHAMPION).predict(dataset.x_test[:4])["class_name"].tolist()
    out = cli(["predict", str(folder)], store["root"])
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split("\t") for line in out.stdout.strip().splitlines()]
    assert [r[2] for r in rows[:4]] == expect and len(rows) == 5
    converted = serving.load_image(folder / "z_big.jpg", D.FASHION_MNIST)
    assert converted.shape == (28, 28) and np.median(converted[0]) < 128, "inverted to light-on-dark"
    bad = cli(["predict", str(tmp_path / "missing.png")], store["root"])
    assert bad.returncode == 2 and "no such file" in bad.stderr
