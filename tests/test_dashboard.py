"""`dashboard`: optuna-dashboard over a real study store, read in a real headless browser; bad
storages refused before any server starts."""

from __future__ import annotations

import sys

import optuna
import pytest
from conftest import cli, free_port, running_server, subprocess_env

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


@pytest.mark.parametrize("storage,expected", [
    ("sqlite:///{tmp}/nowhere/optuna.db", "no such file. Run `python -m fmnist_exp tune` first"),
    ("sqlite:///{tmp}/mlflow.db", "not an Optuna database"),
    ("postgresql://fmnist:secret@127.0.0.1:{port}/optuna", "cannot open the Optuna storage"),
])
def test_bad_storage_refused_before_the_server_starts(tmp_path, storage, expected):
    import sqlite3

    sqlite3.connect(tmp_path / "mlflow.db").execute("CREATE TABLE runs (id TEXT)").connection.close()
    port = free_port()
    url = storage.format(tmp=tmp_path, port=free_port())
    out = cli(["dashboard", "--storage", url, "--port", str(port)], tmp_path, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert expected in out.stderr and "secret" not in out.stderr
    assert "Listening" not in out.stdout + out.stderr
    assert not (tmp_path / "nowhere").exists()


def test_busy_port_refused_before_the_server_starts(study_store, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        out = cli(["dashboard", "--storage", study_store, "--port", str(taken.getsockname()[1])], tmp_path,
                  timeout=120)
    assert out.returncode == 2 and "pass another --port" in out.stderr, out.stdout + out.stderr
