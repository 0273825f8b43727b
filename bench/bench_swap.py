"""Following the alias under load: `serve` while @champion moves, beside `mlflow models serve` restarted
on each move, with the same clients and the same moves, in one invocation.

    python bench/bench_swap.py [--duration 120] [--moves 10] [--clients 32] [--mode push|poll] [--poll_s 10]
    python bench/bench_swap.py --duration 20 --moves 3 --clients 4 --skip-baseline   # a quick look

Setup, in a throwaway store (or --keep DIR): --versions small MLPs (1 epoch on 2,000 images, 32 hidden
units, seeds 1..N: real classifiers whose answers differ) registered as versions of one model,
@champion on version 1. Each side then serves it on loopback to --clients client processes (spawned:
separate interpreters, their CPU reported) that each keep one HTTP/1.1 connection and POST one
Fashion-MNIST test image after another as `{"inputs": [...]}`, never retrying: a refused connection,
a dropped one or a non-200 answer is a failed request; after one, a client waits --fail_pause_s and
reconnects for its next image.

The alias moves --moves times, spread over --duration seconds, in a sequence over the versions that
rolls back to ones in memory and moves to ones never loaded (or evicted: the server keeps
follow.KEEP_LOADED). `serve` is told with POST /reload (--mode push) or finds it by itself
(--mode poll, every --poll_s); `mlflow models serve -m models:/NAME@champion -w 1` is stopped (SIGTERM
to its process group, SIGKILL after 30 s) and started again. A move waits until the previous one is
served and 5 s more (nobody restarts a server that is still starting), so a side whose moves take
longer runs longer. The sides run one after the other: on a shared machine compare latency within
a side (steady against during swaps), and read the load average recorded with each.

Which version computed an answer is read from its probabilities: every version's answers on the
image pool are computed in-process first, and a served answer is matched to the nearest (the gap
between versions is reported); for `serve` the X-Model-Version header is checked against it.
Per move: time from the move (the registry write returned) to the first answer by the new version,
answers by another version sent after that one arrived (goal 0), failed requests and the longest
time without any answer. Latency (send to parsed answer) is split into steady and during a swap
(sent from a move until 5 s after the first answer by the new version). The server's CPU and
resident memory are sampled every second (its whole process tree) and its peak resident set read
from /proc (VmHWM) before it stops: what a Kubernetes memory request/limit must hold.
"""

from __future__ import annotations

import argparse
import calendar
import http.client
import json
import os
import pickle
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MLFLOW, REPO, emit, free_port, machine, scratch_tracking, stdout_to_stderr  # noqa: E402

NAME, ALIAS = "fmnist-classifier", "champion"
ROLLS = [2, 1, 2, 3, 1, 4, 3, 1, 2, 1]  # new, back, kept, new, back, new (evicts 2), kept, kept, evicted again, kept
SWAP_WINDOW_S = 5.0  # a request sent from a move to this long after the first answer by the new version is "during"
GRACE_S = 30.0  # SIGTERM, then SIGKILL after this long: Kubernetes' default terminationGracePeriodSeconds
MATCH_TOL = 1e-3  # a served probability row is a version's if no entry is further than this from its own


# ---------------------------------------------------------------- the clients (spawned processes)

def client(i: int, port: int, bodies_path: str, batch: int, ready, go, stop, out: str, fail_pause: float) -> None:
    """POST image after image over one kept connection until ``stop``; record every request, never retry."""
    bodies = pickle.loads(Path(bodies_path).read_bytes())
    n, k = len(bodies), (i * 97) % len(bodies)
    records, conn = [], None
    ready.put(i)
    go.wait()
    while not stop.is_set():
        k = (k + 1) % n
        t0 = time.monotonic()
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", "/invocations", bodies[k], {"Content-Type": "application/json"})
            r = conn.getresponse()
            raw = r.read()
            t1 = time.monotonic()
            ok = r.status == 200
            probs = json.loads(raw)["predictions"][0]["probabilities"] if ok else None
            records.append((t0, t1, r.status, None if ok else raw[:200].decode("latin-1"),
                            r.getheader("X-Model-Version"), k * batch, probs))
            if r.will_close:
                conn.close()
                conn = None
        except Exception as e:  # refused, reset, timed out: a failed request, and a new connection next time
            ok = False
            records.append((t0, time.monotonic(), 0, type(e).__name__, None, k * batch, None))
            if conn is not None:
                conn.close()
            conn = None
        if not ok:
            time.sleep(fail_pause)
    cpu = os.times()
    Path(out).write_bytes(pickle.dumps({"records": records, "cpu_s": cpu.user + cpu.system}))


# ---------------------------------------------------------------- the server's process tree

class Monitor(threading.Thread):
    """Samples the CPU and resident memory of a server's process tree every second; the tree's root
    may be replaced (a restart). Peak resident set (VmHWM) of each process is read by :meth:`hwm`."""

    def __init__(self, root):
        super().__init__(daemon=True)
        self.root, self.done = root, threading.Event()  # root(): the pid of the tree now, or None
        self.cpu_s, self.peak_cores, self.peak_rss, self.hwm_mb = 0.0, 0.0, 0, 0.0
        self.last: dict[int, float] = {}

    def tree(self):
        import psutil

        pid = self.root()
        try:
            p = psutil.Process(pid)
            return [p, *p.children(recursive=True)]
        except (psutil.Error, TypeError):
            return []

    def sample(self) -> tuple[dict[int, float], int]:
        import psutil

        cpu, rss = {}, 0
        for p in self.tree():
            try:
                c = p.cpu_times()
                cpu[p.pid] = c.user + c.system
                rss += p.memory_info().rss
            except psutil.Error:
                pass
        return cpu, rss

    def run(self) -> None:
        self.last, t_last = self.sample()[0], time.monotonic()  # the start-up before is not counted
        while not self.done.wait(1.0):
            (cpu, rss), now = self.sample(), time.monotonic()
            used = sum(v - self.last.get(pid, 0.0) for pid, v in cpu.items())  # a new process: all its CPU
            self.cpu_s += used
            self.peak_cores = max(self.peak_cores, used / (now - t_last))
            self.peak_rss = max(self.peak_rss, rss)
            self.last, t_last = cpu, now

    def hwm(self) -> None:
        """Keep the largest VmHWM (peak resident set, kB) of the tree's processes: call before it stops."""
        for p in self.tree():
            try:
                line = next(x for x in Path(f"/proc/{p.pid}/status").read_text().splitlines() if x.startswith("VmHWM"))
                self.hwm_mb = max(self.hwm_mb, int(line.split()[1]) / 1024)
            except (OSError, StopIteration):
                pass

    def figures(self, seconds: float) -> dict:
        return {"cpu_s": round(self.cpu_s, 1), "mean_cores": round(self.cpu_s / seconds, 2),
                "peak_cores_1s": round(self.peak_cores, 2), "peak_rss_tree_sampled_mb": round(self.peak_rss / 2**20),
                "peak_rss_vmhwm_largest_process_mb": round(self.hwm_mb)}


def get(port: int, path: str, method: str = "GET", timeout: float = 5) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def wait_ping(port: int, until: float) -> bool:
    while time.monotonic() < until:
        if get(port, "/ping", timeout=2)[0] == 200:
            return True
        time.sleep(0.2)
    return False


def start_group(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:  # a process group of its own: `mlflow models serve` starts uvicorn as a child
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def stop_group(proc: subprocess.Popen, grace: float = GRACE_S) -> bool:
    """SIGTERM to the server's process group, SIGKILL after ``grace`` seconds; whether it had to be killed."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:  # the uvicorn child too
        proc.poll()  # reaps the parent once it exits
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


# ---------------------------------------------------------------- one side

def side(kind: str, args, env: dict, bodies_path: str, work: Path, sequence: list[str]) -> dict:
    """Serve @champion (on version ``sequence[0]``) to the clients while the alias moves through the rest."""
    import multiprocessing as mp

    from mlflow import MlflowClient

    registry = MlflowClient()
    registry.set_registered_model_alias(NAME, ALIAS, sequence[0])
    port, log = free_port(), work / f"{kind}.log"
    if kind == "serve":
        cmd = [sys.executable, "-m", "fmnist_exp", "serve", "--model_name", NAME, "--alias", ALIAS,
               "--host", "127.0.0.1", "--port", str(port), "--poll_s", str(args.poll_s)]
    else:
        cmd = [MLFLOW, "models", "serve", "-m", f"models:/{NAME}@{ALIAS}", "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    proc = start_group(cmd, env, log)
    if not wait_ping(port, time.monotonic() + 300):
        stop_group(proc)
        raise SystemExit(f"{kind} never answered /ping; see {log}")
    monitor = Monitor(lambda: proc.pid)
    ctx = mp.get_context("spawn")
    ready, go, stop = ctx.Queue(), ctx.Event(), ctx.Event()
    outs = [str(work / f"{kind}-client{i}.pkl") for i in range(args.clients)]
    clients = [ctx.Process(target=client, args=(i, port, bodies_path, args.batch, ready, go, stop, outs[i],
                                                args.fail_pause_s)) for i in range(args.clients)]
    for c in clients:
        c.start()
    for _ in clients:  # every interpreter started (spawned: they import only this file) and read its images
        ready.get(timeout=300)
    load_before = os.getloadavg()[0]
    monitor.start()
    t_start = time.monotonic()
    go.set()
    moves, served = [], t_start
    for k, target in enumerate(sequence[1:], 1):  # on schedule, but not before the last move is served and settled
        time.sleep(max(0.0, t_start + k * args.duration / (args.moves + 1) - time.monotonic(),
                       served + SWAP_WINDOW_S - time.monotonic()))
        if kind == "mlflow":
            monitor.hwm()  # the server about to stop: its peak memory
        registry.set_registered_model_alias(NAME, ALIAS, target)
        move: dict[str, Any] = {"version": target, "from": sequence[k - 1], "t": time.monotonic(), "wall": time.time()}
        if kind == "serve" and args.mode == "push":
            code, body = get(port, "/reload", "POST", timeout=300)
            move["reload_s"] = round(time.monotonic() - move["t"], 2)
            move["reload_answer"] = json.loads(body).get("version") if code == 200 else f"HTTP {code}"
        elif kind == "mlflow":
            move["killed"] = stop_group(proc)  # uvicorn may wait for busy keep-alive connections
            move["stopped_s"] = round(time.monotonic() - move["t"], 2)
            proc = start_group(cmd, env, log)
        until = time.monotonic() + 300  # the move is served before the next one
        while time.monotonic() < until:
            code, body = get(port, "/version" if kind == "serve" else "/ping", timeout=2)
            if code == 200 and (kind == "mlflow" or json.loads(body).get("version") == target):
                break
            time.sleep(0.1)
        served = time.monotonic()
        move["served_s"] = round(served - move["t"], 2)  # as the driver saw it (/version or /ping)
        if kind == "serve":
            loaded = calendar.timegm(time.strptime(json.loads(body)["loaded_at"], "%Y-%m-%dT%H:%M:%SZ"))
            move["loaded_now"] = loaded >= int(move["wall"])  # loaded for this move, not kept in memory
        moves.append(move)
    time.sleep(max(0.0, t_start + args.duration - time.monotonic(), served + SWAP_WINDOW_S - time.monotonic()))
    stop.set()
    t_end = time.monotonic()
    for c in clients:
        c.join(timeout=120)
    monitor.hwm()
    monitor.done.set()
    metrics = get(port, "/metrics")[1].decode() if kind == "serve" else ""
    stop_group(proc)
    results = [pickle.loads(Path(o).read_bytes()) for o in outs]
    return {"t_start": t_start, "t_end": t_end, "moves": moves, "load_1m": [round(load_before, 2),
            round(os.getloadavg()[0], 2)], "server": monitor.figures(t_end - t_start),
            "records": [r for res in results for r in res["records"]],
            "client_cpu_s": [res["cpu_s"] for res in results],
            "swaps_total": next((float(x.split()[-1]) for x in metrics.splitlines()
                                 if x.startswith("fmnist_serve_swaps_total")), None)}


# ---------------------------------------------------------------- the figures

def pct(xs: list[float], q: float) -> float | None:
    xs = sorted(xs)
    return round(1000 * xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))], 1) if xs else None


def analyse(run: dict, expected, versions: list[str], header: bool) -> dict:
    """Per move and overall: who answered, how soon the new version did, failures and latency."""
    import numpy as np

    recs = sorted(run["records"], key=lambda r: r[0])
    ok = [r for r in recs if r[2] == 200]
    by: list[str] = []
    if ok:
        rows = np.array([r[6] for r in ok], dtype=np.float32)
        dist = np.abs(expected[:, [r[5] for r in ok]] - rows[None]).max(axis=2)  # versions x answers
        by = [versions[b] if dist[b, j] < MATCH_TOL else "?" for j, b in enumerate(dist.argmin(axis=0))]
    out: dict = {"requests": len(recs), "ok": len(ok), "failed": len(recs) - len(ok),
                 "failed_by_kind": _count(str(r[3] if r[2] == 0 else r[2])[:40] for r in recs if r[2] != 200),
                 "unidentified_answers": by.count("?")}
    if header:
        out["header_differs_from_answer"] = sum(r[4] != v for r, v in zip(ok, by, strict=True))
    moves, during, per_move = run["moves"], [], []
    ends = [m["t"] for m in moves[1:]] + [run["t_end"]]
    answered = sorted(zip((r[1] for r in ok), by, (r[0] for r in ok), strict=True))  # (arrived, version, sent)
    for m, end in zip(moves, ends, strict=True):
        first = next((t for t, v, _ in answered if m["t"] <= t < end and v == m["version"]), None)
        before = [t for t, _, _ in answered if t < m["t"]][-1:]  # the last answer before the move
        points = before + [t for t, _, _ in answered if m["t"] <= t < end] + [end]
        row = {"to": m["version"], "from": m["from"],
               **{k: m[k] for k in ("loaded_now", "reload_s", "stopped_s", "killed", "served_s") if k in m},
               "first_new_answer_s": round(first - m["t"], 2) if first else None,
               "other_version_after_first_new": sum(1 for _, v, sent in answered
                                                    if first and first < sent < end and v != m["version"]),
               "failed": sum(1 for r in recs if r[2] != 200 and m["t"] <= r[0] < end),
               "longest_without_answer_s": round(max(b - a for a, b in zip(points, points[1:], strict=False)), 2)
               if len(points) > 1 else None}
        per_move.append(row)
        during.append((m["t"], (first or end) + SWAP_WINDOW_S))
    lat_in = [r[1] - r[0] for r in ok if any(a <= r[0] < b for a, b in during)]
    lat_out = [r[1] - r[0] for r in ok if not any(a <= r[0] < b for a, b in during)]
    seconds = run["t_end"] - run["t_start"]
    firsts = [m["first_new_answer_s"] for m in per_move if m["first_new_answer_s"] is not None]
    out.update({
        "seconds": round(seconds, 1), "answers_per_s": round(len(ok) / seconds, 1),
        "moves": len(moves),
        "moves_never_answered_by_new_version": sum(m["first_new_answer_s"] is None for m in per_move),
        "first_new_answer_s_median_max": [round(statistics.median(firsts), 2), round(max(firsts), 2)]
        if firsts else None,
        "other_version_after_first_new": sum(m["other_version_after_first_new"] for m in per_move),
        "failed_during_moves": sum(m["failed"] for m in per_move),
        "longest_without_answer_s": max((m["longest_without_answer_s"] or 0) for m in per_move),
        "latency_ms_steady": {"p50": pct(lat_out, .5), "p99": pct(lat_out, .99), "n": len(lat_out)},
        "latency_ms_during_swaps": {"p50": pct(lat_in, .5), "p99": pct(lat_in, .99), "max": pct(lat_in, 1.0),
                                    "n": len(lat_in)},
        "answers_by_version": _count(by), "server": run["server"], "swaps_total": run["swaps_total"],
        "client_cpu_s": round(sum(run["client_cpu_s"]), 1),
        "client_cpu_cores": round(sum(run["client_cpu_s"]) / seconds, 2), "load_1m_before_after": run["load_1m"],
        "per_move": per_move,
    })
    if out["swaps_total"] is None:
        del out["swaps_total"]
    return out


def _count(items) -> dict:
    c: dict = {}
    for x in items:
        c[x] = c.get(x, 0) + 1
    return dict(sorted(c.items()))


# ---------------------------------------------------------------- setup and main

def setup(n_versions: int) -> tuple[list[str], dict]:
    """Train and register ``n_versions`` small MLPs (seeds 1..n); their versions and validation accuracy."""
    import keras
    import mlflow

    from fmnist_exp import data
    from fmnist_exp import params as P
    from fmnist_exp.model.networks import fit_to_data
    from fmnist_exp.train import job

    ds, versions, described = data.load(), [], {}
    for seed in range(1, n_versions + 1):
        p = fit_to_data(P.network("mlp", {"epochs": 1, "train_samples": 2000, "hidden_units": "32",
                                          "seed": seed}), ds.info)[0]
        res = job.train_run(ds, p, system_metrics=False)
        mv = mlflow.register_model(res.classifier_uri, NAME)
        versions.append(str(mv.version))
        described[str(mv.version)] = {"seed": seed, "val_accuracy": round(res.val_accuracy, 4)}
        keras.backend.clear_session()
    return versions, described


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=120, help="seconds of load per side (longer if moves wait)")
    ap.add_argument("--moves", type=int, default=10, help="alias moves per side, spread over --duration")
    ap.add_argument("--clients", type=int, default=32, help="client processes, one connection each")
    ap.add_argument("--mode", choices=["push", "poll"], default="push",
                    help="serve learns of a move by POST /reload (push) or by reading the alias every --poll_s")
    ap.add_argument("--poll_s", type=float, default=10.0)
    ap.add_argument("--versions", type=int, default=4, help="registered versions (at least 3)")
    ap.add_argument("--batch", type=int, default=1, help="images per request")
    ap.add_argument("--images", type=int, default=1000, help="test images the clients cycle through")
    ap.add_argument("--fail_pause_s", type=float, default=0.1, help="a client's wait after a failed request")
    ap.add_argument("--skip-baseline", action="store_true", help="serve only, no `mlflow models serve`")
    ap.add_argument("--keep", default="", help="a new folder for the store, logs and records, kept afterwards")
    args = ap.parse_args()
    if args.versions < 3 or args.moves < 1 or args.clients < 1:
        raise SystemExit("--versions must be at least 3, --moves and --clients at least 1")
    load_start, t0 = os.getloadavg(), time.time()

    import mlflow
    import numpy as np

    from fmnist_exp import data

    with scratch_tracking(args.keep) as uri, stdout_to_stderr():  # stdout is the JSON alone
        work = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="bench-swap-"))
        print(f"# training {args.versions} versions in {work}", file=sys.stderr, flush=True)
        versions, described = setup(args.versions)
        rolls = [v for v in ROLLS if v <= args.versions] + list(range(5, args.versions + 1))
        sequence = [versions[0]] + [versions[rolls[k % len(rolls)] - 1] for k in range(args.moves)]
        x = data.load().x_test[:args.images + args.batch]
        bodies = [json.dumps({"inputs": x[i * args.batch:(i + 1) * args.batch].tolist()}).encode()
                  for i in range(args.images // args.batch)]
        bodies_path = work / "bodies.pkl"
        bodies_path.write_bytes(pickle.dumps(bodies))
        expected = np.stack([np.stack(mlflow.pyfunc.load_model(f"models:/{NAME}/{v}").predict(x)["probabilities"]
                                      .to_list()) for v in versions]).astype(np.float32)  # versions x images x 10
        apart = min(np.abs(expected[a] - expected[b]).max(axis=1).min()
                    for a in range(len(versions)) for b in range(a))
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO),
               "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        setup_facts = {"versions": described, "sequence": sequence, "closest_versions_differ_by": float(apart),
                       "match_tolerance": MATCH_TOL, "clients": args.clients, "batch": args.batch,
                       "duration_s": args.duration, "mode": args.mode, "poll_s": args.poll_s,
                       "fail_pause_s": args.fail_pause_s,
                       "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(t0))}
        result: dict[str, Any] = {"machine": machine(), "load_1m_start_end": [round(load_start[0], 2)],
                                  "setup": setup_facts}
        for kind in ["serve"] + ([] if args.skip_baseline else ["mlflow"]):
            print(f"# {kind}: {args.clients} clients, {args.moves} moves", file=sys.stderr, flush=True)
            run = side(kind, args, env, str(bodies_path), work, sequence)
            result["serve" if kind == "serve" else "mlflow_models_serve_restarted"] = analyse(
                run, expected, versions, header=kind == "serve")
    result["load_1m_start_end"].append(round(os.getloadavg()[0], 2))
    if "mlflow_models_serve_restarted" in result:
        a, b = result["serve"], result["mlflow_models_serve_restarted"]
        median = "first_new_answer_s_median_max"
        result["ratios_mlflow_over_serve"] = {  # what following the alias saves; failures: serve's count is the goal 0
            "first_new_answer_median": round(b[median][0] / a[median][0], 1) if a[median] and b[median] else None,
            "longest_without_answer": round(b["longest_without_answer_s"] / a["longest_without_answer_s"], 1)
            if a["longest_without_answer_s"] else None}
    emit(result)
    table(result)


def table(result: dict) -> None:
    """The headline figures side by side, for a person (stderr)."""
    sides = [(k, result[k]) for k in ("serve", "mlflow_models_serve_restarted") if k in result]
    rows = [("failed requests", lambda s: s["failed"]),
            ("first answer by the new version, median / max s", lambda s: s["first_new_answer_s_median_max"]),
            ("answers by another version after it", lambda s: s["other_version_after_first_new"]),
            ("longest time without an answer, s", lambda s: s["longest_without_answer_s"]),
            ("latency steady p50 / p99 ms", lambda s: list(s["latency_ms_steady"].values())[:2]),
            ("latency during swaps p50 / p99 ms", lambda s: list(s["latency_ms_during_swaps"].values())[:2]),
            ("answers/s", lambda s: s["answers_per_s"]),
            ("server peak RSS MB (VmHWM) / peak cores", lambda s: [s["server"]["peak_rss_vmhwm_largest_process_mb"],
                                                                   s["server"]["peak_cores_1s"]]),
            ("client CPU, cores", lambda s: s["client_cpu_cores"])]
    print(f"{'':50s}" + "".join(f"{k[:24]:>26s}" for k, _ in sides), file=sys.stderr)
    for name, f in rows:
        print(f"{name:50s}" + "".join(f"{str(f(s)):>26s}" for _, s in sides), file=sys.stderr)


if __name__ == "__main__":
    main()
