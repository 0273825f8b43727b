"""The default `cnn` network trained under each Keras 3 backend on this CPU (BENCHMARKS.md, "Keras backends").

    python bench/bench_backends.py                                   # tensorflow, jax, torch, project_tf; 2 rounds
    python bench/bench_backends.py --backends tensorflow,jax --rounds 3
    python bench/bench_backends.py --epochs 2 --train_samples 5000 --rounds 1   # smoke: checks the script only
    python bench/bench_backends.py --backends tensorflow,jax --full  # + test accuracy after the whole recipe

Every row is the same network, parameters and schedule: `fmnist_exp.params.network("cnn")`, built by
`fmnist_exp.model.networks.build` and compiled by `fmnist_exp.train.fit.compile_model` (Adam 2e-3, cosine decay
over the run's epochs, label smoothing 0.1, batch 128). Only the backend differs, and each runs in
its own process, since KERAS_BACKEND is read once, when keras is first imported. All backends are fed
alike: float32 numpy arrays and one-hot labels given to `fit()` (or, with ``--feed generator``, a
plain Python generator of shuffled batches), so no row gets the project's tf.data pipeline. Keras'
own TensorFlow trainer still wraps arrays in tf.data internally; that is part of that backend.
``project_tf`` is the reference: TensorFlow fed by `train.inputs.make_dataset`, as the `cnn` entry point runs.

Per backend: seconds per epoch (the first epoch holds tracing/XLA compilation and is reported
apart; the steady figure is the median of the later epochs), CPU seconds per wall second over
those epochs (how much of the machine the backend used) and the accuracy after the run. Rounds
interleave the backends (A, B, B, A, ...) so a slow spell on a shared machine hits each; each
backend's figure is the median over rounds, and ``speed_vs_tensorflow`` divides TensorFlow's
steady epoch time by each backend's. With ``--full`` the run is the whole default recipe
(8 epochs unless ``--epochs``, all 54,000 training images unless ``--train_samples``, validation
each epoch, early stopping as `cnn` has it) and ``reaches_93`` says whether the test accuracy got there.

Backends missing from this interpreter are reported as skipped, with how to install them:
JAX with `pip install -e ".[bench]"`. PyPI's Linux `torch` pulls CUDA (GBs); its CPU build (~190 MB)
comes from download.pytorch.org (`--index-url https://download.pytorch.org/whl/cpu`) or a local
wheel. Kept out of the project's venv (it wants a newer setuptools), it can live on PYTHONPATH:
`pip install --no-deps --target /tmp/torch-cpu torch==2.13.0+cpu sympy mpmath networkx filelock`
(+ that index URL), then run with `PYTHONPATH=$PWD:/tmp/torch-cpu`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import emit, machine  # noqa: E402

# row name -> (KERAS_BACKEND, feed): the feed "project" is train.inputs.make_dataset's tf.data pipeline
BACKENDS = {
    "tensorflow": ("tensorflow", None),
    "jax": ("jax", None),
    "torch": ("torch", None),
    "project_tf": ("tensorflow", "project"),
}
PACKAGE = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
INSTALL_HINT = {
    "jax": 'pip install -e ".[bench]"  (jax[cpu])',
    "torch": "a CPU build on PYTHONPATH: pip install --no-deps --target /tmp/torch-cpu torch==2.13.0+cpu sympy "
             "mpmath networkx filelock --index-url https://download.pytorch.org/whl/cpu (PyPI's Linux torch "
             "bundles CUDA); then PYTHONPATH=$PWD:/tmp/torch-cpu",
}
TARGET = 0.93


def batches(x, y, batch_size: int, seed: int):
    """Shuffled (x, y) batches for ever, reshuffled each pass: the plain Python generator feed."""
    import numpy as np

    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(x))
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            yield x[idx], y[idx]


def one(feed: str, epochs: int, train_samples: int, full: bool) -> dict:
    """Train the default cnn in this process, under whatever KERAS_BACKEND the parent set."""
    import keras
    import numpy as np

    from fmnist_exp import data
    from fmnist_exp import params as P
    from fmnist_exp.model.networks import build
    from fmnist_exp.train import fit as F
    from fmnist_exp.train.evaluate import evaluate
    from fmnist_exp.train.inputs import make_dataset

    overrides = {"epochs": epochs, "train_samples": train_samples}
    if not full:
        overrides["early_stopping_patience"] = 0  # timing runs train every epoch they are given
    p = P.network("cnn", overrides)
    s = data.split(data.load(), val_fraction=p.val_fraction, seed=p.seed, train_samples=p.train_samples)
    F.seed_everything(p.seed)
    model = build(p, s.info)
    steps = -(-len(s.x_train) // p.batch_size)
    F.compile_model(model, p, steps_per_epoch=steps)
    epoch_s: list[float] = []
    cpu_s: list[float] = []

    class EpochClock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            epoch_s.append(time.perf_counter() - self.t0)
            cpu_s.append(time.process_time() - self.c0)
            print(f"# {keras.backend.backend()}/{feed}: epoch {epoch + 1} {epoch_s[-1]:.1f} s", file=sys.stderr,
                  flush=True)

    callbacks = [EpochClock(), *(F.standard_callbacks(p) if full else [])]
    kw = dict(epochs=p.epochs, verbose=0, callbacks=callbacks)
    onehot = np.eye(s.info.num_classes, dtype="float32")
    if full:
        kw["validation_data"] = (s.x_val.astype("float32"), onehot[s.y_val])
    if feed == "project":
        classes = s.info.num_classes
        ds = make_dataset(s.x_train, s.y_train, classes, p.batch_size, p.seed)
        if full:
            kw["validation_data"] = make_dataset(s.x_val, s.y_val, classes, 1024)
        model.fit(ds, **kw)
    elif feed == "generator":
        gen = batches(s.x_train.astype("float32"), onehot[s.y_train], p.batch_size, p.seed)
        model.fit(gen, steps_per_epoch=steps, **kw)
    else:
        model.fit(s.x_train.astype("float32"), onehot[s.y_train], batch_size=p.batch_size, shuffle=True, **kw)
    later = epoch_s[1:] or epoch_s
    test = evaluate(model, s.x_test, s.y_test, prefix="test_")["test_accuracy"]
    return {
        "backend": keras.backend.backend(), "feed": feed, "jit_compile": bool(model.jit_compile),
        "threads": threads(), "train_images": len(s.x_train), "epochs_run": len(epoch_s),
        "first_epoch_s": round(epoch_s[0], 2), "epoch_s": [round(t, 2) for t in epoch_s],
        "steady_epoch_s": round(statistics.median(later), 2),
        "steady_images_per_s": round(len(s.x_train) / statistics.median(later)),
        "cpu_s_per_wall_s": round(sum(cpu_s[1:] or cpu_s) / sum(later), 2),
        "test_accuracy": round(test, 4), "params": model.count_params(), "versions": versions(),
    }


def threads() -> int | None:
    """The compute threads the backend was given (None where it does not say)."""
    import keras

    if keras.backend.backend() == "torch":
        import torch

        return torch.get_num_threads()
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.config.threading.get_intra_op_parallelism_threads() or None  # 0: TF's own choice
    return None


def versions() -> dict:
    import keras

    out = {"keras": keras.__version__}
    pkg = PACKAGE[keras.backend.backend()]
    out[pkg] = __import__(pkg).__version__
    if pkg == "jax":
        import jaxlib

        out["jaxlib"] = jaxlib.__version__
    return out


def run_backend(name: str, args) -> dict:
    """One row in a fresh process; KERAS_BACKEND must be set before keras is imported."""
    backend, feed = BACKENDS[name]
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, __file__, "--one", feed or args.feed, "--epochs", str(args.epochs),
           "--train_samples", str(args.train_samples)] + (["--full"] if args.full else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr[-1500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def missing(name: str) -> str | None:
    """Why a row cannot run here, or None."""
    pkg = PACKAGE[BACKENDS[name][0]]
    if importlib.util.find_spec(pkg) is None:
        return f"{pkg} is not importable by {sys.executable}; install: {INSTALL_HINT.get(pkg, pkg)}"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default=",".join(BACKENDS), help=f"comma list of {', '.join(BACKENDS)}")
    ap.add_argument("--epochs", type=int, default=None,
                    help="epochs per run, the first one compiles (default 4; 8 with --full)")
    ap.add_argument("--train_samples", type=int, default=None,
                    help="training images (default 12,800; with --full all 54,000; 0 = all)")
    ap.add_argument("--rounds", type=int, default=2, help="repeat the backends, alternating order; medians")
    ap.add_argument("--feed", choices=("arrays", "generator"), default="arrays",
                    help="how the backend rows get batches: numpy arrays to fit(), or a Python generator")
    ap.add_argument("--full", action="store_true",
                    help="the whole default recipe on all training images, validation and early stopping "
                         "included; reports whether test accuracy reaches 93%%")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.epochs = args.epochs or (8 if args.full else 4)
    args.train_samples = (0 if args.full else 12_800) if args.train_samples is None else args.train_samples
    if args.one:
        print(json.dumps(one(args.one, args.epochs, args.train_samples, args.full)))
        return
    names = [n for n in args.backends.split(",") if n]
    unknown = sorted(set(names) - set(BACKENDS))
    if unknown:
        sys.exit(f"--backends: unknown {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    out = {"machine": machine(), "epochs": args.epochs, "rounds": args.rounds, "feed": args.feed, "full": args.full,
           "train_images": None, "backends": {}}
    skipped = {n: why for n in names if (why := missing(n))}
    out["backends"].update({n: {"skipped": why} for n, why in skipped.items()})
    names = [n for n in names if n not in skipped]
    for rnd in range(args.rounds):
        for name in names if rnd % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            res = run_backend(name, args)
            row = out["backends"].setdefault(name, {"rounds": []})
            if "error" in res:
                row.setdefault("errors", []).append(res["error"])
                print(f"# round {rnd + 1} {name}: error\n{res['error']}", file=sys.stderr, flush=True)
                continue
            res["process_wall_s"] = round(time.perf_counter() - t0, 1)
            out["train_images"] = res.pop("train_images")
            row["rounds"].append(res)
            print(f"# round {rnd + 1} {name}: {res['steady_epoch_s']} s/epoch, test {res['test_accuracy']}",
                  file=sys.stderr, flush=True)
    for row in out["backends"].values():
        if row.get("rounds"):
            summarise(row, args.full)
    base = out["backends"].get("tensorflow", {}).get("steady_epoch_s")
    for row in out["backends"].values():
        if base and "steady_epoch_s" in row:
            row["speed_vs_tensorflow"] = round(base / row["steady_epoch_s"], 2)
    emit(out)


def summarise(row: dict, full: bool) -> None:
    """Medians over rounds in front of the per-round details."""
    rounds = row["rounds"]
    med = lambda key: statistics.median(r[key] for r in rounds)  # noqa: E731
    first = rounds[0]
    row.update({k: first[k] for k in ("backend", "feed", "jit_compile", "threads", "params", "versions")})
    row["steady_epoch_s"] = round(med("steady_epoch_s"), 2)
    row["first_epoch_s"] = round(med("first_epoch_s"), 2)
    row["steady_images_per_s"] = round(med("steady_images_per_s"))
    row["cpu_s_per_wall_s"] = round(med("cpu_s_per_wall_s"), 2)
    row["test_accuracy"] = [r["test_accuracy"] for r in rounds]
    if full:
        row["reaches_93"] = [r["test_accuracy"] >= TARGET for r in rounds]
    row["rounds"] = [{k: r[k] for k in ("epoch_s", "cpu_s_per_wall_s", "test_accuracy", "epochs_run",
                                        "process_wall_s")} for r in rounds]


if __name__ == "__main__":
    main()
