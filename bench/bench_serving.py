"""Serving latency and throughput: `mlflow models serve` against the same pyfunc in-process.

    python bench/bench_serving.py [--requests 200]

A CNN with the default architecture (trained briefly: speed does not depend on accuracy) is
registered in a throwaway store and served on a loopback port with one worker.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MLFLOW, emit, free_port, machine, running_server, scratch_tracking  # noqa: E402


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def post(url, payload: bytes):
    req = urllib.request.Request(url, data=payload, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()

    import mlflow

    from fmnist_exp import config as C
    from fmnist_exp import data, experiment

    ds = data.load()
    with scratch_tracking() as uri:
        p = C.resolve("cnn", {"epochs": 1, "train_samples": 2000})
        res = experiment.train_run("cnn", p, ds=ds)
        mlflow.register_model(res.classifier_uri, "bench")
        model = mlflow.pyfunc.load_model("models:/bench/1")
        one = ds.x_test[:1]
        batch = ds.x_test[:args.batch]
        model.predict(one)
        local_single = []
        for i in range(args.requests):
            t0 = time.perf_counter()
            model.predict(ds.x_test[i:i + 1])
            local_single.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(5):
            model.predict(batch)
        local_ips = 5 * len(batch) / (time.perf_counter() - t0)

        port = free_port()
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        cmd = [MLFLOW, "models", "serve", "-m", "models:/bench/1", "--env-manager", "local", "-h", "127.0.0.1",
               "-p", str(port), "-w", "1"]
        base = f"http://127.0.0.1:{port}"
        with running_server(cmd, base + "/ping", env=env):
            url = base + "/invocations"
            post(url, json.dumps({"inputs": one.tolist()}).encode())
            served_single = []
            for i in range(args.requests):
                payload = json.dumps({"inputs": ds.x_test[i:i + 1].tolist()}).encode()
                t0 = time.perf_counter()
                post(url, payload)
                served_single.append(time.perf_counter() - t0)
            payload = json.dumps({"inputs": batch.tolist()}).encode()
            t0 = time.perf_counter()
            for _ in range(5):
                post(url, payload)
            served_ips = 5 * len(batch) / (time.perf_counter() - t0)

    ms = lambda xs, q: round(1000 * percentile(xs, q), 1)  # noqa: E731
    emit({
        "machine": machine(), "model": "cnn 32,64,128 d128 bn (default architecture)", "requests": args.requests,
        "batch_images": args.batch,
        "served": {"single_p50_ms": ms(served_single, 0.5), "single_p99_ms": ms(served_single, 0.99),
                   "batched_images_per_s": round(served_ips)},
        "in_process": {"single_p50_ms": ms(local_single, 0.5), "single_p99_ms": ms(local_single, 0.99),
                       "batched_images_per_s": round(local_ips)},
        "served_single_p50_over_in_process": round(statistics.median(served_single) / statistics.median(local_single), 2),
    })


if __name__ == "__main__":
    main()
