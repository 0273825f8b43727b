"""`tune`: an Optuna study in which every trial is a nested MLflow run.

One parent run per invocation; trials are child runs named ``trial <n>`` with their
parameters, per-epoch curves, final validation accuracy, state and (when complete) model.
Pruning watches per-epoch validation accuracy. Re-running with the same study name and
storage resumes the study. After the study the best trial's model (or its ``final`` retrain) is
scored once on the test split, registered through the promotion gate (registry.py) and
compared with the study's reference (reference.py).

    python -m fmnist_exp tune --family cnn --n_trials 10
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
import optuna

from . import config as C
from . import data as D
from . import experiment, reference, registry, report, space, storage, tracking
from .console import duration


class PruningCallback(keras.callbacks.Callback):
    """Reports validation accuracy each epoch; stops training when the pruner says so."""

    def __init__(self, trial: optuna.Trial):
        super().__init__()
        self.trial = trial
        self.pruned = False

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(C.VAL_ACC)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            self.pruned = True
            self.model.stop_training = True


class Progress:
    """One console line per finished trial (state, value, epochs trained, the trial's time, best
    so far, time since start) and the trial's state on its MLflow run."""

    def __init__(self, n_trials: int, parent_run_id: str):
        self.n_trials, self.parent_run_id = n_trials, parent_run_id
        self.t0 = time.perf_counter()
        self.done = 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.done += 1
        state = trial.state.name
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            mlflow.MlflowClient().set_tag(run_id, "trial_state", state)
        try:
            best = f"{study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:
            best = "none yet"
        value = f"{trial.value:.4f}" if trial.value is not None else "-"
        epochs = trial.user_attrs.get("epochs_run", len(trial.intermediate_values))
        took = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else 0.0
        elapsed = time.perf_counter() - self.t0
        total = self.n_trials or "?"
        print(f"[tune] trial {trial.number} ({self.done}/{total}) {state:<8} value={value} epochs={epochs} "
              f"time={duration(took)} best={best} elapsed={duration(elapsed)}", flush=True)
        if trial.state == optuna.trial.TrialState.COMPLETE:
            mlflow.log_metric("best_value", study.best_value, step=trial.number, run_id=self.parent_run_id)


def stop_if_interrupted(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """After each trial: a Ctrl-C or SIGTERM that a storage call turned into a failed trial
    still stops the worker (runs end FAILED, exit code 130), as one that reached it directly."""
    tracking.raise_if_interrupted()


def make_objective(spec: space.StudySpec, base: dict, ds: D.Dataset, study_name: str, parent_run_id: str,
                   train_fn=None):
    """The objective: suggest, train one nested run, return validation accuracy.

    ``train_fn`` defaults to :func:`experiment.train_in_run`; tests pass a wrapper that
    raises in one trial to show the study survives it.
    """
    train_fn = train_fn or experiment.train_in_run

    def objective(trial: optuna.Trial) -> float:
        suggestion = space.suggest(trial, spec.space)
        p = C.resolve(spec.family, {**base, **suggestion})
        tags = {"optuna_study": study_name, "optuna_trial": str(trial.number), "trial_state": "RUNNING"}
        with mlflow.start_run(run_name=f"trial {trial.number}", nested=True, tags=tags) as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            trial.set_user_attr("mlflow_parent_run_id", parent_run_id)
            prune = PruningCallback(trial)
            try:
                result = train_fn(spec.family, p, ds=ds, evaluate_test=False, prune_check=prune, extra_tags=tags)
            except Exception as e:
                mlflow.set_tags({"trial_state": "FAIL", "failure": f"{type(e).__name__}: {e}"[:5000]})
                raise
            trial.set_user_attr("epochs_run", int(result.metrics["epochs_run"]))
            if result.pruned:
                mlflow.set_tag("trial_state", "PRUNED")
            else:
                trial.set_user_attr("model_uri", result.model_uri)
                trial.set_user_attr("classifier_uri", result.classifier_uri)
                trial.set_user_attr("config", suggestion)
        if result.pruned:  # raised after the run ended, so a pruned run is FINISHED, not FAILED
            raise optuna.TrialPruned(f"pruned after epoch {result.metrics['epochs_run']}")
        return result.metrics["val_final_accuracy"]

    return objective


def pick_candidate(study: optuna.Study, spec: space.StudySpec, base: dict, ds: D.Dataset):
    """The best trial's model, or (when the study file has a ``final``) the best configuration
    retrained with that budget in nested ``final`` runs, one per seed; of several seeds, the one
    with the best validation accuracy (never the test accuracy) is the candidate."""
    try:
        best = study.best_trial
    except ValueError:
        return None
    if not spec.retrains:
        return registry.Candidate(best.user_attrs["mlflow_run_id"], best.user_attrs["model_uri"],
                                  best.user_attrs["classifier_uri"], best.value, best.number, "best trial")
    first = {**base, **spec.final}["seed"]
    seeds = list(range(first, first + spec.final_seeds))
    finals = [final_run(study.study_name, spec, base, best, ds, seed) for seed in seeds]
    by_val = max(finals, key=lambda cand: cand.val_accuracy)
    chosen = ensemble_run(study.study_name, spec, base, best, finals, seeds, ds) if spec.final_ensemble else by_val
    if len(finals) > 1:  # the spread a seed alone makes, next to the gain a study claims
        for cand in finals:
            registry.score_candidate(cand, ds)
        accs = [cand.test_metrics[C.TEST_ACC] for cand in finals]
        registered = ENSEMBLE if spec.final_ensemble else seeds[finals.index(by_val)]
        seed_stats = {"final_seeds": seeds, "final_seeds_val_accuracy": [c.val_accuracy for c in finals],
                      "final_seeds_test_accuracy": accs, "final_seeds_test_accuracy_mean": float(np.mean(accs)),
                      "final_seeds_test_accuracy_std": float(np.std(accs, ddof=1)),
                      "final_seed_registered": registered}
        mlflow.log_metrics({"final_seeds_n": len(accs), **{k: v for k, v in seed_stats.items()
                                                            if k.endswith(("_mean", "_std"))}})
        mlflow.set_tag("final_seed_registered", str(registered))
        if spec.final_ensemble:
            seed_stats.update(ensemble_gain(chosen, by_val, seeds[finals.index(by_val)], ds))
        chosen.seed_stats = seed_stats
    return chosen


def ensemble_gain(ens: registry.Candidate, seed_model: registry.Candidate, seed: int, ds: D.Dataset) -> dict:
    """What averaging bought: the ensemble against the seed that would have been registered
    without it (the best validation accuracy), paired on the test images, on the parent run.
    A report, not a choice: ``final.ensemble`` was decided in the study file."""
    from . import stats

    registry.score_candidate(ens, ds)
    cmp = stats.compare(ds.y_test, ens.test_labels, seed_model.test_labels)
    fields = {**cmp.fields("ensemble_gain_", "ensemble", "seed"), "ensemble_gain_seed": seed}
    mlflow.log_metrics(fields)
    mlflow.set_tag("ensemble_gain", cmp.describe())
    print(f"[tune] ensemble over seed {seed} (the best validation accuracy): {cmp.describe()}", flush=True)
    return {**fields, "ensemble_gain": cmp.describe()}


ENSEMBLE = "ensemble"  # final_seed_registered when the seeds' average is registered


def _finished(filter_string: str, trial_number: int, origin: str) -> registry.Candidate | None:
    """A finished run of a resumed study that logged its models, as the candidate it was."""
    done = mlflow.search_runs(filter_string=f"{filter_string} and attributes.status = 'FINISHED'",
                              output_format="list")
    done = [r for r in done if r.data.tags.get("model_uri")]
    if not done:
        return None
    r = done[0]
    return registry.Candidate(r.info.run_id, r.data.tags["model_uri"], r.data.tags["classifier_uri"],
                              r.data.metrics["val_final_accuracy"], trial_number, origin)


def final_run(study_name: str, spec: space.StudySpec, base: dict, best: optuna.trial.FrozenTrial, ds: D.Dataset,
              seed: int) -> registry.Candidate:
    """One final retrain of the best configuration with ``seed``; a resumed study with the same
    best reuses its finished run instead of training it again."""
    p = C.resolve(spec.family, {**base, **best.user_attrs["config"], **spec.final, "seed": seed})
    tags = {"optuna_study": study_name, "final_of_trial": str(best.number), "final_seed": str(seed)}
    done = _finished(f"tags.optuna_study = '{study_name}' and tags.final_of_trial = '{best.number}' "
                     f"and tags.final_seed = '{seed}'", best.number, "final retrain")
    if done:
        return done
    name = f"final (trial {best.number})" if spec.final_seeds == 1 else f"final (trial {best.number}, seed {seed})"
    print(f"[tune] {name}: retraining with {spec.final}", flush=True)
    with mlflow.start_run(run_name=name, nested=True, tags=tags) as run:
        res = experiment.train_in_run(spec.family, p, ds=ds, evaluate_test=False, extra_tags=tags, echo="[tune] final")
    return registry.Candidate(run.info.run_id, res.model_uri, res.classifier_uri, res.metrics["val_final_accuracy"],
                              best.number, "final retrain")


def ensemble_run(study_name: str, spec: space.StudySpec, base: dict, best: optuna.trial.FrozenTrial,
                 finals: list[registry.Candidate], seeds: list[int], ds: D.Dataset) -> registry.Candidate:
    """The average of the final retrains' models (``final.ensemble``), logged in a nested run of
    its own; a resumed study with the same members reuses it."""
    from . import ensemble

    members = ",".join(c.run_id for c in finals)
    tags = {"optuna_study": study_name, "final_of_trial": str(best.number), ensemble.MEMBERS_TAG: members}
    done = _finished(f"tags.optuna_study = '{study_name}' and tags.{ensemble.MEMBERS_TAG} = '{members}'",
                     best.number, "ensemble of final retrains")
    if done:
        return done
    p = C.resolve(spec.family, {**base, **best.user_attrs["config"], **spec.final, "seed": seeds[0]})
    models = [mlflow.keras.load_model(c.model_uri) for c in finals]
    with mlflow.start_run(run_name=f"ensemble (trial {best.number}, seeds {seeds[0]}-{seeds[-1]})", nested=True,
                          tags=tags) as run:
        res, _ = ensemble.log_in_run(spec.family, p, models, seeds, ds, member_run_ids=[c.run_id for c in finals],
                                     echo="[tune]")
    return registry.Candidate(run.info.run_id, res.model_uri, res.classifier_uri, res.metrics["val_final_accuracy"],
                              best.number, "ensemble of final retrains")


def resolve_budget(args: dict, spec: space.StudySpec) -> dict:
    b = dict(spec.budget)
    for key in ("n_trials", "timeout", "epochs"):
        if args[key]:
            b[key] = args[key]
    if args["train_samples"] >= 0:
        b["train_samples"] = args["train_samples"]
    return b


@dataclass
class Setup:
    spec: space.StudySpec
    budget: dict
    base: dict
    ds: D.Dataset
    study_name: str
    storage: storage.StorageURL
    optuna_storage: optuna.storages.BaseStorage  # opened once, shared by every step


def prepare(args: dict, *, must_exist: bool = False) -> Setup:
    """Check everything that can be wrong (tracking server, storage, study, study file, budget,
    data) before any work, and before any MLflow run is started."""
    url = storage.preflight(args["storage"])
    study_name = args["study_name"] or space.resolve_path(args["study"], args["family"]).stem
    opened = _until_no_race(url.open, url)
    try:
        stored = optuna.load_study(study_name=study_name, storage=opened).user_attrs
    except KeyError:
        if must_exist:
            raise C.ConfigError(f"no study {study_name!r} in {url.where}: check study_name and storage") from None
        stored = None
    spec = study_spec(args, study_name, stored)
    reference.check_run(spec)
    budget = resolve_budget(args, spec)
    base = {**spec.fixed, "epochs": budget["epochs"], "train_samples": budget["train_samples"],
            "seed": args["seed"], "data_dir": args["data_dir"]}
    C.resolve(spec.family, base)
    ds = D.load(args["data_dir"] or None)
    return Setup(spec, budget, base, ds, study_name, url, opened)


def study_spec(args: dict, study_name: str, stored: dict | None) -> space.StudySpec:
    """The study file a command works with. An existing study carries its own (stored when it was
    created): its family wins, a contradicting ``family`` is refused, and without a ``study``
    argument its stored file is used, so `register` needs only study_name and storage."""
    if not stored or STUDY_TEXT not in stored:
        return space.load(args["study"], args["family"])  # a new study, or one made before files were stored
    family = stored[STUDY_FAMILY]
    if args["family"] and args["family"] != family:
        raise C.ConfigError(f"study {study_name!r} tunes family {family!r} (recorded on the study when it was "
                            f"created), not family={args['family']!r}: leave family empty to use the study's")
    if args["study"]:
        return space.load(args["study"], family)
    return space.parse(stored[STUDY_TEXT], Path(stored[STUDY_FILE]), family)


# Study user attributes that make a study self-describing.
STUDY_FAMILY, STUDY_FILE, STUDY_TEXT = "family", "study_file", "study_file_text"


def _until_no_race(fn, url: storage.StorageURL):
    """Workers that start together may race to create Optuna's tables or the study itself; the
    loser of such a race simply tries again. Wrong credentials and the like are ConfigErrors
    and pass straight through."""
    for attempt in range(5):
        try:
            return fn()
        except C.ConfigError:
            raise
        except Exception as e:
            if attempt == 4:
                raise url.config_error(e) from None
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def sampler_seed(seed: int, url: storage.StorageURL) -> int:
    """The sampler's seed. A lone worker (SQLite) uses ``seed``, so its search replays. Workers
    sharing a database draw one each: with one seed they would all propose the same random startup
    configurations, and TPE's the same answers to the same history, training each one N times.
    The seed drawn is logged on the worker's parent run (``sampler_seed``)."""
    return seed if url.is_sqlite else random.SystemRandom().randrange(2**31)


def open_study(setup: Setup, seed: int) -> optuna.Study:
    """Create or join the study; a study created here records its family and study file."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress lines below say it better

    def create() -> optuna.Study:
        study = optuna.create_study(
            study_name=setup.study_name, storage=setup.optuna_storage, direction="maximize", load_if_exists=True,
            sampler=setup.spec.make_sampler(seed), pruner=setup.spec.make_pruner(),
        )
        if STUDY_TEXT not in study.user_attrs:
            study.set_user_attr(STUDY_FAMILY, setup.spec.family)
            study.set_user_attr(STUDY_FILE, setup.spec.path.name)
            study.set_user_attr(STUDY_TEXT, setup.spec.text)
        for point in setup.spec.enqueue:  # known-good starting points, once per study
            study.enqueue_trial(space.as_trial_params(setup.spec.space, point), skip_if_exists=True)
        return study

    return _until_no_race(create, setup.storage)


def trials_started(study: optuna.Study) -> int:
    """Trials that ran or run; enqueued ones still WAITING do not make a study 'resumed'."""
    return sum(t.state != optuna.trial.TrialState.WAITING for t in study.trials)


def _log_setup(setup: Setup, args: dict, before: int, sampler_seed: int | None = None) -> None:
    spec = setup.spec
    mlflow.set_tags({"family": spec.family, "arch": f"optuna study {setup.study_name}",
                     "optuna_study": setup.study_name, "study_description": spec.description,
                     "resumed": str(before > 0).lower()})
    # storage: the redacted form (under `mlflow run` MLflow has logged the -P value itself already)
    tracking.log_params({**args, "family": spec.family, "storage": str(setup.storage), "study_file": str(spec.path)})
    tracking.log_params({f"budget_{k}": v for k, v in setup.budget.items()})
    tracking.log_params({"pruner": spec.make_pruner().__class__.__name__, "pruner_config": spec.pruner,
                         "sampler": spec.make_sampler(0).__class__.__name__,
                         "optuna_storage": str(setup.storage), "trials_before": before,
                         **({"sampler_seed": sampler_seed} if sampler_seed is not None else {})})
    tracking.log_params(setup.ds.describe())
    mlflow.log_text(spec.text, f"study/{spec.path.name}")


def _register(setup: Setup, study: optuna.Study, pid: str, model_name: str, promote_alpha: float) -> dict:
    """Pick the candidate (maybe retraining it), register it through the promotion gate and
    measure its gain over the reference, one worker at a time (so the reference is trained once)."""
    with setup.storage.registration_lock(model_name):
        # a lone worker (SQLite) trains the reference beside the final retrain (reference.py)
        background = (reference.start_background(setup.spec, setup.base, setup.study_name, pid)
                      if setup.storage.is_sqlite and _any_complete(study) else None)
        try:
            candidate = pick_candidate(study, setup.spec, setup.base, setup.ds)
            if candidate is None:
                mlflow.set_tag("registration", "skipped: no complete trial")
                return {}
            out = registry.register_candidate(candidate, setup.ds, model_name=model_name,
                                              study_name=setup.study_name, family=setup.spec.family,
                                              parent_run_id=pid, promote_alpha=promote_alpha)
            out.update(candidate.seed_stats)
            out.update(reference.report(setup.spec, setup.base, setup.ds, setup.study_name, candidate, pid,
                                        background))
            return out
        finally:
            if background is not None:
                background.stop()


def _any_complete(study: optuna.Study) -> bool:
    return any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def run(args: dict, *, train_fn=None) -> dict:
    """Run (or resume, or join) the study under one parent run, then register the best model."""
    setup = prepare(args)
    with setup.storage.single_worker_guard():
        seed = sampler_seed(args["seed"], setup.storage)
        study = open_study(setup, seed)
        before = trials_started(study)
        tracking.use_experiment(args["experiment"], f"fmnist-study-{setup.study_name}")
        with tracking.interrupts_end_runs(), tracking.run_that_ends(run_name=f"tune {setup.study_name}") as parent:
            pid = parent.info.run_id
            _log_setup(setup, args, before, seed)
            print(f"[tune] study {setup.study_name!r} ({setup.spec.description}) "
                  f"storage={setup.storage} trials so far={before}; "
                  f"running {setup.budget['n_trials']} more", flush=True)
            try:
                study.optimize(
                    make_objective(setup.spec, setup.base, setup.ds, setup.study_name, pid, train_fn),
                    n_trials=setup.budget["n_trials"], timeout=setup.budget["timeout"] or None,
                    catch=(Exception,), callbacks=[stop_if_interrupted, Progress(setup.budget["n_trials"], pid)],
                    gc_after_trial=True,
                )
            finally:
                tracking.end_orphaned_children(pid)
            summary = registry.log_study_artifacts(study, pid, epochs_per_trial=setup.budget["epochs"])
            summary["model_name"] = args["model_name"]
            if args["register"]:
                summary.update(_register(setup, study, pid, args["model_name"], args["promote_alpha"]))
            else:
                mlflow.set_tag("registration", "skipped: register=false (run the register entry point)")
            report.log_report(study, pid, setup.spec)
            tracking.raise_if_interrupted()  # inside the run, so a swallowed signal ends it FAILED
    print_summary(summary, setup.study_name)
    return summary


def register_only(args: dict) -> dict:
    """The `register` entry point: the champion decision for a study other workers ran."""
    setup = prepare(args, must_exist=True)
    study = optuna.load_study(study_name=setup.study_name, storage=setup.optuna_storage)
    tracking.use_experiment(args["experiment"], f"fmnist-study-{setup.study_name}")
    with tracking.interrupts_end_runs(), tracking.run_that_ends(run_name=f"register {setup.study_name}") as parent:
        _log_setup(setup, args, trials_started(study))
        summary = registry.log_study_artifacts(study, parent.info.run_id, epochs_per_trial=setup.budget["epochs"])
        summary["model_name"] = args["model_name"]
        summary.update(_register(setup, study, parent.info.run_id, args["model_name"], args["promote_alpha"]))
        report.log_report(study, parent.info.run_id, setup.spec)
        tracking.raise_if_interrupted()
    print_summary(summary, setup.study_name)
    return summary


def print_summary(summary: dict, study_name: str) -> None:
    uri = mlflow.get_tracking_uri()
    ui = uri if uri.startswith("http") else "http://127.0.0.1:5000"
    lines = [
        f"[tune] study {study_name!r}: {summary['n_complete']} complete, {summary['n_pruned']} pruned, "
        f"{summary['n_failed']} failed trials in total",
    ]
    if summary.get("registered_version"):
        lines += [
            f"[tune] best trial {summary['best_trial']}"
            + ("" if summary["candidate"] == "best trial" else f"'s {summary['candidate']}")
            + f": val_accuracy={summary['best_val_accuracy']:.4f} test_accuracy={summary['test_accuracy']:.4f}",
            f"[tune] registered {summary['model_name']} version {summary['registered_version']} "
            f"as @{summary['alias']} ({summary['decision']})",
            f"[tune] load it with models:/{summary['model_name']}@champion",
        ]
    if "final_seeds" in summary:
        each = ", ".join(f"seed {s} {t:.4f} (val {v:.4f})" for s, t, v in zip(
            summary["final_seeds"], summary["final_seeds_test_accuracy"], summary["final_seeds_val_accuracy"]))
        lines.append(f"[tune] final retrain over {len(summary['final_seeds'])} seeds: test accuracy mean "
                     f"{summary['final_seeds_test_accuracy_mean']:.4f}, sd {summary['final_seeds_test_accuracy_std']:.4f} "
                     f"({each}); " + ("registered: their average (ensemble)" if summary["final_seed_registered"] == ENSEMBLE
                                      else f"registered seed {summary['final_seed_registered']} (best validation accuracy)"))
    if summary.get("reference") == "off":
        lines.append("[tune] reference: off (no gain measured)")
    elif "reference" in summary:
        lines.append(f"[tune] gain over {summary['reference']} (run {summary['reference_run_id']}): test accuracy "
                     f"{summary['gain_candidate_test_accuracy']:.4f} vs {summary['gain_reference_test_accuracy']:.4f}, "
                     f"{summary['gain']}")
    if not uri.startswith("http"):
        lines.append(f"[tune] open the UI: mlflow ui --backend-store-uri {uri} --port 5000")
    lines.append(f"[tune] this experiment's runs: {ui}/#/experiments/{summary['experiment_id']}/runs"
                 f"?workflowType=machine_learning")
    print("\n".join(lines), flush=True)
