"""Serving latency and throughput: `mlflow models serve` with JSON pixels and with the compact
request (base64 uint8, base64 PNG), against the same pyfunc in-process, in one invocation.

    python bench/bench_serving.py [--requests 200] [--batch 1000] [--batches 5] [--rounds 3]
    MLFLOW_TRACKING_URI=... python bench/bench_serving.py --model small=models:/NAME/1 --model big=runs:/ID/classifier

A CNN with the default architecture (trained briefly: speed does not depend on accuracy) is
registered in a throwaway store and served on a loopback port with one worker; with `--model`
(repeatable), the given served classifiers of the tracking store in $MLFLOW_TRACKING_URI instead,
each on its own port, measured one after the other in every round. The client keeps
one HTTP/1.1 connection open (as any client sending thousands of images a second would) and
times each request from sending the body to having parsed the JSON answer; request bodies are
encoded before the clock starts. Single-image latency over a fresh connection per request is
reported too. The machine may be shared, so each round measures every format (in-process too)
back to back, the figures are the median over rounds, and the load average is recorded.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
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
    ap.add_argument("--model", action="append", default=[], metavar="NAME=URI",
                    help="a served classifier (pyfunc) to measure instead of a freshly trained one; repeatable")
    args = ap.parse_args()
    given = dict(m.split("=", 1) for m in args.model)
    load_before = os.getloadavg()

    import mlflow

    from fmnist_exp import data
    from fmnist_exp import params as P
    from fmnist_exp.classifier.pyfunc import PNG_B64, compact_request
    from fmnist_exp.model.networks import fit_to_data
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
    with contextlib.ExitStack() as stack:
        if given:
            uri, models = mlflow.get_tracking_uri(), given
            described = dict(given)
        else:
            uri = stack.enter_context(scratch_tracking())
            p = fit_to_data(P.network("cnn", {"epochs": 1, "train_samples": 2000}), ds.info)[0]  # widths as logged
            with stdout_to_stderr():  # the run's progress lines; stdout is the JSON alone
                res = job.train_run(ds, p)
            mlflow.register_model(res.classifier_uri, "bench")
            models = {"default cnn": "models:/bench/1"}
            described = {"default cnn": f"cnn filters {p.flat()['filters']} dense {p.dense_units} "
                                        f"batch_norm {p.batch_norm} (defaults)"}
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        served = {}
        for name, model_uri in models.items():
            port = free_port()
            cmd = [MLFLOW, "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1",
                   "-p", str(port), "-w", "1"]
            stack.enter_context(running_server(cmd, f"http://127.0.0.1:{port}/ping", env=env))
            model = mlflow.pyfunc.load_model(model_uri)
            want = model.predict(batches[0])["label"].tolist()
            for fmt, (_, batch_bodies) in bodies.items():
                got = [answer["label"] for answer in Client(port).post(batch_bodies[0])]
                assert got == want, f"{name}, {fmt}: labels differ from in-process"
            served[name] = (model, port)
        rounds: dict[str, list[dict]] = {name: [] for name in served}
        for _ in range(args.rounds):
            for name, (model, port) in served.items():
                rounds[name].append(one_round(model, port, bodies, singles, batches, args.batch))
    results = {name: {way: {k: round(statistics.median(r[way][k] for r in rs), 2) for k in rs[0][way]}
                      for way in rs[0] if way != "load_1m"} for name, rs in rounds.items()}

    emit({
        "machine": machine(), "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "models": described, "requests": args.requests, "batch_images": args.batch, "batches": args.batches,
        "request_bytes_per_batch": {name: len(b[1][0]) for name, b in bodies.items()},
        "median_over_rounds": results if given else results["default cnn"],
        "rounds": rounds if given else rounds["default cnn"],
    })


def one_round(model, port: int, bodies: dict, singles: list, batches: list, batch: int) -> dict:
    """Every format, in-process first, back to back on one served model."""
    r = {"load_1m": round(os.getloadavg()[0], 2),
         "in_process": figures(timings(model.predict, singles), timings(model.predict, batches), batch)}
    for name, (single_bodies, batch_bodies) in bodies.items():
        client = Client(port)  # uvicorn closes a connection idle for 5 s, as during the last format
        r[f"served_{name}"] = figures(timings(client.post, single_bodies), timings(client.post, batch_bodies), batch)
    fresh = timings(Client(port, keep_alive=False).post, bodies["uint8_b64"][0])
    r["served_uint8_b64"]["single_p50_ms_new_connection"] = round(1000 * percentile(fresh, 0.5), 2)
    return r


if __name__ == "__main__":
    main()
