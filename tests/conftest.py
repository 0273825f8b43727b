"""Shared fixtures: every budget shrinks (tiny subsets, 1-2 epochs), never the behaviour.

Tracking goes to a real MLflow sqlite store under tmp_path; entry points run through the
real `mlflow run` CLI in a subprocess.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MLFLOW = str(Path(sys.executable).parent / "mlflow")  # the CLI of this interpreter's MLflow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def dataset():
    from fmnist_exp import data

    return data.load()


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """A fresh MLflow store (sqlite + ./mlruns) under tmp_path, used in-process and by subprocesses."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


def subprocess_env() -> dict:
    env = dict(os.environ)
    # `mlflow run --env-manager local` runs `python -m fmnist_exp ...`: it must be this interpreter.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def mlflow_run(entry: str, params: dict, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """`mlflow run <repo> -e <entry> --env-manager local -P k=v ...` and return the finished process."""
    cmd = [MLFLOW, "run", str(REPO), "-e", entry, "--env-manager", "local"]
    for k, v in params.items():
        cmd += ["-P", f"{k}={v}"]
    proc = subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    return proc


def cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmnist_exp", *args], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def predict_in_batches(model, x, batch: int = 1024):
    """The servable classifier refuses batches over its limit; score a whole split in chunks."""
    import pandas as pd

    return pd.concat([model.predict(x[i:i + batch]) for i in range(0, len(x), batch)], ignore_index=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(cmd: list[str], ready_url: str, *, cwd: Path, env: dict, timeout: int = 180):
    """Start a server process (output to cwd/server.log), wait until ``ready_url`` answers,
    and stop it afterwards; fail with the log's tail if it exits or never answers."""
    log_path = cwd / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + timeout
            while True:
                if proc.poll() is not None:
                    pytest.fail("server exited:\n" + log_path.read_text()[-3000:])
                try:
                    urllib.request.urlopen(ready_url, timeout=2)
                    break
                except OSError:
                    if time.time() > deadline:
                        pytest.fail(f"no answer from {ready_url} within {timeout} s:\n" + log_path.read_text()[-3000:])
                    time.sleep(1)
            yield
        finally:
            proc.terminate()
            proc.wait(timeout=30)
