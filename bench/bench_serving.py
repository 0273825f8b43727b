"""Serving latency and throughput: `mlflow models serve` with JSON pixels and with the compact
request (base64 uint8, base64 PNG), against the same pyfunc in-process, in one invocation.

    python bench/bench_serving.py [--requests 200] [--batch 1000] [--batches 5] [--rounds 3]

A CNN with the default architecture (trained briefly: speed does not depend on accuracy) is
registered in a throwaway store and served on a loopback port with one worker. The client keeps
one HTTP/1.1 connection open (as any client sending thousands of images a second would) and
times each request from sending the body to having parsed the JSON answer; request bodies are
encoded before the clock starts. Single-image latency over a fresh connection per request is
reported too. The machine may be shared, so each round measures every format (in-process too)
back to back, the figures are the median over rounds, and the load average is recorded.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MLFLOW, emit, free_port, machine, running_server, scratch_tracking, stdout_to_stderr  # noqa: E402


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


class Client:
    """POSTs to /invocations over one kept-alive connection (or a fresh one per request)."""

    def __init__(self, port: int, keep_alive: bool = True):
        self.port, self.keep_alive, self.conn = port, keep_alive, None

    def post(self, body: bytes) -> list:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        self.conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        answer = r.read()
        if not self.keep_alive:
            self.conn.close()
            self.conn = None
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {answer[:300]!r}")
        return json.loads(answer)["predictions"]


def timings(fn, items) -> list[float]:
    fn(items[0])  # warm-up
    out = []
    for item in items:
        t0 = time.perf_counter()
        fn(item)
        out.append(time.perf_counter() - t0)
    return out


def figures(single: list[float], batch_times: list[float], batch: int) -> dict:
    ms = lambda q: round(1000 * percentile(single, q), 2)  # noqa: E731
    return {"single_p50_ms": ms(0.5), "single_p99_ms": ms(0.99),
            "batched_images_per_s": round(batch * len(batch_times) / sum(batch_times))}


def png_b64(image) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=200, help="single-image requests per format and round")
    ap.add_argument("--batch", type=int, default=1000, help="images per batched request")
    ap.add_argument("--batches", type=int, default=5, help="batched requests per format and round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    load_before = os.getloadavg()

    import mlflow

    from fmnist_exp import data
    from fmnist_exp import params as P
    from fmnist_exp.model.classifier import PNG_B64, compact_request
    from fmnist_exp.train import job

    ds = data.load()
    x = ds.x_test
    singles = [x[i:i + 1] for i in range(args.requests)]
    batches = [x[(k * args.batch) % 9000:][:args.batch] for k in range(args.batches)]
    bodies = {  # format -> (single bodies, batch bodies), encoded before any clock starts
        "json": lambda imgs: json.dumps({"inputs": imgs.tolist()}).encode(),
        "uint8_b64": lambda imgs: json.dumps(compact_request(imgs)).encode(),
        "png_b64": lambda imgs: json.dumps({"inputs": {PNG_B64: [png_b64(i) for i in imgs]}}).encode(),
    }
    bodies = {name: ([enc(s) for s in singles], [enc(b) for b in batches]) for name, enc in bodies.items()}
    with scratch_tracking() as uri:
        p = P.network("cnn", {"epochs": 1, "train_samples": 2000})
        with stdout_to_stderr():  # the run's progress lines; stdout is the JSON alone
            res = job.train_run(p, ds=ds)
        mlflow.register_model(res.classifier_uri, "bench")
        model = mlflow.pyfunc.load_model("models:/bench/1")
        port = free_port()
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        cmd = [MLFLOW, "models", "serve", "-m", "models:/bench/1", "--env-manager", "local", "-h", "127.0.0.1",
               "-p", str(port), "-w", "1"]
        rounds = []
        with running_server(cmd, f"http://127.0.0.1:{port}/ping", env=env):
            client = Client(port)
            want = model.predict(batches[0])["label"].tolist()
            for name, (_, batch_bodies) in bodies.items():
                got = [answer["label"] for answer in client.post(batch_bodies[0])]
                assert got == want, f"{name}: labels differ from in-process"
            for _ in range(args.rounds):
                r = {"load_1m": round(os.getloadavg()[0], 2),
                     "in_process": figures(timings(model.predict, singles), timings(model.predict, batches),
                                           args.batch)}
                for name, (single_bodies, batch_bodies) in bodies.items():
                    client = Client(port)  # uvicorn closes a connection idle for 5 s, as during the last format
                    r[f"served_{name}"] = figures(timings(client.post, single_bodies),
                                                  timings(client.post, batch_bodies), args.batch)
                fresh = timings(Client(port, keep_alive=False).post, bodies["uint8_b64"][0])
                r["served_uint8_b64"]["single_p50_ms_new_connection"] = round(1000 * percentile(fresh, 0.5), 2)
                rounds.append(r)
    results = {way: {k: round(statistics.median(r[way][k] for r in rounds), 2) for k in rounds[0][way]}
               for way in rounds[0] if way != "load_1m"}

    emit({
        "machine": machine(), "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "model": f"cnn filters {p.flat()['filters']} dense {p.dense_units} batch_norm {p.batch_norm} (defaults)",
        "requests": args.requests, "batch_images": args.batch, "batches": args.batches,
        "request_bytes_per_batch": {name: len(b[1][0]) for name, b in bodies.items()},
        "median_over_rounds": results, "rounds": rounds,
    })


if __name__ == "__main__":
    main()
