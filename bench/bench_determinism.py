"""What a bit-identical replay of a CNN fit takes on this CPU, and what it costs.

    python bench/bench_determinism.py [--epochs 3] [--train_samples 5000] [--repeats 2]

Each setting trains the default CNN (seed 42, the project's own pipeline: fmnist_exp.model.networks,
fmnist_exp.train.fit) in a fresh process ``--repeats`` times, then compares the final weights and
the test-set probabilities bit for bit (sha256) across those processes. Settings are run in
interleaved rounds, so their fit times are side by side on a shared, noisy machine. The
spread of replays is the std of test accuracy within a setting (same bits: zero) and across the
settings (what other kernels or thread counts, i.e. another machine, give with the same seed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine  # noqa: E402

# name -> (TF_ENABLE_ONEDNN_OPTS, enable_op_determinism, intra/inter-op threads (0 = TF's own))
SETTINGS = {
    "default": ("1", False, 0),
    "op_determinism": ("1", True, 0),
    "onednn_off": ("0", False, 0),
    "onednn_off+op_determinism": ("0", True, 0),
    "one_thread": ("1", False, 1),
    "one_thread+op_determinism": ("1", True, 1),
}


def worker(name: str, epochs: int, train_samples: int) -> dict:
    onednn, determinism, threads = SETTINGS[name]
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = onednn  # before TensorFlow loads
    import numpy as np
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    if determinism:
        tf.config.experimental.enable_op_determinism()  # also makes tf.data keep its order
    from fmnist_exp import data
    from fmnist_exp import params as P
    from fmnist_exp.model.networks import build
    from fmnist_exp.train import fit as F
    from fmnist_exp.train.evaluate import predict_proba

    p = P.network("cnn", {"epochs": epochs, "train_samples": train_samples})
    s = data.split(data.load(), val_fraction=p.val_fraction, seed=p.seed, train_samples=p.train_samples)
    F.seed_everything(p.seed)
    model = build(p, s.info)
    fit = F.fit(model, s, p)
    probs = predict_proba(model, s.x_test)
    weights = hashlib.sha256(b"".join(np.ascontiguousarray(w).tobytes() for w in model.get_weights()))
    return {"weights_sha256": weights.hexdigest()[:16],
            "probs_sha256": hashlib.sha256(probs.tobytes()).hexdigest()[:16],
            "test_accuracy": float((probs.argmax(1) == s.y_test).mean()), "fit_s": fit.wall_s}


def run_worker(name: str, args) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, __file__, "--worker", name, "--epochs", str(args.epochs),
                          "--train_samples", str(args.train_samples)],
                         capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict], baseline_fit_s: float) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0]["error"]}
    accs = [r["test_accuracy"] for r in ok]
    fit_s = statistics.median(r["fit_s"] for r in ok)
    return {
        "bit_identical_weights": len({r["weights_sha256"] for r in ok}) == 1 and len(ok) == len(runs),
        "bit_identical_predictions": len({r["probs_sha256"] for r in ok}) == 1 and len(ok) == len(runs),
        "test_accuracies": [round(a, 4) for a in accs],
        "test_accuracy_std": round(statistics.stdev(accs), 5) if len(accs) > 1 else 0.0,
        "fit_s_median": round(fit_s, 1),
        "slowdown_vs_default": round(fit_s / baseline_fit_s, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train_samples", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=2, help="processes per setting (the default setting gets one more)")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.epochs, args.train_samples)))
        return
    names = args.settings.split(",")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for round_ in range(args.repeats + 1):  # interleaved: every setting once per round
        for n in names:
            if round_ < args.repeats or n == "default":
                runs[n].append(run_worker(n, args))
                print(f"# round {round_} {n}: {runs[n][-1]}", file=sys.stderr, flush=True)
    base = statistics.median(r["fit_s"] for r in runs.get("default", runs[names[0]]) if "error" not in r)
    firsts = [runs[n][0]["test_accuracy"] for n in names if "error" not in runs[n][0]]
    emit({"machine": machine(), "budget": {"family": "cnn", "epochs": args.epochs,
                                           "train_samples": args.train_samples, "seed": 42},
          "settings": {n: {"onednn": SETTINGS[n][0] == "1", "op_determinism": SETTINGS[n][1],
                           "threads": SETTINGS[n][2] or "tf default", **summarise(runs[n], base)} for n in names},
          # what a replay on another machine (other kernels or threads) may give: same seed, other bits
          "test_accuracy_std_across_settings": round(statistics.stdev(firsts), 5) if len(firsts) > 1 else 0.0})


if __name__ == "__main__":
    main()
