"""Many tune workers on one study: PostgreSQL for Optuna and MLflow's backend, one real
`mlflow server` (where several workers write at once), real worker processes, one of them killed
with SIGKILL mid-trial.

Skips where PostgreSQL cannot be had (scripts/start_postgres.sh sets FMNIST_TEST_PG); under
CI=true a missing PostgreSQL is a failure, not a skip.
"""

from __future__ import annotations

import signal
import time

import mlflow
import optuna
import pytest
from conftest import (
    MODEL,
    REFERENCE_OFF,
    REFERENCE_SMALL,
    STUDY,
    all_runs,
    frozen,
    still_training,
    trial_runs,
    wait_for_epoch,
    worker,
)
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def test_two_workers_share_one_study(cluster):
    study_file = cluster["tmp"] / "s.yaml"
    # the reference is checked below (trained once, every worker's gain against it): trained, on 2 epochs
    study_file.write_text(STUDY.format(epochs=2, samples=800, reference=REFERENCE_SMALL))
    n, k = 2, 2  # workers, trials each: two processes show all that sharing a study asks
    procs = [worker(cluster, study_file, "shared", k, f"w{i}.log", grace_s=120) for i in range(n)]
    for i, p in enumerate(procs):
        assert p.wait(timeout=900) == 0, (cluster["tmp"] / f"w{i}.log").read_text()[-3000:]

    study = optuna.load_study(study_name="shared", storage=cluster["optuna"])
    numbers = [t.number for t in study.trials]
    assert len(numbers) == n * k and sorted(numbers) == list(range(n * k))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials), \
        [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in study.trials]

    runs = all_runs()
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    parents = [r for r in runs if r.info.run_name == "tune shared"]
    assert len(parents) == n
    # each worker samples with its own seed: no configuration is trained twice
    assert len({p.data.params["sampler_seed"] for p in parents}) == n
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == n * k
    by_trial = {int(r.data.tags["optuna_trial"]): r for r in trial_runs(runs)}
    assert sorted(by_trial) == numbers
    for t in study.trials:
        run = by_trial[t.number]
        assert run.data.tags["mlflow.parentRunId"] in {p.info.run_id for p in parents}
        assert float(run.data.params["dropout"]) == pytest.approx(t.params["dropout"])
        assert float(run.data.params["learning_rate"]) == pytest.approx(t.params["learning_rate"])
        assert run.info.run_id == t.user_attrs["mlflow_run_id"]

    client = MlflowClient()
    champion = client.get_model_version_by_alias(MODEL, "champion")
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert len({v.tags["source_run_id"] for v in versions}) == len(versions), "no candidate registered twice"
    aliases = [client.get_model_version(MODEL, v.version).aliases for v in versions]  # search omits aliases
    assert sum("champion" in a for a in aliases) == 1
    # the first version registered is champion; a later one only by the paired gate's evidence
    assert "is @champion" in champion.tags["alias_decision"]
    assert all("gate_p_value" in v.tags for v in versions if int(v.version) > 1)
    # that check holds vacuously when one version is registered (a later worker's best is the study's best
    # already registered): each parent either registered a version of its own or says it found it registered
    decisions = [p.data.tags["registration"] for p in parents]
    assert len(versions) + sum(d.startswith("unchanged: best model already registered as v") for d in decisions) \
        == n, decisions
    # the reference is trained once, under the registration lock, and every worker reports its gain
    [ref] = [r for r in runs if r.data.tags.get("study_reference") == "true"]
    assert {p.data.tags["gain_reference_run_id"] for p in parents} == {ref.info.run_id}
    assert mlflow.pyfunc.load_model(f"models:/{MODEL}@champion") is not None
    # the study's report is made by the process that registers a new version or finishes last, not by
    # every worker: the latest names a parent run whose page counts every trial
    claim = study.user_attrs["study_report"]
    assert claim["n_finished"] == n * k and claim["run_id"] in {p.info.run_id for p in parents}
    page = mlflow.artifacts.load_text(f"runs:/{claim['run_id']}/study/report.html")
    assert f"{n * k} trials: {n * k} complete" in page
    for p in parents:  # each parent has the report or says where it is made
        has = "study/report.html" in {a.path for a in client.list_artifacts(p.info.run_id, "study")}
        assert has != ("study_report" in p.data.tags), p.info.run_id


def test_killed_worker_trial_fails_and_is_retried(cluster):
    """A worker SIGKILLed mid-trial on a PostgreSQL study: the next worker fails its trial once its heartbeat
    is stale, runs the retry with its parameters, and ends the dead worker's runs FAILED. The runs go through
    the tracking server: the test reads them while the victim is frozen, perhaps mid-write, which would hold a
    local SQLite store's lock."""
    study_file = cluster["tmp"] / "k.yaml"
    epochs = 10
    study_file.write_text(STUDY.format(epochs=epochs, samples=3000, reference=REFERENCE_OFF))
    victim = worker(cluster, study_file, "kill", 1, "victim.log")
    # wait until the victim's trial has trained at least one epoch, then kill it without warning, frozen
    # from the check that its run is still training to the kill: the kill lands mid-trial however fast
    # the epochs go
    victim_run = wait_for_epoch(victim, cluster["tmp"] / "victim.log")
    with frozen(victim):
        still_training(victim_run.info.run_id, epochs)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    time.sleep(9)  # the grace period this test times (8 s): the victim's heartbeat is stale now

    survivor = worker(cluster, study_file, "kill", 2, "survivor.log")
    assert survivor.wait(timeout=900) == 0, (cluster["tmp"] / "survivor.log").read_text()[-3000:]

    study = optuna.load_study(study_name="kill", storage=cluster["optuna"])
    states = {t.number: t.state.name for t in study.trials}
    assert states[0] == "FAIL"
    retries = [t for t in study.trials if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == 0]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
    assert retries[0].params == study.trials[0].params
    assert len(study.trials) == 3 and list(states.values()).count("COMPLETE") == 2

    runs = {r.info.run_id: r for r in all_runs()}
    assert runs[victim_run.info.run_id].info.status == "FAILED"
    assert "no heartbeat" in runs[victim_run.info.run_id].data.tags["failure"]
    victim_parent = runs[victim_run.data.tags["mlflow.parentRunId"]]
    assert victim_parent.info.status == "FAILED"
    assert [r.info.run_name for r in runs.values() if r.info.status == "RUNNING"] == []
    assert MlflowClient().get_model_version_by_alias(MODEL, "champion")


def test_second_worker_on_sqlite_is_refused(tmp_path, tracking):
    from fmnist_exp import params as C
    from fmnist_exp.scale.storage import StorageURL

    url = StorageURL.parse(f"sqlite:///{tmp_path / 'optuna.db'}")
    with url.single_worker_guard():
        with pytest.raises(C.ConfigError, match="SQLite is not for parallel workers"):
            with url.single_worker_guard():
                pass
    with url.single_worker_guard():  # released: a later worker may start
        pass


def test_every_stale_trial_is_retried_though_one_run_cannot_be_ended(tmp_path, tracking):
    # Optuna fails all stale trials at once and then calls the callback for each in turn: a run the
    # tracking store does not hold (another store, deleted) must not leave the later trials unretried
    from fmnist_exp.scale.heartbeat import on_stale_trial

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}", heartbeat_interval=1, grace_period=1,
                                         failed_trial_callback=on_stale_trial)
    study = optuna.create_study(study_name="stale", storage=storage)
    with mlflow.start_run(run_name="trial 1") as run:
        pass
    MlflowClient().update_run(run.info.run_id, status="RUNNING")
    for run_id in ("no-such-run", run.info.run_id):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        trial.set_user_attr("mlflow_run_id", run_id)
        storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)  # past the 1 s grace period: both heartbeats are stale now
    optuna.storages.fail_stale_trials(study)
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "FAIL", "WAITING", "WAITING"], "both lost trials failed and queued again"
    ended = MlflowClient().get_run(run.info.run_id)
    assert ended.info.status == "FAILED" and ended.data.tags["trial_state"] == "FAIL"
