"""Workers behind the storage-proxy: real `storage-proxy` and `tune` processes, PostgreSQL, a real `mlflow
server` (the ``cluster`` of test_scaleout), one worker or proxy killed with SIGKILL mid-trial.

The workers hold no database connection (pg_stat_activity shows only the proxy's), heartbeat
through the proxy, and a dead worker's trial is failed, retried and its runs ended FAILED by the
proxy's reaper. Skips where PostgreSQL cannot be had; under CI=true that is a failure.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time

import grpc
import optuna
import pytest
import sqlalchemy
from conftest import (
    MODEL,
    REFERENCE_OFF,
    STUDY,
    all_runs,
    cli,
    free_port,
    fresh_db,
    frozen,
    still_training,
    subprocess_env,
    trial_runs,
    wait_for_epoch,
    worker,
)
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
PROXY_APP = "fmnist-exp storage-proxy"  # the application_name of the proxy's database connections


def start_proxy(cluster, port: int, grace_s: int, log_name: str = "proxy.log") -> subprocess.Popen:
    """`python -m fmnist_exp storage-proxy` over the cluster's Optuna database on ``port``, returned
    once it answers there (output to tmp/``log_name``)."""
    from fmnist_exp.params import ConfigError
    from fmnist_exp.scale.storage import StorageURL

    log_path = cluster["tmp"] / log_name
    env = {**subprocess_env(), "MLFLOW_TRACKING_URI": cluster["tracking"], "FMNIST_HEARTBEAT_S": "2",
           "FMNIST_GRACE_S": str(grace_s)}
    cmd = [sys.executable, "-m", "fmnist_exp", "storage-proxy", "--storage", cluster["optuna"], "--port", str(port)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cluster["tmp"], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail("storage-proxy exited:\n" + log_path.read_text()[-3000:])
        try:
            StorageURL.parse(f"grpc://127.0.0.1:{port}").check()
            return proc
        except ConfigError:
            if time.time() > deadline:
                proc.kill()
                pytest.fail("storage-proxy never answered:\n" + log_path.read_text()[-3000:])
            time.sleep(0.5)


def stop_proxy(proc: subprocess.Popen, log_path) -> None:
    """SIGTERM, and check that it stopped cleanly."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=60)
    text = log_path.read_text()
    assert rc == 0 and "[storage-proxy] stopped" in text, text[-3000:]


@contextlib.contextmanager
def stopped_at_exit(procs):
    """Kill whatever worker or proxy a failing test leaves running."""
    try:
        yield
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)


def database_clients(pg_admin, db_url: str) -> set[str]:
    """application_name of every session now connected to the database of ``db_url``. A backend still
    in its startup shows an empty application_name until it has read the client's startup options
    (CI saw the proxy's own new connection so): such a session is read again until it has its name
    or is gone, for at most 5 s; one still nameless then is reported as ''."""
    _, engine = pg_admin
    query = sqlalchemy.text("SELECT pid, application_name FROM pg_stat_activity WHERE datname = :d")
    database = {"d": db_url.rsplit("/", 1)[1]}
    with engine.connect() as c:
        sessions = dict(c.execute(query, database).all())
        deadline = time.time() + 5
        while "" in sessions.values() and time.time() < deadline:
            c.rollback()  # pg_stat_activity is read once per transaction: a new one reads it afresh
            time.sleep(0.05)
            now = dict(c.execute(query, database).all())
            # a named session stays counted though it has ended since; a nameless one gone is dropped
            sessions = {pid: name or now[pid] for pid, name in sessions.items() if name or pid in now}
    return set(sessions.values())


def test_killed_worker_behind_the_proxy_is_reaped_and_two_share_its_study(cluster, pg_admin):
    """A worker behind the proxy SIGKILLed mid-trial: no worker is left to notice, so the proxy's reaper fails
    its trial, queues its retry and ends its runs FAILED. Then two workers started together behind the proxy
    share the study (one runs the retry, the other a new trial): they hold no database session (every
    session on the Optuna database is the proxy's), and both register under the proxy's lock, each
    candidate once, one champion, the lock study gone after. Between the two the proxy is started again
    with a long grace (it keeps no state: test_workers_fail_over_to_the_next_proxy_and_wait_out_a_restart):
    a short one finds the victim soon, the long one keeps two TensorFlow workers on two busy cores, whose
    heartbeat threads may starve for longer than 8 s, from being reaped alive."""
    from fmnist_exp.scale.storage import StorageURL

    study_file = cluster["tmp"] / "k.yaml"
    study_file.write_text(STUDY.format(epochs=EPOCHS, samples=3000, reference=REFERENCE_OFF))
    port = free_port()
    url = f"grpc://127.0.0.1:{port}"
    procs = [start_proxy(cluster, port, 8, "proxy-1.log")]
    with stopped_at_exit(procs):
        victim = worker(cluster, study_file, "kill", 1, "victim.log", storage=url)
        procs.append(victim)
        victim_run = wait_for_epoch(victim, cluster["tmp"] / "victim.log")
        clients = database_clients(pg_admin, cluster["optuna"])
        with frozen(victim):  # from the check that it is still training to the kill: the kill lands mid-trial
            still_training(victim_run.info.run_id, EPOCHS)
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=30)

        # no worker is left to notice: the proxy's reaper fails the trial and enqueues its retry (read
        # through the proxy: the test opens no session of its own on the Optuna database)
        client = StorageURL.parse(url).open()
        deadline = time.time() + 120
        while len(optuna.load_study(study_name="kill", storage=client).trials) < 2:
            assert time.time() < deadline, (cluster["tmp"] / "proxy-1.log").read_text()[-3000:]
            time.sleep(0.5)
        client.close()
        # the reaper queues the retry first, then ends the victim's runs: wait for that too before stopping it
        victims = (victim_run.info.run_id, victim_run.data.tags["mlflow.parentRunId"])
        while {MlflowClient().get_run(r).info.status for r in victims} != {"FAILED"}:
            assert time.time() < deadline, (cluster["tmp"] / "proxy-1.log").read_text()[-3000:]
            time.sleep(0.5)
        stop_proxy(procs[0], cluster["tmp"] / "proxy-1.log")
        second = start_proxy(cluster, port, 120, "proxy-2.log")
        procs.append(second)

        sharing = [worker(cluster, study_file, "kill", 1, f"w{i}.log", grace_s=120, storage=url) for i in range(2)]
        procs += sharing
        deadline = time.time() + 900
        while any(p.poll() is None for p in sharing) and time.time() < deadline:
            clients |= database_clients(pg_admin, cluster["optuna"])
            time.sleep(1)
        for i, p in enumerate(sharing):
            assert p.wait(timeout=60) == 0, (cluster["tmp"] / f"w{i}.log").read_text()[-3000:]
        stop_proxy(second, cluster["tmp"] / "proxy-2.log")
    assert "trial 0: worker lost: no heartbeat" in (cluster["tmp"] / "proxy-1.log").read_text()
    # every session on the Optuna database while the workers ran was the proxy's
    assert clients == {PROXY_APP}

    study = optuna.load_study(study_name="kill", storage=cluster["optuna"])
    states = {t.number: t.state.name for t in study.trials}
    assert states == {0: "FAIL", 1: "COMPLETE", 2: "COMPLETE"}
    retry = study.trials[1]
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 0
    assert retry.params == study.trials[0].params
    assert optuna.get_all_study_names(storage=cluster["optuna"]) == ["kill"]  # the lock study is gone

    runs = {r.info.run_id: r for r in all_runs()}
    assert runs[victim_run.info.run_id].info.status == "FAILED"
    assert "no heartbeat" in runs[victim_run.info.run_id].data.tags["failure"]
    victim_parent = victim_run.data.tags["mlflow.parentRunId"]
    assert runs[victim_parent].info.status == "FAILED"
    assert [r.info.run_name for r in runs.values() if r.info.status == "RUNNING"] == []
    parents = {i: r for i, r in runs.items() if r.info.run_name == "tune kill"}
    assert len(parents) == 3  # the victim's and the two sharing the study
    assert all(p.data.params["storage"] == url for p in parents.values())
    by_trial = {int(r.data.tags["optuna_trial"]): r for r in trial_runs(runs.values())}
    assert sorted(by_trial) == [0, 1, 2]
    for t in study.trials:
        run = by_trial[t.number]
        assert run.info.run_id == t.user_attrs["mlflow_run_id"]
        assert run.data.tags["mlflow.parentRunId"] in parents
        assert float(run.data.params["dropout"]) == pytest.approx(t.params["dropout"])
    # the retry and the new trial each by one of the two workers
    assert len({by_trial[n].data.tags["mlflow.parentRunId"] for n in (1, 2)} - {victim_parent}) == 2
    # both workers registered under the lock: each candidate once, one champion
    client = MlflowClient()
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert len({v.tags["source_run_id"] for v in versions}) == len(versions)
    assert client.get_model_version_by_alias(MODEL, "champion")


EPOCHS = 10  # digits; a worker is frozen mid-trial while its proxy is killed, so few epochs will do
OUTAGE_S = 14  # how long the proxy stays down: longer than the grace the proxies below judge by
GRACE_S = 10


def assert_all_accounted_for(cluster, study_name: str, n_trials: int) -> optuna.Study:
    """Every trial the workers started finished COMPLETE (no trial reaped or lost), none RUNNING in
    Optuna or MLflow, and each trial's run FINISHED."""
    study = optuna.load_study(study_name=study_name, storage=cluster["optuna"])
    states = {t.number: t.state.name for t in study.trials}
    assert states == dict.fromkeys(range(n_trials), "COMPLETE"), states
    runs = all_runs()
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    by_trial = {int(r.data.tags["optuna_trial"]): r for r in trial_runs(runs)}
    assert sorted(by_trial) == list(range(n_trials))
    assert all(r.info.status == "FINISHED" and r.data.tags["trial_state"] == "COMPLETE" for r in by_trial.values())
    assert optuna.get_all_study_names(storage=cluster["optuna"]) == [study_name]  # no lock study left
    return study


@contextlib.contextmanager
def frozen_mid_trial(proc: subprocess.Popen, log_path):
    """``proc`` frozen (conftest.frozen) at an epoch of a trial with epochs still to train; yields that
    trial's run. A trial that trained out before the freeze is let go, and the next one waited for."""
    client = MlflowClient()
    while True:
        run = wait_for_epoch(proc, log_path)
        with frozen(proc):
            if (client.get_run(run.info.run_id).info.status == "RUNNING"
                    and len(client.get_metric_history(run.info.run_id, "val_accuracy")) < EPOCHS):
                yield run
                return
        time.sleep(0.2)  # a trial past its last epoch, not yet ended: let it end before looking again


def wait_for_lines(proc: subprocess.Popen, log_path, lines: list[str], timeout: int = 60) -> None:
    """Until the log of ``proc`` holds every one of ``lines`` (or ``proc`` ended, or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not all(line in log_path.read_text() for line in lines) and proc.poll() is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)


def test_workers_fail_over_to_the_next_proxy_and_wait_out_a_restart(cluster):
    """Two proxies in the worker's URL. First, the first SIGKILLed while a trial trains and not started again:
    the worker carries on through the second, whose reaper (running all along) reaps nothing, because the
    heartbeats follow the worker to it within one beat. Then the second SIGKILLed while a trial trains, and
    started again on its port after OUTAGE_S, no proxy answering meanwhile: the worker retries until it
    answers, the restarted proxy carries on the same study (it keeps no state of its own), and the trial is
    not reaped although the outage outlasted the grace. One worker: what two workers behind one proxy share
    is test_killed_worker_behind_the_proxy_is_reaped_and_two_share_its_study's. Its runs go through the
    cluster's tracking server, not a local SQLite store: this test reads the runs while the worker is frozen,
    perhaps in the middle of a write, which would hold a SQLite store's lock (database is locked)."""
    study_file = cluster["tmp"] / "f.yaml"
    study_file.write_text(STUDY.format(epochs=EPOCHS, samples=2000, reference=REFERENCE_OFF))
    first, second = two_ports()
    url = f"grpc://127.0.0.1:{first},127.0.0.1:{second}"
    procs = [start_proxy(cluster, first, GRACE_S, "proxy-1.log"), start_proxy(cluster, second, GRACE_S, "proxy-2.log")]
    log = cluster["tmp"] / "w.log"
    switched = f"switching from storage proxy 127.0.0.1:{first} to storage proxy 127.0.0.1:{second}"
    first_down = f"storage proxy 127.0.0.1:{first} does not answer"
    with stopped_at_exit(procs):
        # three trials: two kills, each mid-trial, with a trial to spare if one trains out before a freeze
        lone = worker(cluster, study_file, "failover", 3, log.name, storage=url)
        procs.append(lone)
        # the failover: the first proxy dies mid-trial
        with frozen_mid_trial(lone, log) as failed_over:
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait(timeout=30)
        wait_for_lines(lone, log, [switched, first_down])
        # the restart: the second dies mid-trial (the first stays dead), and comes back after OUTAGE_S
        with frozen_mid_trial(lone, log) as restarted:
            procs[1].send_signal(signal.SIGKILL)
            procs[1].wait(timeout=30)
            mark = len(log.read_text())  # what the worker said before the second proxy went
        time.sleep(OUTAGE_S)  # the outage this test times (longer than the grace): a fixed sleep by design
        procs.append(start_proxy(cluster, second, GRACE_S, "proxy-3.log"))
        back = time.monotonic()
        # the worker's next call or beat goes through within the retry's longest pause (5 s)
        while " again" not in log.read_text()[mark:] and time.monotonic() - back < 60:
            time.sleep(0.2)
        recovered = time.monotonic() - back
        print(f"worker through again {recovered:.1f} s after the restarted proxy answered")
        assert " again" in log.read_text()[mark:] and recovered < 30, log.read_text()[-2000:]
        assert lone.wait(timeout=900) == 0, log.read_text()[-3000:]
        stop_proxy(procs[-1], cluster["tmp"] / "proxy-3.log")

    text = log.read_text()
    before, after = text[:mark], text[mark:]
    assert switched in before, text[-3000:]
    assert first_down in before, text[-3000:]
    assert f"storage proxy 127.0.0.1:{second} does not answer" in after, text[-3000:]
    assert f"storage proxy 127.0.0.1:{second} answers again" in after, text[-3000:]
    assert "worker lost" not in (cluster["tmp"] / "proxy-2.log").read_text()  # the second, before its kill
    assert "worker lost" not in (cluster["tmp"] / "proxy-3.log").read_text()  # the second, restarted
    # the trials in flight at the kills finished COMPLETE as themselves: not reaped, not retried under another number
    study = assert_all_accounted_for(cluster, "failover", 3)
    done = {t.user_attrs["mlflow_run_id"] for t in study.trials}
    assert failed_over.info.run_id in done and restarted.info.run_id in done
    [parent] = [r for r in all_runs() if r.info.run_name == "tune failover"]
    assert parent.data.params["storage"] == url


def test_a_worker_gives_up_on_a_proxy_that_stays_away(cluster, monkeypatch):
    """The proxy SIGKILLed mid-trial and not started again: after FMNIST_PROXY_RETRY_S the worker
    says so and stops (exit 1), its runs ended FAILED. The trial, which nobody could record,
    stays RUNNING until a proxy runs again; that proxy's reaper then fails and retries it."""
    monkeypatch.setenv("FMNIST_PROXY_RETRY_S", "10")
    study_file = cluster["tmp"] / "g.yaml"
    study_file.write_text(STUDY.format(epochs=EPOCHS, samples=3000, reference=REFERENCE_OFF))
    port = free_port()
    procs = [start_proxy(cluster, port, GRACE_S, "proxy-1.log")]
    log = cluster["tmp"] / "w.log"
    with stopped_at_exit(procs):
        lone = worker(cluster, study_file, "gone", 1, log.name, storage=f"grpc://127.0.0.1:{port}")
        procs.append(lone)
        trial_run = wait_for_epoch(lone, log)
        with frozen(lone):  # from the check that the trial still trains to the kill: the proxy dies mid-trial
            still_training(trial_run.info.run_id, EPOCHS)
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait(timeout=30)
            killed = time.monotonic()
        assert lone.wait(timeout=300) == 1, log.read_text()[-3000:]
        took = time.monotonic() - killed
        text = log.read_text()
        assert f"[storage] giving up: no storage proxy answered at 127.0.0.1:{port} for 10 s" in text, text[-3000:]
        assert "FMNIST_PROXY_RETRY_S" in text and took < 120, took
        runs = {r.info.run_id: r for r in all_runs()}
        assert runs[trial_run.info.run_id].info.status == "FAILED"
        assert runs[trial_run.data.tags["mlflow.parentRunId"]].info.status == "FAILED"
        assert [r.info.run_name for r in runs.values() if r.info.status == "RUNNING"] == []
        storage = optuna.storages.RDBStorage(cluster["optuna"])
        study_id = storage.get_study_id_from_name("gone")
        assert [t.state.name for t in storage.get_all_trials(study_id)] == ["RUNNING"]

        procs.append(start_proxy(cluster, port, GRACE_S, "proxy-2.log"))
        deadline = time.time() + 120
        while storage.get_all_trials(study_id)[0].state.name == "RUNNING":
            assert time.time() < deadline, (cluster["tmp"] / "proxy-2.log").read_text()[-3000:]
            time.sleep(0.5)
        stop_proxy(procs[-1], cluster["tmp"] / "proxy-2.log")
    states = [t.state.name for t in storage.get_all_trials(study_id)]
    storage.engine.dispose()
    assert states == ["FAIL", "WAITING"]  # failed, and its retry queued for the next worker
    assert "trial 0: worker lost: no heartbeat" in (cluster["tmp"] / "proxy-2.log").read_text()
    assert MlflowClient().get_run(trial_run.info.run_id).data.tags["trial_state"] == "FAIL"


@pytest.fixture
def bare(pg_admin, tmp_path):
    """An Optuna database and a local tracking store: enough for proxies and in-process clients."""
    return {"tracking": f"sqlite:///{tmp_path / 'mlflow.db'}", "optuna": fresh_db(pg_admin, "optuna"), "tmp": tmp_path}


def two_ports() -> tuple[int, int]:
    first = free_port()
    return first, next(p for p in iter(free_port, None) if p != first)


def test_a_silent_proxy_is_left_for_the_next(bare):
    """A proxy that stops answering without closing its connections (SIGSTOP: a host that froze or
    dropped off the network) fails the call in flight within the keepalive's time, and the call
    goes through the next proxy, which had never seen the trial."""
    from fmnist_exp.scale.proxy_client import KEEPALIVE_S
    from fmnist_exp.scale.storage import StorageURL

    first, second = two_ports()
    procs = [start_proxy(bare, first, 60, "proxy-1.log"), start_proxy(bare, second, 60, "proxy-2.log")]
    with stopped_at_exit(procs):
        storage = StorageURL.parse(f"grpc://127.0.0.1:{first},127.0.0.1:{second}").open()
        study = optuna.create_study(study_name="silent", storage=storage, direction="maximize")
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        procs[0].send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        trial.suggest_float("y", 0.0, 1.0)  # its parameter write reaches the second proxy
        took = time.monotonic() - frozen
        study.tell(trial, 0.5)
        storage.close()
    assert took < 2 * KEEPALIVE_S + 10, took
    [done] = optuna.load_study(study_name="silent", storage=bare["optuna"]).trials
    assert done.state.name == "COMPLETE" and set(done.params) == {"x", "y"}


def test_a_running_trial_that_never_beat_is_failed_and_retried(bare):
    """What a trial creation retried after its answer was lost with a proxy leaves behind: a
    RUNNING trial no worker knows, which never beats. Optuna's stale-trial query passes over
    trials without a heartbeat; the proxy's reaper fails and retries it after a grace period."""
    port = free_port()
    procs = [start_proxy(bare, port, 3)]
    with stopped_at_exit(procs):
        study = optuna.create_study(study_name="orphan", storage=bare["optuna"])  # no heartbeat at all
        study.ask()
        deadline = time.time() + 60
        while study.trials[0].state.name == "RUNNING":
            assert time.time() < deadline, (bare["tmp"] / "proxy.log").read_text()[-3000:]
            time.sleep(0.5)
        stop_proxy(procs[0], bare["tmp"] / "proxy.log")
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"]
    assert "trial 0 of 'orphan': RUNNING without a heartbeat for 3 s; failed" in (bare["tmp"] / "proxy.log").read_text()


class AnswerLost(grpc.RpcError):
    """What a client sees when the proxy dies after its write landed and before it answered."""

    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "the answer was lost with the proxy (injected)"


def test_a_write_whose_answer_was_lost_is_not_refused_as_done_twice(bare):
    """A write that landed, its answer lost: the client sends it again. A parameter may be set twice;
    a trial's final state may not, and the proxy refuses it: the client finds it written, which is
    success, instead of failing the trial it has just finished."""
    from optuna.distributions import FloatDistribution
    from optuna.storages import GrpcStorageProxy

    from fmnist_exp.scale.storage import StorageURL

    def answer_lost_once(write):
        lost = [AnswerLost()]

        def call(client, *args, **kwargs):
            result = write(client, *args, **kwargs)  # through the real proxy into PostgreSQL
            if lost:
                raise lost.pop()
            return result
        return call

    port = free_port()
    procs = [start_proxy(bare, port, 60)]
    with stopped_at_exit(procs):
        client = StorageURL.parse(f"grpc://127.0.0.1:{port}").open()
        trial_id = optuna.create_study(study_name="lost", storage=client).ask()._trial_id
        client._retried("set_trial_param", answer_lost_once(GrpcStorageProxy.set_trial_param),
                        trial_id, "x", 0.25, FloatDistribution(0.0, 1.0))
        assert client._retried("set_trial_state_values", answer_lost_once(GrpcStorageProxy.set_trial_state_values),
                               trial_id, state=optuna.trial.TrialState.COMPLETE, values=[0.5]) is True
        with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # a real second write is still refused
            client.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        client.close()
        stop_proxy(procs[0], bare["tmp"] / "proxy.log")
    [trial] = optuna.load_study(study_name="lost", storage=bare["optuna"]).trials
    assert trial.params == {"x": 0.25} and trial.state.name == "COMPLETE" and trial.values == [0.5]


def test_proxy_urls_are_checked_before_any_run(tracking, tmp_path, capfd):
    """The tune command in this process (its exit code is what `python -m fmnist_exp` exits with); the
    storage-proxy command in one of its own, since a server that failed to refuse would never return."""
    import mlflow

    from fmnist_exp import cli as command_line
    from fmnist_exp.scale.storage import StorageURL

    url = StorageURL.parse("grpc://proxy-host")
    assert str(url) == "grpc://proxy-host:13000" and url.is_grpc and url.where == "storage proxy proxy-host:13000"

    port = free_port()  # nothing listens there
    capfd.readouterr()
    code = command_line.main(["tune", "--family", "mlp", "--storage", f"grpc://127.0.0.1:{port}"])
    err = capfd.readouterr().err
    assert code == 2, err[-2000:]
    assert f"storage proxy 127.0.0.1:{port}: nothing listens there" in err
    assert "storage-proxy --storage postgresql://" in err  # and what to do
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []

    out = cli(["storage-proxy", "--storage", f"sqlite:///{tmp_path / 'optuna.db'}"], cwd=tmp_path)
    assert out.returncode == 2 and "SQLite is for one" in out.stderr, out.stderr[-2000:]
