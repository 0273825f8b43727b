"""Trials per minute on keras-tuner's getting-started builder (issue 55): this platform's `tune`, every trial
an MLflow run with its curves, parameters and model; keras-tuner's RandomSearch; and a bare Optuna loop of the
same builder with no tracking at all. Each searches for the same window, one after another, in rounds.

    python bench/bench_trial_rate.py [--window 150] [--rounds 2] [--order ours,random,bare] [--smoke]

The same work per trial for all three: ``build_model(hp)`` of examples/keras_tuner_guide.py unchanged (it
compiles its own Adam), 3 epochs on the same stratified 10,000 Fashion-MNIST training images, batch 128,
validated every epoch on the platform's 6,000 validation images, and random sampling of the builder's own
hp calls (ours: ``sampler: random``, ``pruner: none``, so that every trial trains its 3 epochs, as
keras-tuner's RandomSearch does); all in the platform's precision (``precision: auto``: mixed_bfloat16 on a
CPU with AMX-BF16 or AVX512-BF16, else float32), so that only the work around training differs.

- **ours**: ``tune`` in-process (what ``python -m fmnist_exp tune --study FILE`` runs) on a throwaway SQLite
  MLflow store and Optuna storage, ``timeout`` = the window, ``register: false`` (no final retrain), MLflow's
  system metrics as a user gets them. Each trial's run is checked afterwards: its per-epoch curves, its
  parameters, and its model, which ``mlflow.pyfunc.load_model`` loads from the run's ``classifier_uri``.
- **random**: keras-tuner's RandomSearch (``kt.Tuner`` with its RandomSearchOracle, seed 42, objective
  ``val_accuracy``, its trial directory in the temp dir), fed as its guide feeds it (x/255, one-hot labels);
  no trial starts after the window.
- **bare**: ``optuna.create_study(sampler=RandomSampler(42))`` and ``optimize(timeout=window)``: an objective
  that asks the same builder through the platform's hp adapter (model/hyperparameters.py: keras-tuner's calls
  answered by Optuna define-by-run), fits it like keras-tuner's contestant and returns the best
  ``val_accuracy``; an in-memory study, no MLflow, nothing saved.

Each search runs in a fresh process (one search's leftovers slowed the next one's in a shared process).
A contestant's rate is its complete trials over the time from its first trial's start to its last trial's end
(its setup before the first trial apart, reported as ``setup_s``); medians over rounds, and each round's ratios
ours / random and ours / bare, taken from neighbouring runs. Each trial's Keras ``fit`` is timed too (whoever
calls it), so that what a trial spends beside its fit compares across contestants whose samplers drew other
widths (``ours_over_<peer>_beside_fit``: the rate ratio at the peer's median fit). JSON to stdout, progress
to stderr.
``--smoke``: 1 epoch on 1,000 images and a 20 s window, to check the script; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_keras_tuner import BUILDER, build_model_of_guide, cpu_facts, load1, one_hot, scaled  # noqa: E402
from common import emit, machine, scratch_tracking, stdout_to_stderr  # noqa: E402

CONTESTANTS = ("ours", "random", "bare")
SEED, BATCH = 42, 128
FULL = {"epochs": 3, "images": 10_000}
SMOKE = {"epochs": 1, "images": 1_000}


def study_file(tmp: Path, b: dict, window: int) -> Path:
    import yaml

    doc = {"description": "keras-tuner's getting-started build_model, random search, no pruning "
                          "(bench/bench_trial_rate.py).",
           "model": BUILDER,
           "budget": {"n_trials": 100_000, "timeout": window, "epochs": b["epochs"], "train_samples": b["images"]},
           "pruner": {"type": "none"}, "sampler": {"type": "random"}, "reference": "off"}
    path = tmp / "trial_rate.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


FITS: list[tuple[float, float]] = []  # (start, seconds) of every Keras Model.fit in this process


def timed_fits() -> None:
    """Time every ``keras.Model.fit`` (the training itself, each epoch's validation included) whoever calls it,
    so that each contestant's trial splits into its fit and the rest, whatever widths its sampler drew."""
    import keras

    fit = keras.Model.fit

    def timed(self, *args, **kwargs):
        t0, c0 = time.time(), time.perf_counter()
        try:
            return fit(self, *args, **kwargs)
        finally:
            FITS.append((t0, time.perf_counter() - c0))

    keras.Model.fit = timed


def rate(starts: list[float], ends: list[float]) -> dict:
    """Trials a minute from the first start to the last end; the median trial's time, its Keras fit, and what
    the trial spent beside its fit (the tool's own work: building, scoring, tracking, saving)."""
    span = max(ends) - min(starts)
    walls = [e - s for s, e in zip(starts, ends, strict=True)]
    fits = [sum(d for t0, d in FITS if s <= t0 <= e) for s, e in zip(starts, ends, strict=True)]
    return {"trials": len(ends), "span_s": round(span, 1), "trials_per_min": round(60 * len(ends) / span, 2),
            "median_trial_s": round(statistics.median(walls), 2), "median_fit_s": round(statistics.median(fits), 2),
            "median_beside_fit_s": round(statistics.median(w - f for w, f in zip(walls, fits, strict=True)), 2),
            "fit_share_of_span": round(sum(fits) / span, 3)}


def run_ours(b: dict, window: int) -> dict:
    import mlflow
    import optuna

    from fmnist_exp import params as P
    from fmnist_exp.commands import tune

    with tempfile.TemporaryDirectory() as tmp, scratch_tracking(), stdout_to_stderr():
        study = study_file(Path(tmp), b, window)
        storage = f"sqlite:///{tmp}/optuna.db"
        t0 = time.time()
        summary = tune.run(P.tune_args({"study": str(study), "storage": storage, "seed": SEED, "register": False}))
        trials = optuna.load_study(study_name=summary.counts.study_name, storage=storage).trials
        done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        # every trial tracked: its curves, parameters and a model that loads and answers raw pixels
        client = mlflow.MlflowClient()
        last = mlflow.get_run(done[-1].user_attrs["mlflow_run_id"])
        checked = {
            "runs_with_curves": sum(len(client.get_metric_history(t.user_attrs["mlflow_run_id"], "val_accuracy"))
                                    == b["epochs"] for t in done),
            "last_run_params": len(last.data.params),
            "last_model_answers": len(mlflow.pyfunc.load_model(last.data.tags["classifier_uri"]).predict(
                np.zeros((2, 28, 28), dtype="uint8"))),
        }
        starts = [t.datetime_start.timestamp() for t in done]
        ends = [t.datetime_complete.timestamp() for t in done]
    return {**rate(starts, ends), "setup_s": round(min(starts) - t0, 1), "failed_or_other": len(trials) - len(done),
            "checked": checked}


class Data:
    """The platform's split and 10,000-image subset, fed as keras-tuner's guide feeds its builder."""

    def __init__(self, ds, b: dict):
        from fmnist_exp import params as P
        from fmnist_exp.train import job

        s = job.splits(ds, P.network("custom", {"model": BUILDER, "epochs": b["epochs"],
                                                "train_samples": b["images"], "seed": SEED}))
        self.x, self.y = scaled(s.x_train), one_hot(s.y_train)
        self.val = (scaled(s.x_val), one_hot(s.y_val))

    def fit(self, model, b: dict, callbacks=()):
        return model.fit(self.x, self.y, validation_data=self.val, batch_size=BATCH, epochs=b["epochs"],
                         callbacks=list(callbacks), verbose=0)


def run_random(data: Data, b: dict, window: int, workdir: str) -> dict:
    import keras_tuner as kt

    build_model = build_model_of_guide()
    starts: list[float] = []
    ends: list[float] = []
    t0 = time.time()

    class Windowed(kt.oracles.RandomSearchOracle):
        def populate_space(self, trial_id):
            r = super().populate_space(trial_id)
            return {"status": "STOPPED"} if starts and time.time() - starts[0] > window else r

    class Timed(kt.Tuner):
        def on_trial_begin(self, trial):
            starts.append(time.time())
            super().on_trial_begin(trial)

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            ends.append(time.time())

    oracle = Windowed(objective=kt.Objective("val_accuracy", "max"), max_trials=100_000, seed=SEED)
    tuner = Timed(oracle=oracle, hypermodel=build_model, directory=workdir, project_name=f"random{t0}",
                  overwrite=True)
    tuner.search(data.x, data.y, validation_data=data.val, batch_size=BATCH, epochs=b["epochs"], verbose=0)
    return {**rate(starts, ends), "setup_s": round(min(starts) - t0, 1)}


def run_bare(data: Data, b: dict, window: int) -> dict:
    import keras
    import optuna

    from fmnist_exp.model.hyperparameters import HyperParameters

    build_model = build_model_of_guide()
    starts: list[float] = []
    ends: list[float] = []

    def objective(trial: optuna.Trial) -> float:
        starts.append(time.time())
        keras.utils.clear_session()
        model = build_model(HyperParameters(draw=trial))
        best = max(data.fit(model, b).history["val_accuracy"])
        ends.append(time.time())
        return best

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.time()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=SEED))
    study.optimize(objective, timeout=window)
    return {**rate(starts, ends), "setup_s": round(min(starts) - t0, 1)}


def one(name: str, b: dict, window: int) -> dict:
    """One contestant's search, in this process (a fresh one: see main)."""
    import keras

    from fmnist_exp import data as D
    from fmnist_exp.train.precision import resolve_precision

    timed_fits()
    if name == "ours":
        return run_ours(b, window)
    keras.config.set_dtype_policy(resolve_precision("auto"))  # the peers train in ours' precision
    data = Data(D.load_dataset(None), b)
    with tempfile.TemporaryDirectory() as workdir:
        return run_random(data, b, window, workdir) if name == "random" else run_bare(data, b, window)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=int, default=150, help="each contestant's search window (s)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--order", default=",".join(CONTESTANTS))
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)  # a contestant in this process: JSON to stdout
    args = ap.parse_args()
    b = SMOKE if args.smoke else FULL
    window = 20 if args.smoke else args.window
    if args.one:
        with stdout_to_stderr():
            result = one(args.one, b, window)
        emit(result)
        return
    order = [c.strip() for c in args.order.split(",") if c.strip()]
    if unknown := sorted(set(order) - set(CONTESTANTS)):
        raise SystemExit(f"--order: unknown {unknown}; choose among {', '.join(CONTESTANTS)}")
    try:
        import keras_tuner
    except ImportError as e:
        raise SystemExit(f"{e}: install the bench extra, pip install -e '.[bench]'") from None
    import keras

    from fmnist_exp.train.precision import resolve_precision

    out: dict = {"machine": {**machine(), **cpu_facts()}, "date": time.strftime("%Y-%m-%d"),
                 "started": time.strftime("%H:%M:%S"), "keras_tuner": keras_tuner.__version__,
                 "keras": keras.__version__, "precision": resolve_precision("auto"), "budget": b, "window_s": window,
                 "rounds": []}
    for r in range(args.rounds):
        row: dict = {}
        for name in order:  # each in a fresh process: what one search leaves in a process slowed the next one's
            print(f"# round {r + 1} {name}: {time.strftime('%H:%M:%S')}, load {load1()}", file=sys.stderr, flush=True)
            cmd = [sys.executable, __file__, "--one", name, "--window", str(args.window), *(["--smoke"] * args.smoke)]
            done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
            row[name] = {**json.loads(done.stdout), "load1_after": load1()}
            print(f"# {name}: {row[name]['trials']} trials, {row[name]['trials_per_min']} a minute",
                  file=sys.stderr, flush=True)
        for peer in ("random", "bare"):
            if "ours" in row and peer in row:
                row[f"ours_over_{peer}"] = round(row["ours"]["trials_per_min"] / row[peer]["trials_per_min"], 3)
                # the work beside fit compared at the same fit: the rate ratio at the peer's median fit
                row[f"ours_over_{peer}_beside_fit"] = round(
                    (row[peer]["median_fit_s"] + row[peer]["median_beside_fit_s"])
                    / (row[peer]["median_fit_s"] + row["ours"]["median_beside_fit_s"]), 3)
        out["rounds"].append(row)
    out["median"] = {k: statistics.median(row[k]["trials_per_min"] if isinstance(row[k], dict) else row[k]
                                          for row in out["rounds"]) for k in out["rounds"][0]}
    out["ended"] = time.strftime("%H:%M:%S")
    emit(out)


if __name__ == "__main__":
    main()
