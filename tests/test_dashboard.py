"""`dashboard`: optuna-dashboard over a real study store, read in a real headless browser; bad
storages refused before any server starts (the refusals through the CLI's main in-process: the exit code
and what it says are the same as a subprocess's, without a Python start per case)."""

from __future__ import annotations

import sys
import threading

import optuna
import pytest
from conftest import free_port, running_server, subprocess_env

VALUES = {0: 0.25, 1: 0.5, 2: 0.75}  # trial number -> value


@pytest.fixture
def study_store(tmp_path):
    """A three-trial study written by Optuna itself into a SQLite file."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="dash-study", storage=url, direction="maximize")
    for value in VALUES.values():
        study.enqueue_trial({"dropout": value / 2})
    study.optimize(lambda t: 2 * t.suggest_float("dropout", 0.0, 0.5), n_trials=len(VALUES))
    assert {t.number: t.value for t in study.trials} == VALUES
    return url


def test_dashboard_shows_study_and_trials(study_store, tmp_path, page):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "fmnist_exp", "dashboard", "--storage", study_store, "--port", str(port)]
    with running_server(cmd, base + "/api/studies", cwd=tmp_path, env=subprocess_env(), timeout=120):
        page.goto(base + "/dashboard/")
        page.get_by_text("dash-study").first.click()  # from the study list to the study's page
        page.get_by_text("Best Trial (number=2)").wait_for()
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        history = page.inner_text("body")
        page.goto(f"{base}/dashboard/studies/1/trials")
        for number in VALUES:
            page.get_by_text(f"Trial {number}", exact=True).first.wait_for()
        body = page.inner_text("body")
    assert "dash-study" in history and "0.75" in history  # the best trial's value
    assert "3 Trials" in body and "0.25" in body  # the trial list; the first trial is shown selected
    assert "[dashboard] open http://127.0.0.1:" in (tmp_path / "server.log").read_text()


def dashboard(args: list[str], capsys) -> tuple[int, str, str]:
    """`python -m fmnist_exp dashboard ARGS` in-process, in a thread: its exit code, stdout and stderr.
    A dashboard that does not refuse serves until stopped: after 60 s the test fails saying so."""
    from fmnist_exp import cli as command_line

    capsys.readouterr()
    ended: list[int] = []
    thread = threading.Thread(target=lambda: ended.append(command_line.main(["dashboard", *args])), daemon=True)
    thread.start()
    thread.join(timeout=60)
    out, err = capsys.readouterr()
    assert not thread.is_alive(), f"the dashboard was not refused, it serves: {out + err}"
    return ended[0], out, err


@pytest.mark.parametrize("storage,expected", [
    ("sqlite:///{tmp}/nowhere/optuna.db", "no such file. Run `python -m fmnist_exp tune` first"),
    ("sqlite:///{tmp}/mlflow.db", "not an Optuna database"),
    ("postgresql://fmnist:secret@127.0.0.1:{port}/optuna", "cannot open the Optuna storage"),
])
def test_bad_storage_refused_before_the_server_starts(tmp_path, monkeypatch, capsys, storage, expected):
    import sqlite3

    monkeypatch.chdir(tmp_path)
    sqlite3.connect(tmp_path / "mlflow.db").execute("CREATE TABLE runs (id TEXT)").connection.close()
    port = free_port()
    url = storage.format(tmp=tmp_path, port=free_port())
    code, out, err = dashboard(["--storage", url, "--port", str(port)], capsys)
    assert code == 2, out + err
    assert expected in err and "secret" not in err
    assert "Listening" not in out + err
    assert not (tmp_path / "nowhere").exists()


def test_busy_port_refused_before_the_server_starts(study_store, tmp_path, monkeypatch, capsys):
    import socket

    monkeypatch.chdir(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, out, err = dashboard(["--storage", study_store, "--port", str(taken.getsockname()[1])], capsys)
    assert code == 2 and "pass another --port" in err, out + err
