"""Helpers shared by the bench scripts: a throwaway MLflow store and machine facts."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
MLFLOW = str(Path(sys.executable).parent / "mlflow")  # the CLI of this interpreter's MLflow
REPO = Path(__file__).resolve().parent.parent


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}


@contextmanager
def scratch_tracking(keep: str = ""):
    """A fresh sqlite MLflow store in a temp dir, so benchmarks never touch ./mlflow.db; in the
    (new, empty) folder ``keep`` instead when given, to look at the runs and models afterwards."""
    import mlflow

    old_cwd = os.getcwd()
    if keep:
        if Path(keep).exists():  # a kept store is never mixed with another
            raise SystemExit(f"--keep {keep}: already exists; name a new folder for the store")
        Path(keep).mkdir(parents=True)
    with (contextlib.nullcontext(str(Path(keep).resolve())) if keep else tempfile.TemporaryDirectory()) as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        os.chdir(tmp)
        mlflow.set_tracking_uri(uri)
        try:
            yield uri
        finally:
            os.chdir(old_cwd)


@contextmanager
def stdout_to_stderr():
    """Everything printed meanwhile, by this process and by the processes it starts (they inherit
    file descriptor 1: a study's background reference), goes to stderr; stdout keeps the JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def emit(result: dict) -> None:
    print(json.dumps(result, indent=2))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(cmd: list[str], ready_url: str, *, env: dict | None = None, cwd=None, timeout: int = 180):
    """Start a server process, wait until ``ready_url`` answers, stop it afterwards."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(ready_url, timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"{cmd[:3]} never answered {ready_url}") from None
                time.sleep(1)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def mlflow_run(entry: str, params: dict, cwd: str, env: dict, project: Path = REPO) -> tuple[float, str]:
    """`mlflow run PROJECT -e ENTRY --env-manager local -P k=v ...`: its wall time (process start to exit)
    and stdout; a failure stops the benchmark with the command's stderr."""
    cmd = [MLFLOW, "run", str(project), "-e", entry, "--env-manager", "local"]
    for k, v in params.items():
        cmd += ["-P", f"{k}={v}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[1:5])} failed:\n{proc.stderr[-3000:]}")
    print(f"# {entry}: {wall:.0f} s", file=sys.stderr, flush=True)
    return wall, proc.stdout
