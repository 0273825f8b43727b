"""`tune` and `register`: an Optuna study under one parent run, then the champion decision.

    python -m fmnist_exp tune --family cnn --n_trials 10
    python -m fmnist_exp register --study_name cnn --storage postgresql://USER@HOST/DB

`tune` runs (or resumes, or joins) a study, every trial a nested MLflow run; then the best trial's
model (or its ``final`` retrain) is scored once on the test split, registered through the
promotion gate (registry/) and compared with the study's reference (study/reference.py).
`register` does the second half for a study that workers ran with ``register=false``.
The CLI has checked the storage and turned SIGTERM into an interrupt before it called either
(cli.py): nothing here checks it again.
"""

from __future__ import annotations

import json

import mlflow
import optuna

from ..params import TuneArgs
from ..registry.versions import record_evidence, register_candidate
from ..study import finals, front, reference, report
from ..study.artifacts import claim_report, count_trials, log_study_inputs, log_study_views, release_report
from ..study.objective import Progress, TrainFn, freeze_survivors, make_objective, stop_if_interrupted
from ..study.setup import Setup, log_setup, open_study, prepare, sampler_seed, trials_started
from ..study.summary import Gain, Registration, SeedStats, StudySummary, print_summary
from ..train import runs, tracking


def main(args: TuneArgs) -> int:
    """The CLI's `tune`; the summary's numbers as one JSON line."""
    summary = run(args)
    print(json.dumps({k: v for k, v in summary.flat().items() if isinstance(v, (int, float, str))}))
    return 0


def main_register(args: TuneArgs) -> int:
    """The CLI's `register`."""
    summary = register_only(args)
    print(json.dumps({k: v for k, v in summary.flat().items() if isinstance(v, (int, float, str))}))
    return 0


def run(args: TuneArgs, *, train_fn: TrainFn | None = None) -> StudySummary:
    """Run (or resume, or join) the study under one parent run, then register the best model."""
    setup = prepare(args)
    with setup.storage.single_worker_guard():
        seed = sampler_seed(args.seed, setup.storage)
        study = open_study(setup, seed)
        before = trials_started(study)
        if before and setup.storage.is_sqlite:  # a resume draws on, not the first session's points again
            seed = sampler_seed(args.seed, setup.storage, before)
            study.sampler = setup.spec.make_sampler(seed)
        tracking.use_experiment(args.experiment, f"fmnist-study-{setup.study_name}")
        # the trainers' runs record system metrics (runs.system_metrics); the parent trains nothing itself
        with (runs.system_metrics(args.system_metrics),
              runs.run_that_ends(run_name=f"tune {setup.study_name}", log_system_metrics=False) as parent):
            pid = parent.info.run_id
            log_setup(setup, before, seed)
            log_study_inputs(setup)
            print(f"[tune] study {setup.study_name!r} ({setup.spec.description}) "
                  f"storage={setup.storage} trials so far={before}; "
                  f"running {setup.budget.n_trials} more, {_time_limit(setup)}", flush=True)
            try:
                study.optimize(
                    make_objective(setup, pid, train_fn),
                    n_trials=setup.budget.n_trials, timeout=setup.budget.timeout,
                    # no gc_after_trial: freeze_survivors collects after each trial where it freezes what outlives
                    # it; elsewhere the next network's clear_session collects, and one more full collection in a
                    # process holding TensorFlow would cost ~0.5 s
                    catch=(Exception,),
                    callbacks=[stop_if_interrupted, freeze_survivors, Progress(setup.budget.n_trials, pid)],
                )
            finally:
                runs.end_orphaned_children(pid)
            counts = count_trials(study, pid, epochs_per_trial=setup.budget.epochs)
            summary, render = StudySummary(counts, setup.model_name), False
            if args.register:
                registered, render = _register(setup, study, pid)
                summary = StudySummary(counts, setup.model_name, *registered)
            else:
                mlflow.set_tag("registration", "skipped: register=false (run the register entry point)")
                # no version to explain, but the last worker out still makes the page for its trials
                with setup.storage.registration_lock(setup.model_name):
                    render = claim_report(study, pid, registered_new=False)
            _study_views(study, pid, setup, render)
            runs.raise_if_interrupted()  # inside the run, so a swallowed signal ends it FAILED
    print_summary(summary)
    return summary


def _time_limit(setup: Setup) -> str:
    """The timeout in force, and whether the command line lifted or changed the study file's."""
    limit = setup.budget.timeout
    said = "no time limit" if limit is None else f"no new trial after {limit} s"
    if setup.args.timeout is not None and setup.spec.budget.timeout != limit:
        file = setup.spec.budget.timeout
        said += f" (the command line's timeout={setup.args.timeout} over the study file's {file or 'none'})"
    return said


def register_only(args: TuneArgs) -> StudySummary:
    """The `register` entry point: the champion decision for a study other workers ran."""
    setup = prepare(args, must_exist=True)
    study = optuna.load_study(study_name=setup.study_name, storage=setup.optuna_storage)
    tracking.use_experiment(args.experiment, f"fmnist-study-{setup.study_name}")
    with (runs.system_metrics(args.system_metrics),
          runs.run_that_ends(run_name=f"register {setup.study_name}", log_system_metrics=False) as parent):
        pid = parent.info.run_id
        log_setup(setup, trials_started(study))
        log_study_inputs(setup)
        counts = count_trials(study, pid, epochs_per_trial=setup.budget.epochs)
        registered, render = _register(setup, study, pid, by_name=True)  # asked for by name: always made
        summary = StudySummary(counts, setup.model_name, *registered)
        _study_views(study, pid, setup, render)
        runs.raise_if_interrupted()
    print_summary(summary)
    return summary


def _study_views(study: optuna.Study, pid: str, setup: Setup, render: bool) -> None:
    """The study-level plots and report, on this parent run only when it is this process's turn
    (study/artifacts.py claim_report); otherwise the run says where they are made."""
    if render:
        try:
            log_study_views(study, pid)
            if setup.spec.goals.multi:
                front.log_front(study, setup.spec.goals, pid)
            report.log_report(study, pid, setup.spec)
        except BaseException:
            release_report(study, pid)
            raise
    else:
        mlflow.set_tag("study_report", "made by the process that registers a new version or the last worker to "
                                       "finish (the study's user attribute study_report names its run), or by "
                                       "the register entry point")


Registered = tuple[Registration | None, SeedStats | None, Gain | None]


def _refused(setup: Setup, candidate: finals.Candidate) -> bool:
    """Whether the candidate is at chance (finals.at_chance, at the study's promote_alpha): then the study ends
    without a new champion, saying so in one line that names the test, and its run says it registered nothing."""
    why = finals.at_chance(candidate, setup.args.promote_alpha)
    if why is None:
        return False
    mlflow.set_tags({"registration": f"not registered: {why}", "final_seed_registered": "none (at chance)"})
    print(f"[tune] no new champion: the candidate (run {candidate.run_id}) is not registered, {why}", flush=True)
    return True


def _register(setup: Setup, study: optuna.Study, pid: str, *, by_name: bool = False) -> tuple[Registered, bool]:
    """Pick the candidate (maybe retraining it), register it through the promotion gate and
    measure its gain over the reference, one worker at a time (so the reference is trained once);
    and, under the same lock, whether this process makes the study's report."""
    with setup.storage.registration_lock(setup.model_name):
        # a best trial registered as it trained: its serving times measured before a reference trains beside it
        # (a final retrain, an ensemble or a distilled network is timed as it is logged)
        early = None if setup.spec.retrains else finals.pick_candidate(setup, study)
        if early is not None and _refused(setup, early[0]):  # learned nothing: no reference trained for it
            return (None, None, None), claim_report(study, pid, registered_new=by_name)
        if early is not None:
            finals.time_candidate(early[0])
        # a lone worker (SQLite) trains the reference beside the final retrain (study/reference.py)
        background = (reference.start_background(setup, pid)
                      if setup.storage.is_sqlite and _any_complete(study) else None)
        try:
            picked = finals.pick_candidate(setup, study) if setup.spec.retrains else early
            if picked is None:
                none = "no complete trial" if setup.spec.goals.plain else "no feasible complete trial"
                mlflow.set_tag("registration", f"skipped: {none}")
                return (None, None, None), claim_report(study, pid, registered_new=by_name)
            candidate, seeds = picked
            if setup.spec.retrains and _refused(setup, candidate):  # learned nothing
                return (None, None, None), claim_report(study, pid, registered_new=by_name)
            finals.check_budget(setup, candidate, pid)  # its measured cost, before the gate reads the verdict
            registration = register_candidate(candidate, setup.ds, model_name=setup.model_name,
                                              study_name=setup.study_name, family=setup.spec.family,
                                              parent_run_id=pid, promote_alpha=setup.args.promote_alpha)
            gain = reference.report(setup, candidate, pid, background)
            record_evidence(setup.study_name, registration, gain)
            new = not registration.decision.startswith("unchanged")
            return (registration, seeds, gain), claim_report(study, pid, registered_new=new or by_name)
        finally:
            if background is not None:
                background.stop()


def _any_complete(study: optuna.Study) -> bool:
    return any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
