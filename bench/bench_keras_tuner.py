"""keras-tuner's own getting-started builder on Fashion-MNIST, searched at equal wall time by this platform
(`tune`, Optuna TPE with the median pruner), by keras-tuner's RandomSearch and by keras-tuner's Hyperband;
the best of each retrained on the same images and scored once on the same 10,000 test images, paired.

    python bench/bench_keras_tuner.py [--timeout 420] [--budget_s 0] [--order ours,random,hyperband]
                                      [--peer_precision float32|same] [--markdown FILE] [--smoke]

The builder is ``build_model(hp)`` of keras-tuner's "Getting started" guide as examples/keras_tuner_guide.py
writes it (Flatten; 1-3 Dense layers of 32-512 units, step 32; relu or tanh; an optional Dropout(0.25);
Adam with a log-uniform rate 1e-4..1e-2; categorical_crossentropy; accuracy), unchanged for every contestant.

Same data for everyone: Fashion-MNIST from the platform's loader, the platform's validation split (10%,
stratified, seed 42: 54,000 training and 6,000 validation images), and per trial the same stratified
10,000 of the training images, 3 epochs, batch size 128 (the platform's recipe; keras-tuner's fit would
default to 32), validation accuracy on the 6,000 as the objective (keras-tuner: its best epoch's
``val_accuracy``; ours: the study's, the trained model's, here its last epoch's). The keras-tuner
contestants are fed as their guide feeds them: x/255 as float32 with a channel axis, one-hot labels.

- **ours**: ``tune`` in-process (what ``python -m fmnist_exp tune --study FILE`` runs) in a throwaway
  MLflow store and Optuna storage, with a generated study file: ``model:`` the builder (no ``space``:
  its hp calls are the space), ``budget: {timeout: --timeout, epochs: 3, train_samples: 10000}``,
  pruner median, sampler tpe (their defaults, seed 42), ``final: {epochs: 10, train_samples: 0}``,
  ``reference: off``. Its wall time end to end (data loading, search, final retrain, test scoring,
  registration) is the budget B of each peer (``--budget_s`` gives B instead). The platform trains in
  its ``precision: auto`` (mixed_bfloat16 on a CPU with AMX-BF16 or AVX512-BF16 under TensorFlow).
- **random** / **hyperband**: keras-tuner's RandomSearch and Hyperband (factor 3, max_epochs 9 = 3x
  the per-trial epochs, one iteration after another), ``objective="val_accuracy"``, seed 42,
  ``directory`` in the temp dir, ``overwrite=True``; the platform's standard callbacks passed to
  ``search`` as to our trials (early stopping on val_loss with patience 4; inert at 3 epochs). A peer
  starts a trial only while that trial and then the final retrain are predicted, at its own epoch
  speeds so far (a trial at the median, the final at the 90th percentile of its per-image times),
  to end within B: keras-tuner has no timeout. Then it rebuilds ``build_model(best_hp)`` from the
  seed 42 and retrains it like ours' final: 10 epochs on all 54,000 training images, batch 128, the
  same early stopping restoring the best weights, validated on the 6,000. In float32, keras-tuner's
  default (``--peer_precision same``: the platform's precision instead, so that only the search differs).

Each final model answers the 10,000 test images once (ours: the registered ``models:/NAME@champion``
loaded with ``mlflow.pyfunc.load_model``, answering raw 0-255 pixels; the peers: their Keras model on
x/255): test accuracy with its 95% normal interval, and ours minus each peer paired on the same images
(stats.compare: 95% bootstrap interval, exact McNemar p, b = images only ours gets right, c = only the
peer). Per contestant also what a user has in hand afterwards: trials, MLflow runs and registered
versions in its store, keras-tuner's trial.json files and checkpoints, and the model to serve (ours:
the registered version, checked to answer raw pixels; the peers: a .keras file this script saves, as
a user must, checked to reload; whether it answers raw 0-255 pixels as it answers x/255 is recorded).
CPU model and AMX/AVX-512 flags, load averages at each contestant's start and end, versions and dates
go into the JSON. JSON to stdout; progress and a markdown table for BENCHMARKS.md to stderr
(``--markdown FILE``: the table also to FILE).

``--smoke`` shrinks everything (2 trials of 1 epoch on 1,000 images, a final of 1 epoch on 2,000) to
check this script end to end in a few minutes; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_peers import (  # noqa: E402
    HYPERBAND_FACTOR,
    Entry,
    accuracy_ci,
    contest_order,
    deadline_hyperband,
    epoch_clock,
)
from common import emit, machine, scratch_tracking, stdout_to_stderr  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "examples" / "keras_tuner_guide.py"
BUILDER = f"{GUIDE}:build_model"
CONTESTANTS = ("ours", "random", "hyperband")
SEED = 42
BATCH = 128  # the platform's recipe (params: batch_size); given to keras-tuner's fit too
FULL = {"trial_epochs": 3, "trial_images": 10_000, "final_epochs": 10, "final_images": 0, "trials": 0}
SMOKE = {"trial_epochs": 1, "trial_images": 1_000, "final_epochs": 1, "final_images": 2_000, "trials": 2}
FINAL_QUANTILE = 90  # percentile of the search's per-image times a final retrain is predicted at


def build_model_of_guide():
    """The guide's builder from examples/keras_tuner_guide.py, loaded as the platform loads it (by file)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("keras_tuner_guide", GUIDE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_model


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def cpu_facts() -> dict:
    """lscpu's model name and the CPU's AMX / AVX-512 flags (what decides bfloat16 speed here)."""
    try:
        name = next((line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")), "")
    except OSError:
        name = ""
    try:
        flags = next(line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = []
    return {"lscpu_model_name": name, "amx_avx512_flags": sorted(f for f in flags if f.startswith(("amx", "avx512")))}


def study_file(tmp: Path, b: dict, timeout: int) -> Path:
    """The generated study: the guide's builder, its own hp calls as the space, budgets as the peers'."""
    import yaml

    doc = {
        "description": "keras-tuner's getting-started build_model, its own hp calls searched by Optuna "
                       "(bench/bench_keras_tuner.py).",
        "model": BUILDER,
        "budget": {"n_trials": b["trials"] or 100_000, "timeout": 0 if b["trials"] else timeout,
                   "epochs": b["trial_epochs"], "train_samples": b["trial_images"]},
        "pruner": {"type": "median"},
        "sampler": {"type": "tpe"},
        "final": {"epochs": b["final_epochs"], "train_samples": b["final_images"]},
        "reference": "off",
    }
    path = tmp / "keras_tuner_bench.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_ours(study: Path, ds) -> Entry:
    """``tune`` in a throwaway store; the registered champion answers the test images through pyfunc."""
    import mlflow
    import optuna

    from fmnist_exp import params as P
    from fmnist_exp.commands import tune
    from fmnist_exp.train.precision import resolve_precision

    start_load = load1()
    with scratch_tracking() as uri, stdout_to_stderr():
        storage = f"sqlite:///{os.getcwd()}/optuna.db"
        t0 = time.perf_counter()
        summary = tune.run(P.tune_args({"study": str(study), "storage": storage, "seed": SEED}))
        wall = time.perf_counter() - t0
        end_load = load1()
        counts, registered = summary.counts, summary.registration
        if registered is None:
            raise SystemExit("ours registered no model (no complete trial): nothing to compare")
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
        parent = next(r for r in runs if r.info.run_name.startswith("tune "))
        final = next(r for r in runs if r.info.run_name.startswith("final ("))
        best = optuna.load_study(study_name=counts.study_name, storage=storage).best_trial
        client = mlflow.MlflowClient()
        name = registered.model_name
        versions = client.search_model_versions(f"name = '{name}'")
        champion = client.get_model_version_by_alias(name, "champion")
        # the served model: the registered version as `mlflow models serve` loads it, fed raw 0-255 pixels
        served = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        t1 = time.perf_counter()
        labels = np.concatenate([served.predict(ds.x_test[i:i + 1000])["label"].to_numpy().astype(int)
                                 for i in range(0, len(ds.x_test), 1000)])  # its limit is 1,024 a request
        answer_s = time.perf_counter() - t1
        few = served.predict(ds.x_test[:5])["label"].to_numpy().astype(int)
        final_data = mlflow.get_run(final.info.run_id).data
    test_acc = float((labels == ds.y_test).mean())
    in_hand = {
        "mlflow_runs": len(runs), "run_names": sorted(r.info.run_name for r in runs)[:3] + ["..."],
        "tracking_uri": "sqlite (throwaway: " + uri.rsplit("/", 1)[-1] + ")",
        "registered_versions": len(versions), "champion": f"models:/{name}@champion (version {champion.version})",
        "served": "pyfunc loads models:/NAME@champion; answers raw 0-255 pixels",
        "served_first5_labels": few.tolist(), "served_first5_true": ds.y_test[:5].astype(int).tolist(),
        "served_matches_registration_test_accuracy": abs(test_acc - registered.test_accuracy) < 1e-9,
        "served_10k_answer_s": round(answer_s, 2),
    }
    detail = {"complete": counts.n_complete, "pruned": counts.n_pruned, "failed": counts.n_failed,
              "registered_test_accuracy": round(registered.test_accuracy, 4), "decision": registered.decision,
              "precision": final_data.params.get("precision_used") or resolve_precision("auto"),
              "final_epochs_run": final_data.metrics.get("epochs_run"),
              "final_train_wall_s": final_data.metrics.get("train_wall_s")}
    return Entry("ours", (final.info.start_time - parent.info.start_time) / 1000,
                 (final.info.end_time - final.info.start_time) / 1000, wall,
                 counts.n_complete + counts.n_pruned + counts.n_failed, best.value, registered.best_val_accuracy,
                 dict(best.params), labels, {"start": start_load, "end": end_load}, in_hand, detail)


def scaled(x: np.ndarray) -> np.ndarray:
    """As keras-tuner's guide feeds its builder: float32 in 0-1 with a channel axis."""
    return (x.reshape(len(x), *x.shape[1:3], -1).astype("float32") / np.float32(255.0))


def one_hot(y: np.ndarray) -> np.ndarray:
    import keras

    return keras.utils.to_categorical(y, 10).astype("float32")


class Peer:
    """A keras-tuner search under the deadline B, then the final retrain: what both peers share."""

    def __init__(self, name: str, ds, b: dict, budget_s: float, precision: str, workdir: str):
        import keras

        from fmnist_exp import params as P
        from fmnist_exp.train import job

        self.name, self.b, self.budget_s, self.precision, self.workdir = name, b, budget_s, precision, workdir
        self.start_load, self.t0 = load1(), time.perf_counter()
        keras.config.set_dtype_policy(precision)
        self.p = P.network("custom", {"model": BUILDER, "epochs": b["trial_epochs"],
                                      "train_samples": b["trial_images"], "seed": SEED})
        self.final_p = P.network("custom", {"model": BUILDER, "epochs": b["final_epochs"],
                                            "train_samples": b["final_images"], "seed": SEED})
        s, f = job.splits(ds, self.p), job.splits(ds, self.final_p)  # the platform's split and subset
        self.x, self.y = scaled(s.x_train), one_hot(s.y_train)
        self.x_val, self.y_val, self.val_labels = scaled(s.x_val), one_hot(s.y_val), s.y_val
        self.fx, self.fy = scaled(f.x_train), one_hot(f.y_train)
        self.x_test = scaled(ds.x_test)
        self.clock = epoch_clock(len(self.x), len(self.x_val))
        self.refused = 0

    def predict_s(self, epochs: int, n_train: int, q: float) -> float:
        rows = self.clock.steady or self.clock.warm or self.clock.first
        if not rows:
            return 0.0
        per_train, per_val = np.percentile(rows, q, axis=0)
        return epochs * (n_train * per_train + len(self.x_val) * per_val)

    def fits(self, epochs: int) -> bool:
        """Whether a trial of ``epochs`` and then the final retrain still end within B (before the first
        epoch there is nothing to predict from, and the trial starts); counts the refusals."""
        if self.b["trials"] and len(self.clock.first) >= self.b["trials"]:  # --smoke: a trial count instead
            return False
        need = self.predict_s(epochs, len(self.x), 50) + self.predict_s(self.b["final_epochs"], len(self.fx),
                                                                         FINAL_QUANTILE)
        ok = time.perf_counter() - self.t0 + need <= self.budget_s
        self.refused += not ok
        return ok

    def search_kwargs(self) -> dict:
        from fmnist_exp.train import fit as F

        return {"x": self.x, "y": self.y, "validation_data": (self.x_val, self.y_val), "batch_size": BATCH,
                "epochs": self.b["trial_epochs"], "callbacks": [*F.standard_callbacks(self.p), self.clock],
                "verbose": 0}

    def finish(self, tuner, build_model) -> Entry:
        import keras

        from fmnist_exp.train import fit as F

        search_s = time.perf_counter() - self.t0
        trials = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"]
        best = tuner.oracle.get_best_trials(1)[0]
        hp = best.hyperparameters  # its values keep inactive ones (units_2 of a 2-layer network): not shown
        config = {h.name: hp.values[h.name] for h in hp.space
                  if hp.is_active(h) and h.name in hp.values and not h.name.startswith("tuner/")}
        print(f"[{self.name}] search: {len(tuner.oracle.trials)} trials in {search_s:.0f} s, best val "
              f"{best.score:.4f} with {config}; final retrain", file=sys.stderr, flush=True)
        keras.utils.clear_session()
        F.seed_everything(SEED)
        model = build_model(best.hyperparameters)
        t_fit = time.perf_counter()
        hist = model.fit(self.fx, self.fy, validation_data=(self.x_val, self.y_val), batch_size=BATCH,
                         epochs=self.b["final_epochs"], callbacks=F.standard_callbacks(self.final_p), verbose=0)
        fit_s = time.perf_counter() - t_fit
        labels = model.predict(self.x_test, batch_size=1024, verbose=0).argmax(axis=1)
        final_val = float((model.predict(self.x_val, batch_size=1024, verbose=0).argmax(axis=1)
                           == self.val_labels).mean())
        wall = time.perf_counter() - self.t0
        end_load = load1()
        # what a user has: keras-tuner's directory, and a model only if they save it themselves
        root = Path(self.workdir) / self.name
        files = [f for f in root.rglob("*") if f.is_file()]
        saved = Path(self.workdir) / f"{self.name}_best.keras"
        model.save(saved)
        back = keras.saving.load_model(saved)
        few01 = back.predict(self.x_test[:100], verbose=0).argmax(axis=1)
        raw = back.predict(self.x_test[:100] * np.float32(255.0), verbose=0).argmax(axis=1)
        in_hand = {
            "mlflow_runs": 0, "registered_versions": 0,
            "trial_json_files": sum(f.name == "trial.json" for f in files),
            "directory_files": len(files), "directory_mb": round(sum(f.stat().st_size for f in files) / 1e6, 1),
            "served": "none: a .keras file the user saves and serves themselves (feeding x/255)",
            "saved_keras_mb": round(saved.stat().st_size / 1e6, 2),
            "reloaded_answers_like_trained": bool((few01 == labels[:100]).all()),
            "answers_raw_0_255_like_x_over_255_on_100": round(float((raw == few01).mean()), 2),
        }
        detail = {"completed": len(trials), "refused_by_deadline": self.refused, "precision": self.precision,
                  "final_epochs_run": len(hist.history.get("loss", [])), "final_train_wall_s": round(fit_s, 1)}
        keras.config.set_dtype_policy("float32")
        return Entry(self.name, search_s, wall - search_s, wall, len(tuner.oracle.trials), float(best.score),
                     final_val, config, labels, {"start": self.start_load, "end": end_load}, in_hand, detail)


def run_random(peer: Peer, build_model) -> Entry:
    """keras-tuner's RandomSearch: its oracle, refusing (STOPPED) a trial that would not end with the final in B."""
    import keras_tuner as kt

    class DeadlineRandom(kt.oracles.RandomSearchOracle):
        def populate_space(self, trial_id):
            r = super().populate_space(trial_id)
            return r if r["status"] != "RUNNING" or peer.fits(peer.b["trial_epochs"]) else {"status": "STOPPED"}

    oracle = DeadlineRandom(objective=kt.Objective("val_accuracy", "max"), max_trials=100_000, seed=SEED)
    tuner = kt.Tuner(oracle=oracle, hypermodel=build_model, directory=peer.workdir, project_name="random",
                     overwrite=True)  # what kt.RandomSearch is: Tuner with this oracle
    tuner.search(**peer.search_kwargs())
    return peer.finish(tuner, build_model)


def run_hyperband(peer: Peer, build_model) -> Entry:
    """keras-tuner's Hyperband (its run_trial: epochs, initial_epoch and the checkpoint it continues from)."""
    max_epochs = HYPERBAND_FACTOR * peer.b["trial_epochs"]
    tuner = deadline_hyperband(peer.fits, max_epochs=max_epochs, seed=SEED, hypermodel=build_model,
                               directory=peer.workdir, project_name="hyperband", overwrite=True)
    tuner.search(**peer.search_kwargs())
    return peer.finish(tuner, build_model)


def hand(e: dict) -> str:
    h = e["in_hand"]
    if e["name"] == "ours":
        return (f"{h['mlflow_runs']} MLflow runs, {h['champion']}, served by pyfunc / `mlflow models serve` "
                f"on raw pixels")
    return (f"0 MLflow runs, {h['trial_json_files']} trial.json ({h['directory_files']} files, "
            f"{h['directory_mb']} MB); no registry; a .keras file ({h['saved_keras_mb']} MB) to save and serve, "
            f"fed x/255")


def table(out: dict, names: list[str]) -> str:
    """The JSON's figures as a markdown table for BENCHMARKS.md."""
    rows = ["| contestant | trials | search / final / total | best val (search) | final val | test accuracy (95% CI) "
            "| ours minus this, paired (95% CI), McNemar p (b, c) | what the user has in hand |", "|---" * 8 + "|"]
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    for name in names:
        e, r = out[name], out.get(f"ours_vs_{name}")
        paired = (f"{100 * r['diff']:+.2f} ({100 * r['ci_low']:+.2f} to {100 * r['ci_high']:+.2f}), "
                  f"p = {r['p_value']:.2g} ({r['b']}, {r['c']})" if r else "")
        (lo, hi) = e["test_ci95"]
        d = e["detail"]
        trials = (f"{e['trials']} ({d['pruned']} pruned)" if name == "ours" else str(e["trials"]))
        rows.append(f"| {name} | {trials} | {e['search_s']:.0f} / {e['final_s']:.0f} / {e['wall_s']:.0f} s | "
                    f"{pct(e['best_val_accuracy'])}% | {pct(e['final_val_accuracy'])}% | "
                    f"{pct(e['test_accuracy'])}% ({pct(lo)} to {pct(hi)}) | {paired} | {hand(e)} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timeout", type=int, default=420, help="ours' study timeout: no trial starts after it (s)")
    ap.add_argument("--budget_s", type=float, default=0, help="each peer's wall-time budget B (0 = ours' wall)")
    ap.add_argument("--order", default=",".join(CONTESTANTS), help="which contestants run, in this order")
    ap.add_argument("--peer_precision", choices=("float32", "same"), default="float32",
                    help="the peers' Keras dtype policy: keras-tuner's default, or the platform's `auto` here")
    ap.add_argument("--markdown", default="", help="also write the markdown table to this file")
    ap.add_argument("--smoke", action="store_true", help="tiny budgets: check the script, not the tools")
    args = ap.parse_args()
    order = contest_order(args.order, args.budget_s, CONTESTANTS)
    try:
        import keras_tuner
        import tensorboard  # noqa: F401  (keras-tuner imports it in every trial on TensorFlow)
    except ImportError as e:
        raise SystemExit(f"{e}: install the bench extra, pip install -e '.[bench]'") from None
    if not GUIDE.is_file():
        raise SystemExit(f"{GUIDE} not found: the bench searches the guide's build_model from it")

    import keras

    from fmnist_exp import data as D
    from fmnist_exp import stats
    from fmnist_exp.train.precision import resolve_precision

    b = SMOKE if args.smoke else FULL
    build_model = build_model_of_guide()
    ours_precision = resolve_precision("auto")
    peer_precision = ours_precision if args.peer_precision == "same" else "float32"
    ds = D.load(None)
    git = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
    out = {"machine": {**machine(), **cpu_facts()}, "date": time.strftime("%Y-%m-%d"),
           "started": time.strftime("%H:%M:%S"), "code": git.stdout.strip(), "keras_tuner": keras_tuner.__version__,
           "keras": keras.__version__, "backend": keras.backend.backend(), "smoke": args.smoke, "budgets": b,
           "ours_timeout_s": 0 if b["trials"] else args.timeout, "batch_size": BATCH,
           "hyperband_settings": {"factor": HYPERBAND_FACTOR, "max_epochs": HYPERBAND_FACTOR * b["trial_epochs"]},
           "precision": {"ours": ours_precision, "peers": peer_precision}, "builder": BUILDER}
    entries: dict[str, Entry] = {}
    budget_s = args.budget_s
    with tempfile.TemporaryDirectory() as tmp:
        study = study_file(Path(tmp), b, args.timeout)
        for name in order:
            print(f"# {name}: starting at {time.strftime('%H:%M:%S')}, load {load1()}", file=sys.stderr, flush=True)
            if name == "ours":
                entries[name] = run_ours(study, ds)
                budget_s = budget_s or entries[name].wall_s
            else:
                keras.utils.clear_session()
                keras.utils.set_random_seed(SEED)
                peer = Peer(name, ds, b, budget_s, peer_precision, tmp)
                entries[name] = (run_random if name == "random" else run_hyperband)(peer, build_model)
            e = entries[name]
            print(f"# {name}: done at {time.strftime('%H:%M:%S')}: {e.trials} trials, {e.wall_s:.0f} s, "
                  f"test {(e.test_labels == ds.y_test).mean():.4f}", file=sys.stderr, flush=True)
    out["budget_s"] = round(budget_s, 1)
    out["ended"] = time.strftime("%H:%M:%S")
    for e in entries.values():
        right = e.test_labels == ds.y_test
        lo, hi = accuracy_ci(right)
        out[e.name] = {"name": e.name, "wall_s": round(e.wall_s, 1), "search_s": round(e.search_s, 1),
                       "final_s": round(e.final_s, 1), "trials": e.trials, "best_val_accuracy": round(e.best_val, 4),
                       "final_val_accuracy": round(e.final_val, 4), "test_accuracy": round(float(right.mean()), 4),
                       "test_ci95": [round(lo, 4), round(hi, 4)], "config": e.config, "load1": e.load,
                       "detail": e.detail, "in_hand": e.in_hand}
        if e.name != "ours" and "ours" in entries:
            cmp = stats.compare(ds.y_test, entries["ours"].test_labels, e.test_labels)
            out[f"ours_vs_{e.name}"] = {**{k: v if isinstance(v, int) else float(f"{v:.4g}")
                                           for k, v in cmp.fields("", "ours", e.name).items()},
                                        "describe": cmp.describe()}
    md = table(out, order)
    print(md, file=sys.stderr)
    emit(out)
    if args.markdown:
        Path(args.markdown).write_text(md + "\n")


if __name__ == "__main__":
    main()
