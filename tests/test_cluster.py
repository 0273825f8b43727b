"""`launch` on a real Dask cluster on loopback: a `dask scheduler` and two `dask worker`
processes, a real `mlflow server` on PostgreSQL (conftest's ``cluster``), tune workers placed by
Dask. The password reaches the tune processes only through the Dask workers' environment.

Skips where PostgreSQL cannot be had; under CI=true that is a failure (conftest.pg_admin).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import REFERENCE_OFF, STUDY, all_runs, free_port, stop_group, subprocess_env, trial_runs

from fmnist_exp import params as P
from fmnist_exp.commands import launch
from fmnist_exp.scale.storage import StorageURL

DASK = str(Path(sys.executable).parent / "dask")


@contextlib.contextmanager
def dask_cluster(tmp: Path, env: dict, worker_args: list[str], n_workers: int):
    """A `dask scheduler` and ``n_workers`` `dask worker` processes on loopback (output to tmp);
    yields the scheduler's address and the workers' addresses by name once all have joined."""
    from distributed import Client

    address = f"tcp://127.0.0.1:{free_port()}"
    procs = []

    def start(cmd, log):
        with open(tmp / log, "w") as out:
            procs.append(subprocess.Popen(cmd, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True))

    try:
        start([DASK, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard"],
              "dask-scheduler.log")
        for i in range(n_workers):
            start([DASK, "worker", address, "--name", f"dw{i}", "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
                   "--local-directory", str(tmp / "dask"), *worker_args], f"dask-worker{i}.log")
        with Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(n_workers, timeout=120)
            workers = {w["name"]: a for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
        yield address, workers
    finally:
        for p in reversed(procs):
            stop_group(p, signal.SIGTERM)


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_dask_places_two_tune_workers_on_one_study(cluster, monkeypatch, capsys):
    from fmnist_exp import cli as command_line

    tmp = cluster["tmp"]
    study_file = tmp / "s.yaml"
    study_file.write_text(STUDY.format(epochs=1, samples=800, reference=REFERENCE_OFF))
    url = StorageURL.parse(cluster["optuna"])
    monkeypatch.setenv("PGPASSWORD", url.url.password)  # the launcher's and, below, the Dask workers'
    storage = url.without_password
    overrides = {"study": str(study_file), "study_name": "dasked", "storage": storage, "n_trials": 1,
                 "register": "false", "data": "digits"}  # 8x8 images: seconds a trial; one each shows the placing
    flags = [x for k, v in overrides.items() for x in (f"--{k}", str(v))]

    # workers=0 creates the study once (what the Kubernetes study Job runs) and names the worker command;
    # in this process, as the launch below: the launcher's own process is not what is tested here, the
    # Dask-placed workers are (each a `python -m fmnist_exp tune` process a Dask worker starts)
    monkeypatch.chdir(tmp)
    code = command_line.main(["launch", "--workers", "0", *flags])
    made = capsys.readouterr()
    assert code == 0, made.out[-3000:] + made.err[-3000:]
    params = P.command("launch", overrides).tune
    assert last_json(made.out)["worker_command"] == launch.worker_command(params)
    assert "--study " not in " ".join(launch.worker_command(params)), "workers read the study from the database"

    env = {**subprocess_env(), "FMNIST_HEARTBEAT_S": "2", "FMNIST_GRACE_S": "120"}
    with dask_cluster(tmp, env, ["--resources", "tune=1"], 2) as (address, dask_workers):
        code = command_line.main(["launch", "--scheduler", address, "--workers", "2", *flags])
        out = capsys.readouterr()
    assert code == 0, out.out[-4000:] + out.err[-3000:]
    assert "python -m fmnist_exp " + " ".join(launch.tune_flags(params)) in out.out
    assert "[worker 0] [tune] trial" in out.out and "[worker 1] [tune] trial" in out.out, "lines streamed"
    result = last_json(out.out)
    assert result["failed_workers"] == 0
    assert [w["exit_code"] for w in result["workers"]] == [0, 0]
    assert [w["trials"] for w in result["workers"]] == [{"COMPLETE": 1}, {"COMPLETE": 1}]
    placed = {w["dask_worker"] for w in result["workers"]}
    assert placed == set(dask_workers.values()), "one tune worker on each Dask worker"

    study = optuna.load_study(study_name="dasked", storage=cluster["optuna"])
    assert sorted(t.number for t in study.trials) == [0, 1]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials), \
        [(t.number, t.state.name) for t in study.trials]

    runs = all_runs()
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    parents = {r.info.run_id: r for r in runs if r.info.run_name == "tune dasked"}
    assert {p.data.tags["dask_worker"] for p in parents.values()} == placed, "each parent names its Dask worker"
    assert len({p.data.tags["launch_id"] for p in parents.values()}) == 1
    trials = trial_runs(runs)
    assert sorted(int(r.data.tags["optuna_trial"]) for r in trials) == [0, 1]
    for r in trials:
        parent = parents[r.data.tags["mlflow.parentRunId"]]
        assert r.data.tags["dask_worker"] == parent.data.tags["dask_worker"]


def test_unreachable_scheduler_is_named_with_the_fix(monkeypatch, capsys):
    from fmnist_exp import cli as command_line

    monkeypatch.setattr(launch, "CONNECT_TIMEOUT_S", 1)  # a closed port fails alike within 1 s or 5
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    code = command_line.main(["launch", "--scheduler", address, "--storage", "postgresql://fmnist@127.0.0.1:5432/optuna"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"scheduler={address}: no Dask scheduler answers there" in err
    assert "dask scheduler --port 8786" in err and "--resources tune=1" in err


def test_launch_refuses_what_workers_could_not_use(capsys):
    from distributed import LocalCluster

    from fmnist_exp import cli as command_line

    # a real Dask scheduler and worker (in this process: they are not what is tested), the worker without
    # the tune resource
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=None) as dask:
        code = command_line.main(["launch", "--scheduler", dask.scheduler_address,
                                  "--storage", "postgresql://fmnist@127.0.0.1:5432/optuna"])
    err = capsys.readouterr().err
    assert code == 2
    assert "none of its 1 Dask workers offers the 'tune' resource" in err and "--resources tune=1" in err
    # a password in the storage URL would be a task argument on Dask's dashboard: refused before any connection
    code = command_line.main(["launch", "--storage", "postgresql://fmnist:s3cret@127.0.0.1:5432/optuna"])
    out = capsys.readouterr()
    assert code == 2 and "s3cret" not in out.err + out.out
    assert "--storage postgresql+psycopg://fmnist@127.0.0.1:5432/optuna" in out.err and "PGPASSWORD" in out.err
