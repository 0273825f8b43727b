"""The registered classifier served by the real `mlflow models serve` on a loopback port:
answers real test images exactly as the offline pyfunc does, and refuses bad requests with
a 4xx that says what was wrong while it keeps answering."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import mlflow
import numpy as np
import pytest
from PIL import Image

from conftest import MLFLOW, REPO, cli, free_port, running_server, subprocess_env
from fmnist_exp import config as C
from fmnist_exp import data as D
from fmnist_exp import serving, tune

pytestmark = pytest.mark.slow
CHAMPION = "models:/fmnist-classifier@champion"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with a champion from a 1-trial MLP study (real tune, tiny budget)."""
    root = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old_cwd, old_env = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(root)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    study = root / "serve.yaml"
    study.write_text("description: serving fixture\nfamily: mlp\nfixed: {hidden_units: '64', lr_schedule: cosine}\n"
                     "space:\n  dropout: {type: float, low: 0.0, high: 0.1}\n")
    summary = tune.run(C.resolve_tune({"family": "mlp", "study": str(study), "n_trials": 1, "epochs": 2,
                                       "train_samples": 3000}))
    yield {"root": root, "uri": uri, "summary": summary}
    os.chdir(old_cwd)
    if old_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old_env


@pytest.fixture(scope="module")
def server(store):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [MLFLOW, "models", "serve", "-m", CHAMPION, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
           "-w", "1"]
    env = {**subprocess_env(), "MLFLOW_TRACKING_URI": store["uri"]}
    with running_server(cmd, base + "/ping", cwd=store["root"], env=env):
        yield base


def post(base: str, body) -> tuple[int, dict]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(base + "/invocations", data=raw, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_served_answers_equal_offline_and_logged_accuracy(server, store, dataset):
    offline = mlflow.pyfunc.load_model(CHAMPION)
    labels = []
    for i in range(0, 10_000, serving.MAX_BATCH):
        batch = dataset.x_test[i:i + serving.MAX_BATCH]
        status, body = post(server, {"inputs": batch.tolist()})
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
    assert body["predictions"][0]["class_name"] == D.CLASS_NAMES[dataset.y_test[0]]
    assert len(body["predictions"][0]["probabilities"]) == 10


@pytest.mark.parametrize("body,needle", [
    ({"inputs": np.zeros((2, 27, 28)).tolist()}, "must be 28x28"),
    ({"inputs": [[["a"] * 28] * 28]}, "must be numbers"),
    ({"inputs": (np.ones((1, 28, 28)) * 300).tolist()}, "0-255"),
    ({"inputs": (np.ones((1, 28, 28)) * -1).tolist()}, "0-255"),
    ({"inputs": []}, "empty"),
    ({"inputs": np.zeros((serving.MAX_BATCH + 1, 784), dtype=int).tolist()}, f"limit is {serving.MAX_BATCH}"),
    (b'{"inputs": [[1, 2', "json"),
])
def test_bad_requests_get_4xx_and_server_keeps_answering(server, dataset, body, needle):
    status, answer = post(server, body)
    assert 400 <= status < 500, (status, answer)
    assert needle.lower() in json.dumps(answer).lower(), answer
    status, ok = post(server, {"inputs": dataset.x_test[:1].tolist()})
    assert status == 200 and len(ok["predictions"]) == 1


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
    converted = serving.load_image(folder / "z_big.jpg")
    assert converted.shape == (28, 28) and np.median(converted[0]) < 128, "inverted to light-on-dark"
    bad = cli(["predict", str(tmp_path / "missing.png")], store["root"])
    assert bad.returncode == 2 and "no such file" in bad.stderr
