"""Training throughput (images/s) of CNN variants on this machine, each in its own process.

    python bench/bench_throughput.py            # all variants, side by side, 3 timed epochs each
    python bench/bench_throughput.py --quick    # 1 timed epoch each
    python bench/bench_throughput.py --only default,onednn_off --rounds 3   # interleaved, medians
    python bench/bench_throughput.py --only "$(python bench/bench_throughput.py --list fused_bf16)" --rounds 2

Variants differ in one thing from the recipe the `cnn` defaults replaced (`default`: 32-64-128-256,
pooled after batch norm, float32, Keras' own batch norm): architecture, batch size, threads, oneDNN,
the input pipeline, XLA; the ``fused_bf16:`` rows add fused batch norm
(model.layers.FusedBatchNormalization) and bfloat16, and ``fused_bf16:defaults now`` is today's `cnn`
defaults trained one step per call; the ``avx2:`` rows change one thing from it, on CPUs without
bfloat16 units in mind. Each trains on 12,800 images after a short warm-up; images/s is over all
timed epochs (a stalled epoch counts). FLOPs per image are counted from the layers (multiply-adds x 2,
forward only), so GFLOP/s can be set against the CPU's peak. The figures: BENCHMARKS.md, "Training
speed on a CPU".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_recipes import RECIPES  # noqa: E402
from common import emit, machine  # noqa: E402

ONEDNN_OFF = {"TF_ENABLE_ONEDNN_OPTS": "0"}
BEFORE = {"pool_first": False, "precision": "float32"}  # the recipe the variants below differ from
BF16 = {"precision": "mixed_bfloat16"}
DEFAULTS_NOW = {"_fused": True, "_defaults_now": True, "_spe": 8}  # the cnn defaults as train.fit runs them
FLIPS = {"augment": True, "aug_shift": 0.0, "aug_rotate": 0.0, "aug_zoom": 0.0}  # the default study's, before shifts
LONG_FLOAT32 = {**DEFAULTS_NOW, **RECIPES["long:baseline"], "precision": "float32"}  # the long study without bf16
VARIANTS = {
    "default": {},
    "onednn_off": {"_env": ONEDNN_OFF},
    "tfdata_autotune": {"_autotune": True},
    "onednn_off_and_autotune": {"_env": ONEDNN_OFF, "_autotune": True},
    "previous_default": {"filters": "32,64,128", "_env": ONEDNN_OFF, "_autotune": True},
    "filters_32_64_128": {"filters": "32,64,128"},
    "pool_first": {"pool_first": True},
    "filters_16_64_128_256_pool_first": {"filters": "16,64,128,256", "pool_first": True},
    "convs_per_block_2": {"convs_per_block": 2},
    "batch_256": {"batch_size": 256},
    "no_batchnorm": {"batch_norm": False},
    "threads_intra1_inter1": {"_env": {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}},
    "xla_jit_compile": {"_jit": True},
    "augment": {"augment": True},
    "fused_bf16:fused_batchnorm": {"_fused": True},
    "fused_bf16:bfloat16": BF16,
    "fused_bf16:bfloat16_fused_batchnorm": {**BF16, "_fused": True},
    "fused_bf16:pool_first_bfloat16": {**BF16, "pool_first": True},
    "fused_bf16:defaults now": {"_fused": True, "_defaults_now": True},
    # for CPUs without bfloat16 units (float32 there): today's defaults with one thing changed
    "avx2:filters_24_48_96_192": {"_fused": True, "_defaults_now": True, "filters": "24,48,96,192"},
    "avx2:filters_32_64_128": {"_fused": True, "_defaults_now": True, "filters": "32,64,128"},
    "avx2:filters_32_64_128_128": {"_fused": True, "_defaults_now": True, "filters": "32,64,128,128"},
    "avx2:batch_256": {"_fused": True, "_defaults_now": True, "batch_size": 256},
    "avx2:steps_per_execution_8": {"_fused": True, "_defaults_now": True, "_spe": 8},
    # a CPU with AVX512-BF16 but no AMX (AMD Zen 4): does bfloat16 pay without matrix tiles?
    "avx512bf16:float32 (8 steps per call)": {**DEFAULTS_NOW, "precision": "float32"},
    "avx512bf16:bfloat16 (8 steps per call)": {**DEFAULTS_NOW, **BF16},
    "avx512bf16:bfloat16 batch 256": {**DEFAULTS_NOW, **BF16, "batch_size": 256},
    "avx512bf16:bfloat16 filters 32-64-128": {**DEFAULTS_NOW, **BF16, "filters": "32,64,128"},
    "avx512bf16:bfloat16 filters 24-48-96-192": {**DEFAULTS_NOW, **BF16, "filters": "24,48,96,192"},
    # the main job's candidate networks (flips as the default study trains them; `auto` precision)
    "main:defaults with flips": {**DEFAULTS_NOW, **FLIPS},
    "main:two convolutions per block": {**DEFAULTS_NOW, **FLIPS, "convs_per_block": 2},
    "main:two convolutions per block; batch 256": {**DEFAULTS_NOW, **FLIPS, "convs_per_block": 2, "batch_size": 256},
    "main:two convolutions per block; 24-48-96-192": {**DEFAULTS_NOW, **FLIPS, "convs_per_block": 2,
                                                      "filters": "24,48,96,192"},
    "main:two convolutions per block; 32-64-128": {**DEFAULTS_NOW, **FLIPS, "convs_per_block": 2,
                                                   "filters": "32,64,128"},
    "main:flips and 1-pixel shifts": {**DEFAULTS_NOW, **FLIPS, "aug_shift": 0.04},
    "main:flips and 1-pixel shifts; 32-64-192-384": {**DEFAULTS_NOW, **FLIPS, "aug_shift": 0.04,
                                                     "filters": "32,64,192,384"},
    "main:flips and 1-pixel shifts; 48-96-192-384": {**DEFAULTS_NOW, **FLIPS, "aug_shift": 0.04,
                                                     "filters": "48,96,192,384"},
    # bench_recipes' long: rows as they train (the long network; flips and shifts, crops): what crops cost per
    # epoch, side by side: --only "$(python bench/bench_throughput.py --list long:)" --rounds 3
    **{name: {**DEFAULTS_NOW, **RECIPES[name]} for name in ("long:baseline", "long:crops of up to 4 pixels")},
    # the long study on a CPU without bfloat16 (float32 there), and on one whose oneDNN has AVX2 only
    "long:baseline in float32": LONG_FLOAT32,
    "long:baseline in float32 on AVX2 only": {**LONG_FLOAT32, "_env": {"ONEDNN_MAX_CPU_ISA": "AVX2"}},
}


def autotuned_dataset(x, y, batch_size: int):
    """The input pipeline before train.inputs.pipeline_options fixed its parallelism: tf.data autotuning
    of the map and the prefetch."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y.astype("int32"))).shuffle(len(x), seed=0)
    ds = ds.batch(batch_size).map(lambda a, b: (tf.cast(a, tf.float32), tf.one_hot(b, 10)),
                                  num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def forward_flops(model) -> int:
    """2 x multiply-adds of Conv2D and Dense layers for one image."""
    total = 0
    for layer in model.layers:
        kind = layer.__class__.__name__
        if kind == "Conv2D":
            h, w, cout = layer.output.shape[1:]
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            total += 2 * h * w * cout * kh * kw * cin
        elif kind == "Dense":
            total += 2 * layer.input.shape[-1] * layer.units
    return int(total)


def one(spec: dict, epochs: int) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import keras

    from fmnist_exp import data
    from fmnist_exp import params as P
    from fmnist_exp.model.augment import build_augmenter
    from fmnist_exp.train import fit as F
    from fmnist_exp.train.inputs import make_dataset

    overrides = {k: v for k, v in spec.items() if not k.startswith("_")}
    base = {} if spec.get("_defaults_now") else BEFORE
    p = P.network("cnn", {**base, **overrides, "epochs": 1})
    ds = data.load()
    s = data.split(ds, val_fraction=0.1, seed=0, train_samples=12_800)
    model, precision = F.fresh_model(p, s.info, fused=spec.get("_fused", False))  # under p's precision
    # _spe: steps per call of the compiled train function (train.fit takes F.default_steps_per_execution());
    # rows without _spe were measured one step per call and keep it, so that they rerun as measured
    F.compile_model(model, p, steps_per_epoch=100, steps_per_execution=spec.get("_spe", 1))
    if spec.get("_jit"):
        model.compile(optimizer=model.optimizer, loss=model.loss, metrics=["accuracy"], jit_compile=True)
    if spec.get("_autotune"):
        ds_train = autotuned_dataset(s.x_train, s.y_train, p.batch_size)
    else:
        ds_train = make_dataset(s.x_train, s.y_train, s.info.num_classes, p.batch_size, 0,
                                build_augmenter(p, s.info) if p.augment else None)
    model.fit(ds_train.take(20), epochs=1, verbose=0)  # warm-up: tracing and allocation
    times = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t0)

    model.fit(ds_train, epochs=epochs, verbose=0, callbacks=[EpochTimer()])  # one fit, as a real run does
    med = statistics.median(times)
    flops = forward_flops(model)
    ips = len(s.x_train) * len(times) / sum(times)
    # training ~ 3x forward FLOPs (forward, backward for inputs and for weights)
    return {"images_per_s": round(ips), "epoch_s": [round(t, 2) for t in times], "epoch_s_median": round(med, 2),
            "params": model.count_params(),
            "forward_mflops_per_image": round(flops / 1e6, 2), "train_gflops_per_s": round(3 * flops * ips / 1e9, 1),
            "cpu_seconds_per_wall_second": None, "precision_used": precision}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated variant names")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the variants, alternating order; medians")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--list", default=None, help="print the variant names starting with this prefix and exit")
    args = ap.parse_args()
    if args.list is not None:
        print(",".join(n for n in VARIANTS if n.startswith(args.list)))
        return
    epochs = 1 if args.quick else 3
    if args.one:
        print(json.dumps(one(json.loads(args.one), epochs)))
        return
    names = args.only.split(",") if args.only else list(VARIANTS)
    out = {"machine": machine(), "train_images": 12_800, "timed_epochs": epochs, "rounds": args.rounds,
           "variants": {}}
    for rnd in range(args.rounds):  # rounds interleave the variants, so a slow spell hits them all
        for name in names if rnd % 2 == 0 else names[::-1]:
            res = run_variant(name, args.quick)
            if "error" in res:
                out["variants"][name] = res
                continue
            prev = out["variants"].setdefault(name, {**res, "images_per_s_rounds": []})
            prev["images_per_s_rounds"].append(res["images_per_s"])
            prev["images_per_s"] = round(statistics.median(prev["images_per_s_rounds"]))
            prev["train_gflops_per_s"] = round(3 * res["forward_mflops_per_image"] * prev["images_per_s"] / 1e3, 1)
            print(f"# round {rnd + 1} {name}: {res['images_per_s']} img/s", file=sys.stderr, flush=True)
    base = out["variants"].get("default", {}).get("images_per_s")
    if base:
        for res in out["variants"].values():
            if "images_per_s" in res:
                res["speed_vs_default"] = round(res["images_per_s"] / base, 2)
    emit(out)


def run_variant(name: str, quick: bool) -> dict:
    """One variant in a fresh process (threads and oneDNN are fixed at TensorFlow's import)."""
    spec = VARIANTS[name]
    env = {**os.environ, **spec.get("_env", {})}
    t_cpu0 = os.times()
    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)] + (["--quick"] if quick else []),
                          env=env, capture_output=True, text=True)
    t_cpu1 = os.times()
    if proc.returncode:
        return {"error": proc.stderr[-500:]}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    wall = t_cpu1.elapsed - t_cpu0.elapsed
    cpu = (t_cpu1.children_user + t_cpu1.children_system) - (t_cpu0.children_user + t_cpu0.children_system)
    res["cpu_seconds_per_wall_second"] = round(cpu / wall, 2)  # whole process, start-up included
    return res

if __name__ == "__main__":
    main()
