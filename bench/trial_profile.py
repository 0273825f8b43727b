"""Where a study trial's time goes beyond `fit` (bench_overhead.py --trials; BENCHMARKS.md 'A trial's own work').

Each study runs twice in this process on scikit-learn's digits (or the data named), on its own SQLite stores, with the
study file's own space and sampler (seed 42: both passes draw the same trials) and no registration:
once plain, for the wall-clock split that Optuna and MLflow record (a trial's start to complete against
its run's train_wall_s), and once under cProfile, for the split of a trial's time among the platform's
steps (the mean per trial). cProfile slows Python-heavy steps more than TensorFlow's kernels, so its
split ranks the steps, and the plain pass gives the figures.
"""

from __future__ import annotations

import contextlib
import cProfile
import gc
import os
import pstats
import statistics
import tempfile
import time
from pathlib import Path

# (step, the function's file and name, the calling function's file and name or None for any caller)
STEPS = [
    ("fit (Keras' fit, the epochs' validation and per-epoch logging)", ("train/fit.py", "fit"), None),
    ("fit (a compiled builder's own fit)", ("train/builder_fit.py", "fit_itself"), None),
    ("of fit: its input pipeline (in train_wall_s since 1411ec2)", ("train/inputs.py", "datasets"),
     ("train/fit.py", "fit")),
    ("network built and its builder examined (clear_session, build)", ("train/builder_fit.py", "examine"), None),
    ("float32 copy of the trained network", ("model/networks.py", "portable_copy"), None),
    ("validation scored as served", ("train/evaluate.py", "evaluate"), ("train/job.py", "train_in_run")),
    ("learning-curve figure drawn and logged", ("train/tracking.py", "log_figure"), ("train/job.py", "train_in_run")),
    ("learning-curve figure: its plot", ("train/plots.py", "learning_curves"), ("train/job.py", "train_in_run")),
    ("Keras model logged", ("train/model_logging.py", "log_keras_model"), None),
    ("served classifier logged", ("train/model_logging.py", "log_classifier"), None),
    ("serving cost measured and logged", ("train/job.py", "log_cost"), None),
    ("parameters logged", ("train/tracking.py", "log_params"), ("train/job.py", "train_in_run")),
    ("data facts, split inputs, code version", ("train/job.py", "log_data_facts"), None),
    ("", ("train/lineage.py", "log_split_inputs"), None),
    ("", ("train/lineage.py", "log_code_version"), None),
    ("metrics on the run and its models", ("train/tracking.py", "log_model_metrics"), ("train/job.py", "train_in_run")),
    ("MLflow run started and ended", ("mlflow/tracking/fluent.py", "start_run"), ("study/objective.py", "objective")),
    ("", ("mlflow/tracking/fluent.py", "__exit__"), ("study/objective.py", "objective")),
    ("Optuna: the trial's suggestions and attributes", ("study/space.py", "suggest"), None),
    ("", ("optuna/trial/_trial.py", "set_user_attr"), ("study/objective.py", "objective")),
    ("", ("study/objective.py", "earlier_twin"), None),
]
TRIAL = ("study/objective.py", "objective")


def _key(stats: dict, where: tuple[str, str]) -> list:
    return [k for k in stats if k[0].endswith(where[0]) and k[2] == where[1]]


def split(prof: pstats.Stats, n_trials: int) -> dict[str, float]:
    """Seconds per trial by step, the mean over ``n_trials`` (cProfile's cumulative time: wall-clock time
    under the profiler, which slows Python more than TensorFlow's kernels), and the trial's whole."""
    stats = prof.stats  # type: ignore[attr-defined]
    out: dict[str, float] = {}
    label = ""
    for name, callee, caller in STEPS:
        label = name or label
        for k in _key(stats, callee):
            callers = stats[k][4]
            total = sum(v[3] for c, v in callers.items()
                        if caller is None or (c[0].endswith(caller[0]) and c[2] == caller[1]))
            out[label] = out.get(label, 0.0) + total / n_trials
    out = {k: round(v, 3) for k, v in out.items() if v > 0}
    trial = sum(stats[k][3] for k in _key(stats, TRIAL)) / n_trials
    out["the rest of the trial"] = round(trial - sum(out.values()), 3)
    out["the trial, profiled"] = round(trial, 3)
    return out


@contextlib.contextmanager
def timed_setup():
    """(start, seconds) of each input pipeline built and each compile by the recipe's fit (train/fit.py), so that the
    fixed cost can be told under either meaning of train_wall_s (whether it counts them: 1411ec2 on, or not)."""
    from fmnist_exp.train import fit as F

    calls: list[tuple[float, float]] = []
    originals = {name: getattr(F, name) for name in ("datasets", "compile_model")}

    def timed(fn):
        def call(*args, **kwargs):
            t0, c0 = time.time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                calls.append((t0, time.perf_counter() - c0))
        return call

    for name, fn in originals.items():
        setattr(F, name, timed(fn))
    try:
        yield calls
    finally:
        for name, fn in originals.items():
            setattr(F, name, fn)


def run_study(study: str, n_trials: int, name: str, folder: Path, profile: bool, data: str = "digits"):
    """`tune --study STUDY --data DATA --register false` in this process; the study and its runs."""
    import mlflow
    import optuna

    from fmnist_exp import cli

    argv = ["tune", "--study", study, "--study_name", name, "--storage", f"sqlite:///{folder}/optuna.db",
            "--n_trials", str(n_trials), "--register", "false", "--system_metrics", "false",
            *(["--data", data] if data != "fashion-mnist" else [])]
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    try:
        code = cli.main(argv)
    finally:
        if prof:
            prof.disable()
    if code != 0:
        raise SystemExit(f"tune {study} exited {code}")
    trials = optuna.load_study(study_name=name, storage=f"sqlite:///{folder}/optuna.db").trials
    runs = {t.number: mlflow.get_run(t.user_attrs["mlflow_run_id"]) for t in trials}
    return trials, runs, (pstats.Stats(prof) if prof else None)


def profile_trials(study: str, n_trials: int, *, data: str = "digits", profile: bool = True) -> dict:
    """The plain pass's wall-clock split per trial and (``profile``) the profiled pass's CPU split by step."""
    import mlflow

    import fmnist_exp.commands.tune  # noqa: F401  (its imports, then out of the collector's view as the CLI does)

    gc.collect()  # what an earlier study left, not frozen with the imports
    gc.freeze()  # cli.main freezes only in a process of its own (argv None); this one calls it with argv
    with tempfile.TemporaryDirectory() as tmp:
        old = os.getcwd()
        os.chdir(tmp)
        try:
            mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
            with timed_setup() as setup_calls:
                trials, runs, _ = run_study(study, n_trials, "plain", Path(tmp), profile=False, data=data)
            trained = [t for t in trials if "train_wall_s" in runs[t.number].data.metrics]  # not a twin's
            walls = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trained]
            fits = [runs[t.number].data.metrics["train_wall_s"] for t in trained]
            # the objective's scoring of the validation images (its views included); absent before 2026-11-28
            scores = [runs[t.number].data.metrics.get("val_score_s", float("nan")) for t in trained]
            ptrials, _, prof = (run_study(study, n_trials, "profiled", Path(tmp), profile=True, data=data)
                                if profile else ([], None, None))
        finally:
            os.chdir(old)
    # the recipe's input pipeline and compile, within each trial: in train_wall_s since 1411ec2, before it not
    setup = [sum(d for t0, d in setup_calls if t.datetime_start.timestamp() <= t0 <= t.datetime_complete.timestamp())
             for t in trained]
    beyond = [w - f for w, f in zip(walls, fits, strict=True)]
    # issue 55's bar: a trial's wall within 1.10x its fit plus that scoring, the rest (its fixed cost) under 0.5 s
    fixed = [b - sc for b, sc in zip(beyond, scores, strict=True)]
    return {
        "study": study, "data": data, "trials": n_trials,
        "states": [t.state.name for t in trials], "profiled_states": [t.state.name for t in ptrials],
        "values": [t.value for t in trials],  # the same bits: the same values before and after a change
        "trial_wall_s": [round(w, 2) for w in walls], "fit_s": [round(f, 2) for f in fits],
        "median_trial_wall_s": round(statistics.median(walls), 2), "median_fit_s": round(statistics.median(fits), 2),
        "median_beyond_fit_s": round(statistics.median(beyond), 2),
        "median_wall_over_fit": round(statistics.median(w / f for w, f in zip(walls, fits, strict=True)), 3),
        "val_score_s": [round(sc, 2) for sc in scores], "median_fixed_s": round(statistics.median(fixed), 2),
        "pipeline_and_compile_s": [round(x, 3) for x in setup], "median_pipeline_and_compile_s": round(
            statistics.median(setup), 3),
        "median_wall_over_fit_and_scoring": round(statistics.median(
            w / (f + sc) for w, f, sc in zip(walls, fits, scores, strict=True)), 3),
        **({"profiled_s_per_trial_by_step": split(prof, n_trials)} if prof is not None else {}),
    }
