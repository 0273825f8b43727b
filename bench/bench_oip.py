"""`serve`'s Open Inference Protocol route beside its /invocations, on the same images, one invocation.

    python bench/bench_oip.py [--requests 200] [--batch 1000] [--batches 5] [--rounds 3]

A default CNN (1 epoch on 2,000 images: speed does not depend on accuracy) is registered as @champion in a
throwaway store and `serve` follows it on a loopback port. One client keeps one HTTP/1.1 connection per format
and times each request from sending the body to having its answer parsed (labels and probabilities as numpy
arrays); bodies are encoded before the clock starts. Formats: /invocations with the compact ``uint8_b64`` body
(the fastest MLflow-format request, BENCHMARKS.md 'Serving'); v2 JSON (UINT8 ``data`` as a flat list, outputs as
JSON); v2 binary (the binary tensor extension both ways, as tritonclient sends it). Per format: single-image
p50/p99 latency over ``--requests`` requests, and images per second over ``--batches`` batches of ``--batch``
images; medians over rounds, each round measuring every format back to back.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, free_port, machine, running_server, scratch_tracking, stdout_to_stderr  # noqa: E402

NAME = "fmnist-classifier"


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def bodies(images: np.ndarray) -> dict[str, tuple[str, bytes, dict]]:
    """(path, body, headers) of each format for ``images``."""
    n = len(images)
    v2 = {"name": "images", "shape": [n, 28, 28], "datatype": "UINT8"}
    head = json.dumps({"inputs": [{**v2, "parameters": {"binary_data_size": images.nbytes}}],
                       "outputs": [{"name": o, "parameters": {"binary_data": True}}
                                   for o in ("probabilities", "label")]}).encode()
    return {
        "invocations_uint8_b64": ("/invocations", json.dumps(
            {"inputs": {"uint8_b64": base64.b64encode(images.tobytes()).decode()}}).encode(),
            {"Content-Type": "application/json"}),
        "v2_json": (f"/v2/models/{NAME}/infer", json.dumps(
            {"inputs": [{**v2, "data": images.ravel().tolist()}],
             "outputs": [{"name": "probabilities"}, {"name": "label"}]}).encode(),
            {"Content-Type": "application/json"}),
        "v2_binary": (f"/v2/models/{NAME}/infer", head + images.tobytes(),
                      {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}),
    }


def parsed(fmt: str, raw: bytes, headers: dict) -> np.ndarray:
    """The labels of an answer, read as a client reads them."""
    if fmt == "invocations_uint8_b64":
        return np.array([row["label"] for row in json.loads(raw)["predictions"]])
    if fmt == "v2_json":
        outputs = {o["name"]: o for o in json.loads(raw)["outputs"]}
        np.asarray(outputs["probabilities"]["data"], dtype=np.float32)
        return np.asarray(outputs["label"]["data"])
    n = int(headers["inference-header-content-length"])
    head, at, out = json.loads(raw[:n]), n, {}
    for o in head["outputs"]:
        size = o["parameters"]["binary_data_size"]
        out[o["name"]] = np.frombuffer(raw[at:at + size], dtype="<f4" if o["datatype"] == "FP32" else "<i8")
        at += size
    return out["label"]


def timed(conn: http.client.HTTPConnection, fmt: str, request: tuple[str, bytes, dict]) -> tuple[float, np.ndarray]:
    path, body, headers = request
    t0 = time.perf_counter()
    conn.request("POST", path, body, headers)
    answer = conn.getresponse()
    raw = answer.read()
    if answer.status != 200:
        raise RuntimeError(f"{fmt}: HTTP {answer.status}: {raw[:300]!r}")
    labels = parsed(fmt, raw, {k.lower(): v for k, v in answer.getheaders()})
    return time.perf_counter() - t0, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import mlflow

    from fmnist_exp import data
    from fmnist_exp import params as P
    from fmnist_exp.commands import train

    ds = data.load()
    out: dict = {"machine": machine(), "started": time.strftime("%H:%M"), "rounds": []}
    with scratch_tracking() as uri, stdout_to_stderr():
        assert train.main(P.command("cnn", {"epochs": 1, "train_samples": 2000, "system_metrics": False})) == 0
        run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
        version = mlflow.register_model(f"runs:/{run.info.run_id}/classifier", NAME).version
        mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", version)
        port = free_port()
        cmd = [sys.executable, "-m", "fmnist_exp", "serve", "--model_name", NAME, "--port", str(port)]
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        with running_server(cmd, f"http://127.0.0.1:{port}/ping", env=env):
            singles = [bodies(ds.x_test[i:i + 1]) for i in range(args.requests)]
            batches = [bodies(ds.x_test[i * args.batch:(i + 1) * args.batch]) for i in range(args.batches)]
            formats = list(singles[0])
            for _ in range(args.rounds):
                round_: dict = {}
                labels: dict[str, np.ndarray] = {}
                for fmt in formats:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                    one = [timed(conn, fmt, b[fmt])[0] for b in singles]
                    many = [timed(conn, fmt, b[fmt]) for b in batches]
                    conn.close()
                    labels[fmt] = np.concatenate([answer for _, answer in many])
                    round_[fmt] = {"single_p50_ms": 1000 * percentile(one, 0.5),
                                   "single_p99_ms": 1000 * percentile(one, 0.99),
                                   "images_per_s": args.batch * len(many) / sum(t for t, _ in many),
                                   "request_mb": len(batches[0][fmt][1]) / 1e6}
                assert all(np.array_equal(labels[f], labels[formats[0]]) for f in formats)  # the same answers
                out["rounds"].append(round_)
    out["median"] = {fmt: {k: round(statistics.median(r[fmt][k] for r in out["rounds"]), 3)
                           for k in out["rounds"][0][fmt]} for fmt in out["rounds"][0]}
    emit(out)


if __name__ == "__main__":
    main()
