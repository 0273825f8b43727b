"""Ours against two peers at equal wall time: the default study (experiments/cnn.yaml), keras-tuner's
Hyperband, and plain Optuna TPE without pruning, on the same model builder, data split and final retrain.

    python bench/bench_peers.py [--budget_s 0] [--order ours,hyperband,tpe] [--peer_fixed default] [--smoke]

Ours is `tune` run in-process (what `mlflow run .` runs) in a throwaway MLflow store and Optuna storage;
its wall time end to end (search, final retrain, the reference beside it, registration) is the budget B
of each peer (``--budget_s`` sets B instead). A peer searches the study file's ``space`` on the same
per-trial data (the study's epochs and training images per trial), objective validation accuracy on
the project's validation split, with the cnn entry point's default recipe fixed (``--peer_fixed study``:
the study file's ``fixed`` instead, so that only the search differs). It starts a trial only while that
trial and then its final retrain are predicted to end within B (from the peer's own epoch times so
far), then retrains its best configuration by validation accuracy for the study's ``final`` epochs
on all 54,000 training images with the same seed (with ``--peer_fixed study`` also the rest of
``final``, e.g. its 10-view answers) and answers the 10,000 test images once. Reported per
contestant: wall times, trials, validation accuracies, test accuracy with its 95% interval; and ours
against each peer, paired on the same test images (stats.compare).
JSON to stdout, a markdown table for BENCHMARKS.md and progress to stderr.

``--smoke`` shrinks the study to 2 trials of 1 epoch on 2,000 images and the final to the same, to
check this script end to end in a few minutes; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fmnist_exp.data import Dataset
    from fmnist_exp.params import NetworkParams
    from fmnist_exp.study.space import Dist
    from fmnist_exp.study.spec import StudySpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine, scratch_tracking, stdout_to_stderr  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONTESTANTS = ("ours", "hyperband", "tpe")
# keras-tuner's default factor. Its top rung trains factor x our per-trial epochs (9 for 3): one
# Hyperband iteration (brackets 9x1 -> 3x3 -> 1x9, 5x3 -> 2x9 and 3x9 epochs: 23 trials, 75 epochs)
# about filled a peer's search time when B was ~900 s (2026-11-23); a shorter B ends it inside the
# widest bracket, which is Hyperband's own order of work.
HYPERBAND_FACTOR = 3  # keras-tuner's default; max_epochs = factor x the per-trial epochs


@dataclass
class Entry:
    """One contestant's outcome; ``best_val`` is its search's best by its own objective."""

    name: str
    search_s: float
    final_s: float
    wall_s: float
    trials: int
    best_val: float
    final_val: float
    config: dict
    test_labels: np.ndarray
    load: dict = field(default_factory=dict)  # load averages (1 min) at the start and end (bench_keras_tuner)
    in_hand: dict = field(default_factory=dict)  # what a user has afterwards (bench_keras_tuner)
    detail: dict = field(default_factory=dict)


@dataclass
class Arena:
    """What every peer shares: the study file, the fixed recipe, the data and the budget B."""

    spec: StudySpec
    base: dict  # fixed recipe + the per-trial budget; the search's knobs go on top
    final: dict  # what the final retrain changes: the study's `final`, or only its length and images
    ds: Dataset
    budget_s: float


def smoke_study(tmp: Path) -> str:
    """experiments/cnn.yaml with every budget shrunk to seconds."""
    import yaml

    doc = yaml.safe_load((REPO / "experiments" / "cnn.yaml").read_text())
    doc["budget"] = {"n_trials": 2, "timeout": 0, "epochs": 1, "train_samples": 2000}
    doc["final"] = {"epochs": 1, "train_samples": 2000}
    path = tmp / "cnn_smoke.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def run_ours(study: str, ds) -> Entry:
    import mlflow
    import optuna

    from fmnist_exp import params as P
    from fmnist_exp.commands import tune
    from fmnist_exp.train.evaluate import classifier_answers

    with scratch_tracking(), stdout_to_stderr():
        storage = f"sqlite:///{os.getcwd()}/optuna.db"
        t0 = time.perf_counter()
        summary = tune.run(P.tune_args({"study": study, "storage": storage}))
        wall = time.perf_counter() - t0
        counts, registered = summary.counts, summary.registration
        if registered is None:
            raise SystemExit("ours registered no model (no complete trial): nothing to compare")
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
        parent = next(r for r in runs if r.info.run_name.startswith("tune "))
        final = next(r for r in runs if r.info.run_name.startswith("final ("))
        best = optuna.load_study(study_name=counts.study_name, storage=storage).best_trial
        uri = mlflow.get_run(registered.best_run_id).data.tags["classifier_uri"]
        labels = classifier_answers(uri, ds.x_test)["label"].to_numpy()
    return Entry("ours", (final.info.start_time - parent.info.start_time) / 1000,
                 (final.info.end_time - final.info.start_time) / 1000, wall,
                 counts.n_complete + counts.n_pruned, best.value, registered.best_val_accuracy,
                 best.user_attrs["config"], labels)


def epoch_clock(n_train: int, n_val: int):
    """A Keras callback that predicts the final retrain's length from the search's epochs."""
    import keras

    class EpochClock(keras.callbacks.Callback):
        """Seconds per training and per validation image, from every epoch but a fit's first (which
        traces the graph). Of a fit's first epoch only the training steps after the first call count
        (``warm``): Hyperband's first rung trains one epoch per trial, so without them it would
        predict from tracing times alone and refuse every later trial."""

        def __init__(self):
            super().__init__()
            self.steady: list[tuple[float, float]] = []
            self.warm: list[tuple[float, float]] = []
            self.first: list[tuple[float, float]] = []

        def __deepcopy__(self, memo):  # keras-tuner deep-copies callbacks per trial; keep one clock
            return self

        def on_train_begin(self, logs=None):
            self.epochs_seen = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.t = [time.perf_counter()]
            self.after_first_call: tuple[float, float] | None = None  # (time, images done)

        def on_train_batch_end(self, batch, logs=None):
            if self.after_first_call is None:  # called after each group of steps; the first one traced
                steps = self.params.get("steps") or 1
                self.after_first_call = (time.perf_counter(), min(1.0, (batch + 1) / steps) * n_train)

        def on_test_begin(self, logs=None):
            self.t.append(time.perf_counter())

        def on_epoch_end(self, epoch, logs=None):
            t0, t1 = self.t[0], self.t[-1]
            per_val = (time.perf_counter() - t1) / n_val
            (self.steady if self.epochs_seen else self.first).append(((t1 - t0) / n_train, per_val))
            if not self.epochs_seen and self.after_first_call and self.after_first_call[1] < n_train:
                tb, done = self.after_first_call
                self.warm.append(((t1 - tb) / (n_train - done), per_val))
            self.epochs_seen += 1

        def predict_s(self, epochs: int, train_images: int, val_images: int) -> float:
            rows = self.steady or self.warm or self.first
            if not rows:
                return 0.0
            per_train, per_val = np.median(rows, axis=0)
            return epochs * (train_images * per_train + val_images * per_val)

    return EpochClock()


class Peer:
    """A search under a deadline, then the final retrain: the part both peers share."""

    def __init__(self, name: str, arena: Arena):
        from fmnist_exp import params as P
        from fmnist_exp.train import job

        self.name, self.arena, self.t0 = name, arena, time.perf_counter()
        self.p = P.network(arena.spec.family, arena.base)
        self.splits = job.splits(arena.ds, self.p)
        self.final_p = P.network(arena.spec.family, {**arena.base, **arena.final})
        self.final_splits = job.splits(arena.ds, self.final_p)
        self.clock = epoch_clock(len(self.splits.x_train), len(self.splits.x_val))

    def fits(self, epochs: int) -> bool:
        """Whether a trial of ``epochs`` and then the final retrain, at the speed of the search's epochs
        so far, still end within B (so that a peer does not buy time by overrunning it); before the
        first epoch there is nothing to predict from, and the trial starts."""
        trial = self.clock.predict_s(epochs, len(self.splits.x_train), len(self.splits.x_val))
        final = self.clock.predict_s(self.final_p.epochs, len(self.final_splits.x_train),
                                     len(self.final_splits.x_val))
        return time.perf_counter() - self.t0 + trial + final <= self.arena.budget_s

    def params(self, config: dict, **over) -> NetworkParams:
        from fmnist_exp import params as P

        return P.network(self.arena.spec.family, {**self.arena.base, **config, **over})

    def finish(self, config: dict, best_val: float, trials: int) -> Entry:
        from fmnist_exp.train.evaluate import evaluate, predict_proba

        search_s = time.perf_counter() - self.t0
        print(f"[{self.name}] search: {trials} trials in {search_s:.0f} s, best val {best_val:.4f} with {config}; "
              f"final retrain", file=sys.stderr, flush=True)
        p, s = self.params(config, **self.arena.final), self.final_splits
        model = trained(p, s)
        labels = predict_proba(model, s.x_test).argmax(axis=1)
        final_val = evaluate(model, s.x_val, s.y_val, prefix="")["accuracy"]
        wall = time.perf_counter() - self.t0
        return Entry(self.name, search_s, wall - search_s, wall, trials, best_val, final_val, config, labels)


def trained(p: NetworkParams, s, callbacks=()):
    """Built, fitted by the project's fit, and answering flip-averaged where the recipe says so."""
    from fmnist_exp.model.wrappers import as_served
    from fmnist_exp.train import fit as F

    model, _ = F.fresh_model(p, s.info)
    F.fit(model, s, p, callbacks=list(callbacks))
    return as_served(model, p, s.info)


def run_tpe(arena: Arena, seed: int) -> Entry:
    """Optuna's TPE with its own defaults, no pruner, no enqueued point; each trial trained in full."""
    import optuna

    from fmnist_exp.study.space import suggest
    from fmnist_exp.train.evaluate import evaluate
    from fmnist_exp.train.fit import DivergedError

    peer = Peer("tpe", arena)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    while peer.fits(peer.p.epochs):
        trial = study.ask()
        config = suggest(trial, arena.spec.space)
        trial.set_user_attr("config", config)
        try:
            model = trained(peer.params(config), peer.splits, [peer.clock])
        except DivergedError:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        study.tell(trial, evaluate(model, peer.splits.x_val, peer.splits.y_val, prefix="")["accuracy"])
        print(f"[tpe] trial {trial.number}: {study.trials[-1].value:.4f} at {time.perf_counter() - peer.t0:.0f} s",
              file=sys.stderr, flush=True)
    return peer.finish(study.best_trial.user_attrs["config"], study.best_value, len(study.trials))


def kt_values(hp, space: dict[str, Dist]) -> dict:
    """The study file's space as keras-tuner hyperparameters."""
    out = {}
    for key, d in space.items():
        sampling = "log" if d.log else "linear"
        if d.kind == "float":
            out[key] = hp.Float(key, d.low, d.high, sampling=sampling)
        elif d.kind == "int":
            out[key] = hp.Int(key, int(d.low), int(d.high), sampling=sampling)
        elif d.kind == "categorical":
            out[key] = hp.Choice(key, list(d.choices))
        else:
            raise SystemExit(f"space entry {key!r} has type {d.kind!r}, which keras-tuner has no counterpart "
                             "for here: use a study whose space has float, int and categorical entries only")
    return out


def run_hyperband(arena: Arena, seed: int, workdir: str) -> Entry:
    """keras-tuner's Hyperband over the same builder, compiled by the project's compile_model (the
    cosine decay spans Hyperband's longest run), trained by keras-tuner's own fit loop, objective the
    best epoch's validation accuracy (Keras', one answer per image). A promoted trial warm-starts from
    its checkpoint, weights only: Adam's state and the decay start over, as keras-tuner does it."""
    from fmnist_exp.train import fit as F
    from fmnist_exp.train.inputs import datasets

    peer = Peer("hyperband", arena)
    p, s = peer.p, peer.splits
    max_epochs = HYPERBAND_FACTOR * p.epochs
    steps = math.ceil(len(s.x_train) / p.batch_size)

    def build(hp):
        q = peer.params(kt_values(hp, arena.spec.space), epochs=max_epochs)
        model, _ = F.fresh_model(q, s.info)
        # as train.fit compiles for "ours" and TPE, so that the peers train alike
        F.compile_model(model, q, steps_per_epoch=steps, steps_per_execution=F.default_steps_per_execution())
        return model

    tuner = deadline_hyperband(peer.fits, max_epochs=max_epochs, seed=seed, hypermodel=build, directory=workdir,
                               project_name="hyperband", overwrite=True)
    data, val = datasets(s, p)  # the entry point's own batches (tf.data under TensorFlow)
    tuner.search(data, validation_data=val, callbacks=[*F.standard_callbacks(p), peer.clock], verbose=0)
    best = tuner.oracle.get_best_trials(1)[0]
    config = {k: best.hyperparameters.values[k] for k in arena.spec.space}
    return peer.finish(config, best.score, len(tuner.oracle.trials))


def deadline_hyperband(fits, *, max_epochs: int, seed: int, **tuner_kwargs):
    """keras-tuner's Hyperband that starts no trial that would not end, with the final retrain, within B
    (``fits(epochs)``): keras-tuner has no timeout. (Its state after a refused trial no longer matters.)"""
    import keras_tuner as kt

    from fmnist_exp.metrics import VAL_ACC

    class DeadlineOracle(kt.oracles.HyperbandOracle):
        def populate_space(self, trial_id):
            r = super().populate_space(trial_id)
            v = r.get("values") or {}
            epochs = v.get("tuner/epochs", max_epochs) - v.get("tuner/initial_epoch", 0)
            return r if r["status"] != "RUNNING" or fits(epochs) else {"status": "STOPPED"}

    class DeadlineHyperband(kt.Hyperband):
        def __init__(self, oracle, **kwargs):  # Hyperband's own __init__ only builds its oracle
            kt.Tuner.__init__(self, oracle=oracle, **kwargs)

    oracle = DeadlineOracle(objective=kt.Objective(VAL_ACC, "max"), max_epochs=max_epochs,
                            factor=HYPERBAND_FACTOR, hyperband_iterations=1000, seed=seed)
    return DeadlineHyperband(oracle, **tuner_kwargs)


def accuracy_ci(right: np.ndarray) -> tuple[float, float]:
    """Normal-approximation 95% interval of one accuracy (one standard error is ~0.24 points at 93%)."""
    acc = float(right.mean())
    half = 1.96 * math.sqrt(acc * (1 - acc) / len(right))
    return acc - half, acc + half


def table(out: dict, names: list[str]) -> str:
    """The JSON's figures as a markdown table for BENCHMARKS.md."""
    rows = ["| contestant | trials | search s | final s | total s | best val (search) | final val "
            "| test accuracy (95% CI) | ours minus this, paired (95% CI), McNemar p |", "|---" * 9 + "|"]
    for name in names:
        e, r = out[name], out.get(f"ours_vs_{name}")
        paired = (f"{100 * r['diff']:+.2f} ({100 * r['ci_low']:+.2f} to {100 * r['ci_high']:+.2f}), "
                  f"p={r['p_value']:.2g}" if r else "")
        (lo, hi), pct = e["test_ci95"], lambda v: f"{100 * v:.2f}"
        rows.append(f"| {name} | {e['trials']} | {e['search_s']:.0f} | {e['final_s']:.0f} | {e['wall_s']:.0f} | "
                    f"{pct(e['best_val_accuracy'])}% | {pct(e['final_val_accuracy'])}% | "
                    f"{pct(e['test_accuracy'])}% ({pct(lo)} to {pct(hi)}) | {paired} |")
    return "\n".join(rows)


def contest_order(given: str, budget_s: float, contestants: tuple[str, ...]) -> list[str]:
    """``--order`` as a list: each contestant at most once, ours first unless the budget is given."""
    order = given.split(",")
    if set(order) - set(contestants) or len(set(order)) != len(order):
        raise SystemExit(f"--order {given!r}: name each of {', '.join(contestants)} at most once")
    if not budget_s and "ours" not in order[:1]:
        raise SystemExit("the peers' budget is ours' wall time: run ours first, or give --budget_s")
    return order


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget_s", type=float, default=0, help="each peer's wall-time budget (0 = ours' wall)")
    ap.add_argument("--order", default=",".join(CONTESTANTS), help="which contestants run, in this order")
    ap.add_argument("--peer_fixed", choices=("default", "study"), default="default",
                    help="the peers' fixed recipe: the cnn entry point's defaults, or the study file's `fixed`")
    ap.add_argument("--smoke", action="store_true", help="tiny budgets: check the script, not the tools")
    args = ap.parse_args()
    order = contest_order(args.order, args.budget_s, CONTESTANTS)
    if "hyperband" in order:
        try:
            import keras_tuner  # noqa: F401
            import tensorboard  # noqa: F401  (keras-tuner imports it in every trial on TensorFlow)
        except ImportError as e:
            raise SystemExit(f"{e}: install the bench extra, pip install -e '.[bench]'") from None

    from fmnist_exp import data as D
    from fmnist_exp import params as P
    from fmnist_exp import stats
    from fmnist_exp.study import spec as S

    ds, seed = D.load(None), P.tune_args().seed  # the study's seed: split, initialisation, samplers
    with tempfile.TemporaryDirectory() as tmp:
        study = smoke_study(Path(tmp)) if args.smoke else str(REPO / "experiments" / "cnn.yaml")
        spec = S.load(study, None)  # the file's own family
        fixed = spec.fixed if args.peer_fixed == "study" else {}
        base = {**fixed, "epochs": spec.budget.epochs, "train_samples": spec.budget.train_samples, "seed": seed}
        # the entry point's recipe keeps its own answers: the study's final answers (tta_shift) are its recipe
        final = spec.final.params if args.peer_fixed == "study" else {
            k: v for k, v in spec.final.params.items() if k in ("epochs", "train_samples")}
        arena = Arena(spec, base, final, ds, args.budget_s)
        out = {"machine": machine(), "started": time.strftime("%H:%M"), "study": Path(study).name,
               "peer_fixed": args.peer_fixed, "hyperband_max_epochs": HYPERBAND_FACTOR * spec.budget.epochs}
        entries: dict[str, Entry] = {}
        for name in order:
            print(f"# {name}: starting at {time.strftime('%H:%M:%S')}", file=sys.stderr, flush=True)
            if name == "ours":
                entries[name] = run_ours(study, ds)
                arena.budget_s = arena.budget_s or entries[name].wall_s
            elif name == "tpe":
                entries[name] = run_tpe(arena, seed)
            else:
                entries[name] = run_hyperband(arena, seed, workdir=tmp)
    out["budget_s"] = round(arena.budget_s, 1)
    for e in entries.values():
        right = e.test_labels == ds.y_test
        lo, hi = accuracy_ci(right)
        out[e.name] = {"wall_s": round(e.wall_s, 1), "search_s": round(e.search_s, 1), "final_s": round(e.final_s, 1),
                       "trials": e.trials, "best_val_accuracy": round(e.best_val, 4),
                       "final_val_accuracy": round(e.final_val, 4), "test_accuracy": round(float(right.mean()), 4),
                       "test_ci95": [round(lo, 4), round(hi, 4)], "config": e.config}
        if e.name != "ours" and "ours" in entries:
            cmp = stats.compare(ds.y_test, entries["ours"].test_labels, e.test_labels)
            out[f"ours_vs_{e.name}"] = {**{k: v if isinstance(v, int) else float(f"{v:.4g}")
                                           for k, v in cmp.fields("", "ours", e.name).items()},
                                        "describe": cmp.describe()}
    print(table(out, order), file=sys.stderr)
    emit(out)


if __name__ == "__main__":
    main()
