"""`serve` follows the registry, against real servers and a real registry: started before any champion
it answers 503 until one exists; a new champion is swapped in under concurrent load with clients that
never retry (none fails, the header names the version that computed each answer, and every request
sent after the swap is answered by the new version); a version whose artifacts were removed is not
swapped in and the old one keeps answering; `promote` rolls back and the server follows on its poll;
/metrics counts by version; hostile bodies still get their 4xx; an MLflow registry webhook, sent by a
real `mlflow server`, wakes it (a forged one is refused)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
import pytest
from conftest import MLFLOW, cli, free_port, ok, old_cli, predict_in_batches, running_server, store_at, subprocess_env
from mlflow.tracking import MlflowClient
from prometheus_client.parser import text_string_to_metric_families

from fmnist_exp import params as P
from fmnist_exp.commands import train
from fmnist_exp.serving.server import verify_signature

# one test process for the whole file: its module-scoped fixtures are made once (pyproject's --dist loadgroup)
pytestmark = pytest.mark.xdist_group("serve")

NAME = "fmnist-classifier"
JSON = "application/json"


def call(base: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body as JSON or text) of one request on a fresh connection."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=300)
    try:
        conn.request(method, path, body, headers or ({"Content-Type": JSON} if body is not None else {}))
        answer = conn.getresponse()
        raw = answer.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw.decode(errors="replace")
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, parsed
    finally:
        conn.close()


def image_body(dataset, n: int = 1, start: int = 0) -> bytes:
    return json.dumps({"inputs": dataset.x_test[start:start + n].tolist()}).encode()


def metric(base: str, name: str, **labels) -> float:
    """One sample's value from /metrics (0 where the series does not exist yet)."""
    _, _, text = call(base, "GET", "/metrics")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def wait_until(what, timeout: float = 60, said=None):
    """Wait until ``what()`` is true (the server's own state, read again and again), or fail saying ``said()``."""
    deadline = time.time() + timeout
    while not what():
        if time.time() > deadline:
            pytest.fail(f"not so within {timeout} s: {said() if said else what.__doc__ or what}")
        time.sleep(0.1)


def wait_for_version(base: str, version: str, timeout: float = 60) -> None:
    """Wait until /version names ``version`` (the server moves on its own poll), or fail with its state."""
    wait_until(lambda: call(base, "GET", "/version")[2]["version"] == version, timeout,
               lambda: f"the alias moved to {version}; /version says {call(base, 'GET', '/version')[2]}")


@pytest.fixture(scope="module")
def store(tmp_path_factory, migrated_store):
    """An empty registry (sqlite under a temp dir) for `serve` to follow; versions come later (`versions`)."""
    root = tmp_path_factory.mktemp("follow")
    with store_at(root, migrated_store) as uri:
        yield {"root": root, "uri": uri, "versions": []}


@pytest.fixture(scope="module")
def server(store):
    """`serve` on the registry, started before any model exists; it reads the alias every second and
    shadows @challenger (when there is one) on every request."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "fmnist_exp", "serve", "--model_name", NAME, "--port", str(port),
           "--poll_s", "1", "--shadow_fraction", "1"]
    env = {**subprocess_env(), "MLFLOW_TRACKING_URI": store["uri"]}
    with running_server(cmd, base + "/live", cwd=store["root"], env=env, log="serve.log"):
        yield base


def versions(store) -> list[str]:
    """Three registered versions of small real classifiers (trained once per module), champion on none."""
    if not store["versions"]:
        for seed in (1, 2, 3):
            args = P.command("mlp", {"epochs": 1, "train_samples": 2000, "hidden_units": "32", "seed": seed})
            assert train.main(args) == 0
        runs = mlflow.search_runs(search_all_experiments=True, order_by=["attributes.start_time ASC"])
        store["versions"] = [mlflow.register_model(f"runs:/{r}/classifier", NAME).version for r in runs.run_id]
    return [str(v) for v in store["versions"]]


def champion(base: str, version: str) -> dict:
    """Move @champion and have the server read it now (POST /reload answers once it has)."""
    MlflowClient().set_registered_model_alias(NAME, "champion", version)
    status, _, state = call(base, "POST", "/reload")
    assert status == 200 and state["reloaded"], state
    return state


@pytest.mark.slow
def test_before_any_champion_it_answers_503_then_serves_the_first(server, store, dataset):
    assert call(server, "POST", "/reload")[2]["version"] is None  # a read of the registry done: nothing in it
    status, _, answer = call(server, "GET", "/ping")
    assert status == 503 and f"no registered model '{NAME}' yet" in answer["reason"]
    status, headers, answer = call(server, "POST", "/invocations", image_body(dataset))
    assert status == 503 and answer["error_code"] == "TEMPORARILY_UNAVAILABLE" and headers["retry-after"]
    assert f"no version of {NAME}@champion is loaded yet: no registered model" in answer["message"]
    assert call(server, "GET", "/live")[0] == 200  # liveness answers all along

    v1, *_ = versions(store)
    call(server, "POST", "/reload")
    status, _, answer = call(server, "GET", "/ping")
    assert status == 503 and "has no alias 'champion' yet" in answer["reason"]  # a model, no champion yet
    state = champion(server, v1)
    assert state["version"] == v1 and state["alias_version"] == v1 and state["last_error"] is None
    status, headers, answer = call(server, "POST", "/invocations", image_body(dataset, 3))
    assert status == 200 and headers["x-model-version"] == v1 and len(answer["predictions"]) == 3
    assert call(server, "GET", "/ping")[0] == 200


class Clients:
    """``n`` clients, each on its own kept-alive connection, sending one real image per request until
    stopped and never retrying: each answer (or exception) is recorded with when its request was sent."""

    def __init__(self, base: str, dataset, n: int):
        self.base, self.dataset = base, dataset
        # (sent, status or error, version, image index, the answer's probabilities)
        self.records: list[tuple[float, int | str, str | None, int, list | None]] = []
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.answered = threading.Condition(self.lock)
        self.threads = [threading.Thread(target=self.run, args=(k,)) for k in range(n)]

    def run(self, k: int) -> None:
        url = urlsplit(self.base)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=300)
        i = 0
        while not self.stop.is_set():
            index = (k * 251 + i) % 2000
            sent = time.time()
            try:
                conn.request("POST", "/invocations", image_body(self.dataset, 1, index), {"Content-Type": JSON})
                answer = conn.getresponse()
                probs = json.loads(answer.read())["predictions"][0]["probabilities"] if answer.status == 200 else None
                record = (sent, answer.status, answer.getheader("x-model-version"), index, probs)
            except Exception as e:  # counted as failed; the next request opens a new connection
                record = (sent, f"{type(e).__name__}: {e}", None, index, None)
                conn.close()
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=300)
            with self.answered:
                self.records.append(record)
                self.answered.notify_all()
            i += 1
        conn.close()

    def wait_for(self, count, timeout: float = 120) -> None:
        """Wait until ``count(records)`` is true (answers arriving are the events waited on)."""
        with self.answered:
            assert self.answered.wait_for(lambda: count(self.records), timeout), "the clients stopped getting answers"

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=300)


@pytest.mark.slow
def test_swap_under_load_fails_no_request_and_the_header_names_who_answered(server, store, dataset):
    v1, v2, _ = versions(store)
    champion(server, v1)
    before = {v: metric(server, "fmnist_serve_requests_total", version=v, code="200") for v in (v1, v2)}
    with Clients(server, dataset, 8) as clients:
        clients.wait_for(lambda records: len(records) >= 40)
        MlflowClient().set_registered_model_alias(NAME, "champion", v2)
        status, _, state = call(server, "POST", "/reload")
        swapped = time.time()
        assert status == 200 and state["version"] == v2
        clients.wait_for(lambda records: sum(r[0] > swapped for r in records) >= 40)
    records = clients.records
    failed = [r for r in records if r[1] != 200]
    assert failed == [], f"{len(failed)} of {len(records)} requests failed across the swap: {failed[:5]}"
    by_version = {v: sum(r[2] == v for r in records) for v in (v1, v2)}
    assert by_version[v1] > 0 and by_version[v2] >= 40 and by_version[v1] + by_version[v2] == len(records)
    late = [r for r in records if r[0] > swapped and r[2] != v2]
    assert late == [], "a request sent after the swap was answered by the old version"
    for v in (v1, v2):  # /metrics counts what the clients saw, by version
        assert metric(server, "fmnist_serve_requests_total", version=v, code="200") - before[v] == by_version[v]
    assert metric(server, "fmnist_serve_request_seconds_count", version=v2) >= by_version[v2]
    assert metric(server, "fmnist_serve_version") == float(v2)
    # the header names the version that computed the answer: each answer is that version's, image by image
    offline = {v: predict_in_batches(mlflow.pyfunc.load_model(f"models:/{NAME}/{v}"), dataset.x_test[:2000])
               for v in (v1, v2)}
    for _, _, version, index, probs in records:
        assert probs == pytest.approx(offline[version]["probabilities"][index], abs=1e-5), (version, index)


@pytest.mark.slow
def test_a_version_that_fails_its_example_is_kept_out_and_tried_again_on_reload(server, store, dataset):
    v1 = versions(store)[0]
    champion(server, v1)
    assert train.main(P.command("mlp", {"epochs": 1, "train_samples": 2000, "hidden_units": "32", "seed": 9})) == 0
    run_id = mlflow.search_runs(search_all_experiments=True, order_by=["attributes.start_time DESC"]).run_id[0]
    broken = str(mlflow.register_model(f"runs:/{run_id}/classifier", NAME).version)
    client = MlflowClient()
    files = Path(urlsplit(client.get_logged_model(
        client.get_model_version(NAME, broken).source.removeprefix("models:/")).artifact_location).path)
    # it loads, but its example is not an image it can answer
    (files / "serving_input_example.json").write_text(json.dumps({"inputs": [[1, 2, 3]]}))
    state = champion(server, broken)
    assert state["version"] == v1 and state["last_error"]["version"] == broken
    assert state["last_error"]["reason"].startswith("its input example got HTTP 400: ")
    assert call(server, "POST", "/invocations", image_body(dataset))[1]["x-model-version"] == v1
    # counted from here: the server's own poll may have read the move (and failed it) before champion()'s
    # /reload, which then tried it once more, so the move of this new version counts one failure or two
    failures = metric(server, "fmnist_serve_swap_failures_total", version=broken)
    assert failures in (1, 2)
    assert call(server, "POST", "/reload")[2]["last_error"]["version"] == broken  # tried again, on demand
    assert metric(server, "fmnist_serve_swap_failures_total", version=broken) == failures + 1
    assert champion(server, v1)["last_error"] is None  # back on a good version: the error is history


@pytest.mark.slow
def test_an_evicted_version_frees_its_model_and_files(store, monkeypatch):
    """In-process, the follower alone: with room for one loaded version, the one swapped out is freed
    (nothing such as a per-version web app keeps its model alive) and its download removed."""
    import gc
    import weakref

    from fmnist_exp.serving import follow

    v1, v2 = versions(store)[:2]
    monkeypatch.setattr(follow, "KEEP_LOADED", 1)
    follower = follow.Follower(NAME, "evict-test", poll_s=3600)
    client = MlflowClient()
    try:
        client.set_registered_model_alias(NAME, "evict-test", v1)
        follower.step()
        assert follower.current is not None and follower.current.version == v1
        first = weakref.ref(follower.current.model)
        client.set_registered_model_alias(NAME, "evict-test", v2)
        follower.step()
        assert follower.current.version == v2
        gc.collect()
        assert first() is None, "the evicted version's model is still alive"
        assert [p.name.split("-")[0] for p in follower._cache.iterdir()] == [f"v{v2}"]
    finally:
        client.delete_registered_model_alias(NAME, "evict-test")
        follower.close()


@pytest.mark.slow
def test_a_version_that_cannot_load_is_not_swapped_in_and_promote_rolls_back(server, store, dataset):
    v1, v2, v3 = versions(store)
    champion(server, v2)
    client = MlflowClient()
    source = client.get_model_version(NAME, v3).source  # models:/m-<id>: the run's LoggedModel
    model = client.get_logged_model(source.removeprefix("models:/"))
    shutil.rmtree(Path(urlsplit(model.artifact_location).path))  # v3's files are gone
    state = champion(server, v3)
    assert state["version"] == v2 and state["alias_version"] == v3
    assert state["last_error"]["version"] == v3 and state["last_error"]["reason"].startswith(
        f"could not load models:/{NAME}/{v3}")
    status, headers, _ = call(server, "POST", "/invocations", image_body(dataset))
    assert status == 200 and headers["x-model-version"] == v2  # the old one keeps answering
    assert call(server, "GET", "/ping")[0] == 200
    # v3 is new to the server: the move counts one failure, or two where its own 1 s poll read the move
    # before champion()'s /reload, which then tried it once more
    assert metric(server, "fmnist_serve_swap_failures_total", version=v3) in (1, 2)
    log = (store["root"] / "serve.log").read_text()
    assert f"moved to version {v3}, which is NOT served: could not load" in log

    # rollback in one command; the server follows on its own poll (every second here)
    done = cli(["promote", "--model_name", NAME, "--version", v1, "--reason", "v3 lost its files"], store["root"])
    assert done.returncode == 0, done.stderr
    wait_for_version(server, v1)
    status, headers, _ = call(server, "POST", "/invocations", image_body(dataset))
    assert status == 200 and headers["x-model-version"] == v1
    tags = client.get_model_version(NAME, v1).tags
    assert tags["promoted_reason"] == "v3 lost its files" and tags["promoted_from"] in (v3, f"v{v3}")


@pytest.mark.slow
def test_a_version_logged_by_older_code_answers_as_mlflow_models_serve_answers_it(server, store, dataset,
                                                                                   old_code):
    """A version the baseline commit's code logged (its own classifier code inside), served by `serve`
    beside the real `mlflow models serve` of the same version: the same answers to the same images."""
    from test_same_bits import TRAIN

    versions(store)
    original = ok(old_cli(["mlp", *TRAIN["mlp"]], old_code, store["uri"]), "the baseline's mlp")
    uri = MlflowClient().get_run(original["run_id"]).data.tags["classifier_uri"]
    old = str(mlflow.register_model(uri, NAME).version)
    assert champion(server, old)["version"] == old
    body = image_body(dataset, 20, 100)
    status, headers, ours = call(server, "POST", "/invocations", body)
    assert status == 200 and headers["x-model-version"] == old
    port = free_port()
    cmd = [MLFLOW, "models", "serve", "-m", f"models:/{NAME}/{old}", "--env-manager", "local", "-h", "127.0.0.1",
           "-p", str(port), "-w", "1"]
    env = {**subprocess_env(), "MLFLOW_TRACKING_URI": store["uri"]}
    with running_server(cmd, f"http://127.0.0.1:{port}/ping", cwd=store["root"], env=env, log="models-serve.log"):
        status, _, theirs = call(f"http://127.0.0.1:{port}", "POST", "/invocations", body)
    assert status == 200
    assert [p["label"] for p in ours["predictions"]] == [p["label"] for p in theirs["predictions"]]
    for a, b in zip(ours["predictions"], theirs["predictions"], strict=True):
        assert a["class_name"] == b["class_name"] and a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)


@pytest.mark.slow
def test_mlflows_four_json_formats_and_csv_answer_as_inputs_does(server, store, dataset):
    champion(server, versions(store)[0])
    images = dataset.x_test[:5]
    rows = images.reshape(5, -1).tolist()
    columns = [f"pixel{i}" for i in range(1, 785)]
    records = [dict(zip(columns, r, strict=True)) for r in rows]
    bodies = {
        "inputs": (json.dumps({"inputs": images.tolist()}), JSON),
        "instances": (json.dumps({"instances": images.tolist()}), JSON),
        "dataframe_split": (json.dumps({"dataframe_split": {"columns": columns, "data": rows}}), JSON),
        "dataframe_records": (json.dumps({"dataframe_records": records}), JSON),
        "csv": ("\n".join([",".join(columns), *(",".join(map(str, r)) for r in rows)]), "text/csv"),
    }
    answers = {}
    for form, (body, content_type) in bodies.items():
        status, headers, answer = call(server, "POST", "/invocations", body.encode(), {"Content-Type": content_type})
        assert status == 200 and headers["x-model-version"], (form, answer)
        answers[form] = answer["predictions"]
    assert all(answer == answers["inputs"] for answer in answers.values())


@pytest.mark.slow
def test_a_shadowed_challenger_counts_agreement_on_live_requests(server, store, dataset):
    v1, v2, _ = versions(store)
    champion(server, v1)
    client = MlflowClient()
    client.set_registered_model_alias(NAME, "challenger", v2)
    try:
        wait_until(lambda: call(server, "GET", "/version")[2]["shadow"]["version"] == v2)

        def shadowed() -> float:
            return sum(metric(server, "fmnist_serve_shadow_images_total", version=v1, shadow_version=v2, agree=a)
                       for a in ("true", "false"))

        for i in range(8):  # one at a time, each shadowed before the next: all 40 images are compared
            status, headers, _ = call(server, "POST", "/invocations", image_body(dataset, 5, 200 + 5 * i))
            assert status == 200 and headers["x-model-version"] == v1  # the answer is the champion's
            wait_until(lambda n=5 * (i + 1): shadowed() == n)
        images = dataset.x_test[200:240]
        labels = [mlflow.pyfunc.load_model(f"models:/{NAME}/{v}").predict(images)["label"].to_numpy()
                  for v in (v1, v2)]
        agree = int((labels[0] == labels[1]).sum())
        assert 0 < agree < 40  # two different small networks: the count means something
        assert metric(server, "fmnist_serve_shadow_images_total", version=v1, shadow_version=v2, agree="true") == agree
        assert call(server, "GET", "/version")[2]["shadow"]["agreement"][f"v{v1} vs v{v2}"] == {
            "agree": agree, "images": 40}
        tag = f"shadow_agreement/v{v1}/{socket.gethostname()}"  # each replica writes its own
        wait_until(lambda: client.get_model_version(NAME, v2).tags.get(tag, "").startswith(
            f"{agree}/40 images agree"))  # written at the follower's next poll
    finally:
        client.delete_registered_model_alias(NAME, "challenger")


@pytest.mark.slow
def test_hostile_bodies_still_get_their_4xx(server, store, dataset):
    from test_serving import BAD_REQUESTS, post

    champion(server, versions(store)[0])
    for case, (body, content_type, want_status, message_start) in BAD_REQUESTS.items():
        status, answer = post(server, body() if callable(body) else body, content_type)
        assert status == want_status, (case, status, answer)
        assert answer["message"].startswith(message_start), (case, answer["message"][:500])
        assert len(answer["message"]) < 500, case
    status, _, answer = call(server, "POST", "/invocations", image_body(dataset))
    assert status == 200 and len(answer["predictions"]) == 1


def test_webhook_signature_is_mlflows():
    """The check reads what MLflow's own webhook delivery signs (a fast test, no server)."""
    from mlflow.webhooks.delivery import _generate_hmac_signature

    body, delivery, ts = b'{"data": {}}', "d-1", str(int(time.time()))
    signed = {"x-mlflow-signature": _generate_hmac_signature("s3cret", delivery, ts, body.decode()),
              "x-mlflow-delivery-id": delivery, "x-mlflow-timestamp": ts}
    assert verify_signature("s3cret", signed, body)
    assert not verify_signature("other", signed, body)
    assert not verify_signature("s3cret", {**signed, "x-mlflow-timestamp": str(int(ts) - 3600)}, body)


@pytest.mark.slow
def test_a_registry_webhook_from_mlflow_server_wakes_it(store, dataset, tmp_path):
    """A real `mlflow server` (SQL store, webhooks allowed to a loopback http URL) sends
    model_version_alias.created to /webhook; the server, which polls only once an hour, follows at once."""
    from cryptography.fernet import Fernet

    v1, v2, _ = versions(store)
    MlflowClient().set_registered_model_alias(NAME, "champion", v1)
    tracking_port, serve_port = free_port(), free_port()
    tracking, base = f"http://127.0.0.1:{tracking_port}", f"http://127.0.0.1:{serve_port}"
    tracking_env = {**subprocess_env(), "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
                    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true", "MLFLOW_WEBHOOK_CACHE_TTL": "0",
                    "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode()}
    tracking_cmd = [MLFLOW, "server", "--backend-store-uri", store["uri"], "--host", "127.0.0.1", "--port",
                    str(tracking_port), "--workers", "1"]
    serve_cmd = [sys.executable, "-m", "fmnist_exp", "serve", "--model_name", NAME, "--port",
                 str(serve_port), "--poll_s", "3600"]
    serve_env = {**subprocess_env(), "MLFLOW_TRACKING_URI": tracking, "FMNIST_WEBHOOK_SECRET": "s3cret"}
    with (running_server(tracking_cmd, tracking + "/health", cwd=tmp_path, env=tracking_env, log="tracking.log"),
          running_server(serve_cmd, base + "/ping", cwd=tmp_path, env=serve_env, log="serve.log")):
        assert call(base, "GET", "/version")[2]["version"] == v1
        remote = MlflowClient(tracking_uri=tracking)
        remote.create_webhook(name="serve", url=f"{base}/webhook", events=["model_version_alias.created"],
                              secret="s3cret")
        remote.set_registered_model_alias(NAME, "champion", v2)  # through the server: it sends the webhook
        wait_for_version(base, v2, timeout=120)  # an hour's poll away: only the webhook can have woken it
        status, headers, _ = call(base, "POST", "/invocations", image_body(dataset))
        assert status == 200 and headers["x-model-version"] == v2
        forged = json.dumps({"data": {"name": NAME, "alias": "champion", "version": v1}}).encode()
        ts = str(int(time.time()))
        bad = base64.b64encode(hmac.new(b"guess", f"d.{ts}.".encode() + forged, hashlib.sha256).digest()).decode()
        status, _, answer = call(base, "POST", "/webhook", forged, {"Content-Type": JSON, "X-MLflow-Timestamp": ts,
                                                                     "X-MLflow-Delivery-Id": "d",
                                                                     "X-MLflow-Signature": f"v1,{bad}"})
        assert status == 401 and "does not match FMNIST_WEBHOOK_SECRET" in answer["message"]
        assert call(base, "GET", "/version")[2]["version"] == v2
