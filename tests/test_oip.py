"""The Open Inference Protocol on `serve` (serving/oip.py, serving/v2.py), driven by NVIDIA's own client,
``tritonclient.http``, unchanged: JSON and binary tensors, pixels and encoded files, a named version, on real
Fashion-MNIST test images, each answer equal to what /invocations answers for the same images; the protocol's
errors; the v2 routes counted in /metrics; a swap of @champion under v2 load fails no request."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import sys
import threading
from urllib.parse import urlsplit

import mlflow
import numpy as np
import pytest
from conftest import REPO, free_port, running_server, store_at, subprocess_env
from mlflow.tracking import MlflowClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from fmnist_exp import params as P
from fmnist_exp.commands import train

pytestmark = [pytest.mark.xdist_group("oip"), pytest.mark.slow]
tritonclient_http = pytest.importorskip("tritonclient.http")

NAME = "fmnist-classifier"
OUTPUTS = ("probabilities", "label", "class_name")


@pytest.fixture(scope="module")
def store(tmp_path_factory, migrated_store):
    """Two registered versions of small real classifiers (an mlp each, 1 epoch on 2,000 images), @champion on 1."""
    import mlflow.tracking.fluent

    root = tmp_path_factory.mktemp("oip")
    with store_at(root, migrated_store) as uri, pytest.MonkeyPatch.context() as mp:
        # the commands' set_experiment remembers its id in this process: a module fixture's must not outlive it
        # (the autouse _no_active_experiment resets a test's, not a module fixture's)
        mp.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
        mp.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        for seed in (1, 2):
            assert train.main(P.command("mlp", {"epochs": 1, "train_samples": 2000, "hidden_units": "32",
                                                "seed": seed})) == 0
        runs = mlflow.search_runs(search_all_experiments=True, order_by=["attributes.start_time ASC"])
        versions = [str(mlflow.register_model(f"runs:/{r}/classifier", NAME).version) for r in runs.run_id]
        MlflowClient().set_registered_model_alias(NAME, "champion", versions[0])
        mlflow.tracking.fluent._active_experiment_id = None
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        yield {"root": root, "uri": uri, "versions": versions}


@pytest.fixture(scope="module")
def server(store):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "fmnist_exp", "serve", "--model_name", NAME, "--port", str(port), "--poll_s", "1"]
    env = {**subprocess_env(), "MLFLOW_TRACKING_URI": store["uri"], "SERVING_MODEL_CONFIG": '{"max_body_mb": 1}'}
    with running_server(cmd, base + "/ping", cwd=store["root"], env=env, log="serve.log"):
        yield base


def call(base: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=300)
    try:
        conn.request(method, path, body, headers or {})
        answer = conn.getresponse()
        raw = answer.read()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, raw
    finally:
        conn.close()


def invocations(base: str, body: dict) -> tuple[list[int], np.ndarray, list[str], str]:
    """What /invocations answers: labels, probabilities, class names, and the version that answered."""
    status, headers, raw = call(base, "POST", "/invocations", json.dumps(body).encode(),
                                {"Content-Type": "application/json"})
    assert status == 200, raw
    rows = json.loads(raw)["predictions"]
    return ([r["label"] for r in rows], np.array([r["probabilities"] for r in rows], dtype=np.float32),
            [r["class_name"] for r in rows], headers["x-model-version"])


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def client(base: str):
    return tritonclient_http.InferenceServerClient(urlsplit(base).netloc)


def infer(triton, name: str, datatype: str, data: np.ndarray, *, binary: bool, version: str = ""):
    inp = tritonclient_http.InferInput(name, list(data.shape), datatype)
    inp.set_data_from_numpy(data, binary_data=binary)
    outputs = [tritonclient_http.InferRequestedOutput(o, binary_data=binary) for o in OUTPUTS]
    return triton.infer(NAME, [inp], model_version=version, outputs=outputs, request_id="req-7")


def test_tritonclient_answers_equal_invocations_json_and_binary_pixels_and_files(server, store, dataset):
    v1, v2 = store["versions"]
    triton = client(server)
    assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready(NAME)
    meta = triton.get_model_metadata(NAME)
    assert meta["versions"] == [v1] and meta["platform"] == "mlflow_pyfunc"
    assert {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]} == {
        "images": ("UINT8", [-1, 28, 28]), "image_files": ("BYTES", [-1])}
    assert {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]} == {
        "probabilities": ("FP32", [-1, 10]), "label": ("INT64", [-1]), "class_name": ("BYTES", [-1])}
    assert triton.get_server_metadata()["extensions"] == ["binary_tensor_data"]

    x = dataset.x_test[:16]
    labels, probs, names, version = invocations(server, {"inputs": x.tolist()})
    assert version == v1
    for datatype, data in (("UINT8", x), ("FP32", x.astype(np.float32))):
        for binary in (False, True):
            res = infer(triton, "images", datatype, data, binary=binary)
            answer = res.get_response()
            assert (answer["model_name"], answer["model_version"], answer["id"]) == (NAME, v1, "req-7")
            assert res.as_numpy("label").tolist() == labels
            assert np.array_equal(res.as_numpy("probabilities"), probs)  # float32 both ways, bit for bit
            # BYTES: bytes from binary data, text from JSON (tritonclient's as_numpy)
            assert [n.decode() if isinstance(n, bytes) else n for n in res.as_numpy("class_name")] == names

    files = [png(image) for image in x[:6]]
    labels, probs, _, _ = invocations(server, {"inputs": {"png_b64": [base64.b64encode(f).decode() for f in files]}})
    res = infer(triton, "image_files", "BYTES", np.array(files, dtype=object), binary=True)
    assert res.as_numpy("label").tolist() == labels and np.array_equal(res.as_numpy("probabilities"), probs)
    as_text = np.array([base64.b64encode(f) for f in files], dtype=object)  # JSON: each file's base64 text
    res = infer(triton, "image_files", "BYTES", as_text, binary=False)
    assert res.as_numpy("label").tolist() == labels and np.array_equal(res.as_numpy("probabilities"), probs)

    # a named version: not loaded, so not ready (a probe loads nothing); an infer naming it loads it beside the
    # version serving and answers as that version answers itself, while @champion stays on v1
    assert not triton.is_model_ready(NAME, v2)
    res = infer(triton, "images", "UINT8", x, binary=True, version=v2)
    assert res.get_response()["model_version"] == v2
    own = mlflow.pyfunc.load_model(f"models:/{NAME}/{v2}").predict(x)
    assert res.as_numpy("label").tolist() == own["label"].tolist()
    assert np.array_equal(res.as_numpy("probabilities"), np.stack(own["probabilities"]).astype(np.float32))
    assert triton.is_model_ready(NAME, v2) and triton.get_model_metadata(NAME, v2)["versions"] == [v2]
    assert invocations(server, {"inputs": x[:1].tolist()})[3] == v1  # the alias's version still serves

    # only the outputs asked for, one as binary data, one as JSON
    inp = tritonclient_http.InferInput("images", [2, 28, 28], "UINT8")
    inp.set_data_from_numpy(x[:2], binary_data=True)
    res = triton.infer(NAME, [inp], outputs=[tritonclient_http.InferRequestedOutput("label", binary_data=False)])
    assert [o["name"] for o in res.get_response()["outputs"]] == ["label"] and res.as_numpy("probabilities") is None
    res = triton.infer(NAME, [inp])  # no outputs named: all of them, as binary data (tritonclient's default)
    assert res.as_numpy("label").tolist() == labels[:2] and res.as_numpy("probabilities").shape == (2, 10)
    # a body tritonclient compresses
    res = triton.infer(NAME, [inp], request_compression_algorithm="gzip")
    assert res.as_numpy("label").tolist() == labels[:2]


@pytest.mark.parametrize(("path", "body", "headers", "status", "said"), [
    ("/v2/models/other/infer", {"inputs": []}, {}, 404, "unknown model 'other'"),
    ("/v2/models/fmnist-classifier/versions/99/infer", None, {}, 404, "has no version 99"),
    ("/v2/models/fmnist-classifier/infer", {"inputs": [{"name": "pixels", "shape": [1, 28, 28], "datatype": "UINT8",
                                                        "data": [0] * 784}]}, {}, 400, "no input named 'pixels'"),
    ("/v2/models/fmnist-classifier/infer", {"inputs": [{"name": "images", "shape": [1, 32, 32], "datatype": "UINT8",
                                                        "data": [0] * 1024}]}, {}, 400, "shape [1, 32, 32]; this model "
                                                                                         "takes [-1, 28, 28]"),
    ("/v2/models/fmnist-classifier/infer", {"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "INT64",
                                                        "data": [0] * 784}]}, {}, 400, "datatype 'INT64'"),
    ("/v2/models/fmnist-classifier/infer", {"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8",
                                                        "data": [300] * 784}]}, {}, 400, "must be 0-255"),
    ("/v2/models/fmnist-classifier/infer", {"inputs": [{"name": "images", "shape": [2, 28, 28], "datatype": "UINT8",
                                                        "data": [0] * 784}]}, {}, 400, "784 values in data for a "
                                                                                       "shape of 1568"),
    ("/v2/models/fmnist-classifier/infer", b"{not json", {}, 400, "Ensure that input is a valid JSON"),
    ("/v2/models/fmnist-classifier/infer", {"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8",
                                                        "parameters": {"binary_data_size": 784}}]},
     {"Inference-Header-Content-Length": "abc"}, 400, "not a whole number"),
    ("/v2/models/fmnist-classifier/infer", {"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8",
                                                        "parameters": {"binary_data_size": 784}}]},
     {"Inference-Header-Content-Length": "999999"}, 400, "the body holds"),
    ("/v2/models/fmnist-classifier/infer", {"inputs": [{"name": "image_files", "shape": [1], "datatype": "BYTES",
                                                        "data": ["not base64!"]}]}, {}, 400, "not base64 text"),
    ("/v2/models/fmnist-classifier/infer", {"inputs": [{"name": "image_files", "shape": [1], "datatype": "BYTES",
                                                        "data": [base64.b64encode(b"no image").decode()]}]}, {}, 400,
     "not a readable PNG/JPEG"),
    ("/v2/models/fmnist-classifier/infer", {"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8",
                                                        "data": [0] * 784}],
                                            "outputs": [{"name": "logits"}]}, {}, 400, "no output named 'logits'"),
    ("/v2/models/fmnist-classifier/infer", b"x" * (1024 * 1024 + 1), {}, 413, "passes this model's limit"),
    # hostile JSON: a 4xx with the protocol's error body, never a bare 500
    ("/v2/models/fmnist-classifier/infer", b"[" * 200_000, {}, 400, "too deep to parse"),
    ("/v2/models/fmnist-classifier/infer", {"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "FP32",
                                                        "data": [10 ** 400] + [0] * 783}]}, {}, 400, "too large"),
    ("/v2/models/fmnist-classifier/infer", {"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8",
                                                        "data": [0] * 784}], "outputs": [{"name": "label",
                                                                                         "parameters": [1]}]},
     {}, 400, "parameters must be an object"),
    ("/v2/models/fmnist-classifier/infer", {"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8",
                                                        "data": [0] * 784}], "outputs": [{"name": ["label"]}]},
     {}, 400, "no output named"),
    ("/v2/models/fmnist-classifier/infer", {"inputs": [{"name": "images", "shape": [1, 28, 28],
                                                        "datatype": ["UINT8"], "data": [0] * 784}]}, {}, 400,
     "datatype must be text"),
    ("/v2/models/fmnist-classifier/infer", {"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8",
                                                        "data": [0] * 784}], "outputs": [{"name": "label",
                                                                                         "parameters": {
                                                                                             "binary_data": "no"}}]},
     {}, 400, "binary_data must be true or false"),
    ("/v2/models/fmnist-classifier/versions/" + "9" * 40 + "/infer", None, {}, 404, "a registered version is a number"),
])
def test_a_request_the_protocol_refuses_gets_its_4xx_and_error(server, store, path, body, headers, status, said):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b"{}"
    if headers.get("Inference-Header-Content-Length") == "999999":
        raw += bytes(784)
    got, _, answer = call(server, "POST", path, raw, {"Content-Type": "application/json", **headers})
    assert got == status and said in json.loads(answer)["error"], answer
    assert call(server, "GET", "/v2/health/live")[0] == 200  # nothing crashed the server


def test_a_binary_bytes_tensor_with_a_broken_length_prefix_is_refused(server, store):
    head = json.dumps({"inputs": [{"name": "image_files", "shape": [1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": 8}}]}).encode()
    got, _, answer = call(server, "POST", f"/v2/models/{NAME}/infer", head + (100).to_bytes(4, "little") + b"abcd",
                          {"Inference-Header-Content-Length": str(len(head))})
    assert got == 400 and "element 0 says 100 bytes, but 4 follow" in json.loads(answer)["error"]


def test_a_swap_under_v2_load_fails_no_request_and_metrics_count_by_version(server, store, dataset):
    """Eight clients send v2 binary requests while @champion moves v1 -> v2 (200 requests or more): every request
    answered 200 by the version it names, with that version's own answers; /metrics counts the infer answers of each
    version."""
    v1, v2 = store["versions"]
    x = dataset.x_test[:4]
    expected = {v: mlflow.pyfunc.load_model(f"models:/{NAME}/{v}").predict(x)["label"].tolist() for v in (v1, v2)}
    seen: list[tuple[str, list[int]]] = []
    failures: list[str] = []
    stop, lock = threading.Event(), threading.Lock()
    answered = threading.Condition(lock)

    def run() -> None:
        triton = client(server)  # one kept connection per client
        while not stop.is_set():
            try:
                res = infer(triton, "images", "UINT8", x, binary=True)
                with answered:
                    seen.append((res.get_response()["model_version"], res.as_numpy("label").tolist()))
                    answered.notify_all()
            except Exception as e:
                with answered:
                    failures.append(f"{type(e).__name__}: {e}")
                    answered.notify_all()
        triton.close()

    before = infer_answers(server)
    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        with answered:
            assert answered.wait_for(lambda: len(seen) >= 20, 120)
        MlflowClient().set_registered_model_alias(NAME, "champion", v2)
        status, _, state = call(server, "POST", "/reload")
        assert status == 200 and json.loads(state)["version"] == v2
        with answered:
            mark = len(seen)
            assert answered.wait_for(lambda: sum(v == v2 for v, _ in seen[mark:]) >= 20 and len(seen) >= 200, 120)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=300)
        MlflowClient().set_registered_model_alias(NAME, "champion", v1)
        call(server, "POST", "/reload")
    assert failures == []
    assert {v for v, _ in seen} == {v1, v2} and all(labels == expected[v] for v, labels in seen)
    after = infer_answers(server)
    assert {v: after.get(v, 0) - before.get(v, 0) for v in (v1, v2)} == {v: sum(s == v for s, _ in seen)
                                                                         for v in (v1, v2)}


def kserve(*args: str) -> dict:
    """tests/kserve_check.py in the KServe environment (scripts/test.sh makes .venv/kserve), its JSON answer."""
    import os
    import subprocess

    python = REPO / ".venv" / "kserve" / "bin" / "python"
    if not python.exists():
        missing = pytest.fail if os.environ.get("CI") == "true" else pytest.skip
        missing(f"{python} is missing: bash scripts/test.sh installs KServe's SDK there")
    done = subprocess.run([str(python), str(REPO / "tests" / "kserve_check.py"), *args], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_kserve_manifest_reads_into_kserves_own_model_classes():
    """deploy/k8s/kserve: a ServingRuntime running `serve` (protocol v2, probed on /v2/health/*) and an
    InferenceService of it, every field read into KServe's SDK model classes (and Kubernetes' for the containers)."""
    import yaml

    path = REPO / "deploy" / "k8s" / "kserve" / "inferenceservice.yaml"
    assert kserve("manifest", str(path)) == {"kinds": ["ServingRuntime", "InferenceService"], "problems": []}
    runtime, service = yaml.safe_load_all(path.read_text())
    [container] = runtime["spec"]["containers"]
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    assert service["spec"]["predictor"]["model"]["protocolVersion"] == "v2"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["command"][:4] == ["python", "-m", "fmnist_exp", "serve"]
    assert {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"} in container["env"]
    assert service["spec"]["predictor"]["model"]["args"] == ["--model_name", NAME]


@pytest.mark.parametrize(("before", "after", "named"), [
    ("protocolVersion: v2", "protocolVerison: v2", "model.protocolVerison: not a field of V1beta1ModelSpec"),
    ("minReplicas: 2 ", 'minReplicas: "two" ', "predictor.minReplicas: int expected"),
    ("periodSeconds: 10", "periodSeconds: ten", "livenessProbe.periodSeconds: int expected"),
    ("- {name: MLFLOW_TRACKING_URI, value:", "- {value:", "env[0].name: Input should be a valid string"),
    ('--port, "8080"]', "--port, 8080]", "command[9]: str expected, got int 8080"),
])
def test_a_wrong_field_in_the_kserve_manifest_is_named(tmp_path, before, after, named):
    text = (REPO / "deploy" / "k8s" / "kserve" / "inferenceservice.yaml").read_text()
    assert text.count(before) == 1, before
    (tmp_path / "isvc.yaml").write_text(text.replace(before, after))
    problems = kserve("manifest", str(tmp_path / "isvc.yaml"))["problems"]
    assert any(named in p for p in problems), problems


def test_kserves_own_client_answers_as_invocations_across_a_swap(server, store, dataset, tmp_path):
    """KServe's InferenceRESTClient (protocol v2, JSON) on real test images: the answers equal /invocations'
    image by image, before and after @champion moves, each from the version the alias names."""
    v1, v2 = store["versions"]
    x = dataset.x_test[100:116]
    np.save(tmp_path / "x.npy", x)
    try:
        for version in (v1, v2):
            MlflowClient().set_registered_model_alias(NAME, "champion", version)
            assert json.loads(call(server, "POST", "/reload")[2])["version"] == version
            labels, probs, names, answered = invocations(server, {"inputs": x.tolist()})
            got = kserve("infer", server, NAME, str(tmp_path / "x.npy"))
            assert (got["model_version"], got["id"], answered) == (version, "kserve-1", version)
            assert got["label"] == labels and got["class_name"] == names
            assert np.array_equal(np.array(got["probabilities"], dtype=np.float32).reshape(probs.shape), probs)
    finally:
        MlflowClient().set_registered_model_alias(NAME, "champion", v1)
        call(server, "POST", "/reload")


def infer_answers(base: str) -> dict[str, float]:
    """/metrics: the infer requests answered 200, by version."""
    _, _, text = call(base, "GET", "/metrics")
    return {s.labels["version"]: s.value for family in text_string_to_metric_families(text.decode())
            for s in family.samples if s.name == "fmnist_serve_v2_requests_total"
            and (s.labels["route"], s.labels["code"]) == ("infer", "200")}


def test_sigterm_under_keep_alive_load_loses_no_request(store, dataset):
    """A rolling update's SIGTERM under load on kept connections, on both route families: `serve` turns not ready
    at once, answers every request written to a connection it had open (each answer of the drain closing its
    connection, so no client writes its next request to one about to close), then exits. A client told to close
    goes elsewhere, as behind a load balancer; a connection refused after the server stopped listening is the load
    balancer's business, not a loss."""
    import signal

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "fmnist_exp", "serve", "--model_name", NAME, "--port", str(port), "--drain_s", "3"]
    env = {**subprocess_env(), "MLFLOW_TRACKING_URI": store["uri"]}
    x = dataset.x_test[:2]
    bodies = [("/invocations", json.dumps({"inputs": x.tolist()}).encode()),
              (f"/v2/models/{NAME}/infer", json.dumps({"inputs": [{"name": "images", "shape": [2, 28, 28],
                                                                   "datatype": "UINT8",
                                                                   "data": x.ravel().tolist()}]}).encode())]
    records: list[tuple[str, ...]] = []
    answered = threading.Condition()

    def run(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i in range(100_000):
            path, body = bodies[(k + i) % 2]
            reused = conn.sock is not None  # a kept connection that carried an answer before
            try:
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                answer = conn.getresponse()
                answer.read()
                record = ("answered", str(answer.status), answer.getheader("connection") or "")
            except ConnectionRefusedError:  # not listening any more: a new connection refused
                record = ("refused",)
            except OSError as e:  # reset, broken pipe, closed without an answer: written and lost
                record = ("lost", "reused" if reused else "new", f"{type(e).__name__}: {e}")
                conn.close()
            with answered:
                records.append(record)
                answered.notify_all()
            if record[0] == "refused" or record[-1] == "close":  # as a load balancer would, it goes elsewhere
                return

    with running_server(cmd, base + "/ping", cwd=store["root"], env=env, log="serve-sigterm.log") as proc:
        threads = [threading.Thread(target=run, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        with answered:
            assert answered.wait_for(lambda: len(records) >= 60, 120)
        proc.send_signal(signal.SIGTERM)
        status, _, _ = call(base, "GET", "/ping")
        assert status == 503  # not ready at once: the load balancer stops sending
        for t in threads:
            t.join(timeout=120)
        assert proc.wait(timeout=120) in (0, -signal.SIGTERM)
    lost = [r for r in records if r[0] == "lost"]
    assert lost == [], lost[:5]
    statuses = {r[1] for r in records if r[0] == "answered"}
    ended = [r for r in records if r[0] == "refused" or r[-1] == "close"]
    assert statuses == {"200"} and len(ended) == len(threads)  # each client's last answer closed its connection
    assert any(r[0] == "answered" and r[2] == "close" for r in records)  # the drain closed connections
