"""Training throughput (images/s) of CNN variants on this machine, each in its own process.

    python bench/bench_throughput.py            # all variants, side by side, medians of 3 epochs
    python bench/bench_throughput.py --quick    # 1 timed epoch each

Variants differ in one thing from the default recipe: architecture, batch size, threads,
XLA. Each trains on 12,800 images after a warm-up epoch; FLOPs per image are counted from
the layers (multiply-adds x 2, forward only), so GFLOP/s can be set against the CPU's peak.
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
from common import emit, machine  # noqa: E402

VARIANTS = {
    "default": {},
    "batch_64": {"batch_size": 64},
    "batch_256": {"batch_size": 256},
    "no_batchnorm": {"batch_norm": False},
    "filters_16_32_64": {"filters": "16,32,64"},
    "filters_32_64_128_256": {"filters": "32,64,128,256"},
    "threads_intra1_inter1": {"_env": {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}},
    "threads_intra2_inter1": {"_env": {"TF_NUM_INTRAOP_THREADS": "2", "TF_NUM_INTEROP_THREADS": "1"}},
    "xla_jit_compile": {"_jit": True},
    "augment": {"augment": True},
}


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

    from fmnist_exp import config as C
    from fmnist_exp import data, models, train

    overrides = {k: v for k, v in spec.items() if not k.startswith("_")}
    p = C.resolve("cnn", {**overrides, "epochs": 1})
    ds = data.load()
    s = data.split(ds, val_fraction=0.1, seed=0, train_samples=12_800)
    model = models.build("cnn", p)
    train.compile_model(model, p, steps_per_epoch=100)
    if spec.get("_jit"):
        model.compile(optimizer=model.optimizer, loss=model.loss, metrics=["accuracy"], jit_compile=True)
    ds_train = train.make_dataset(s.x_train, s.y_train, batch_size=p["batch_size"], shuffle=True, seed=0,
                                  augment=p["augment"])
    model.fit(ds_train.take(20), epochs=1, verbose=0)  # warm-up: tracing and allocation
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.fit(ds_train, epochs=1, verbose=0)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    flops = forward_flops(model)
    ips = len(s.x_train) / med
    # training ~ 3x forward FLOPs (forward, backward for inputs and for weights)
    return {"images_per_s": round(ips), "epoch_s_median": round(med, 2), "params": model.count_params(),
            "forward_mflops_per_image": round(flops / 1e6, 2), "train_gflops_per_s": round(3 * flops * ips / 1e9, 1),
            "cpu_seconds_per_wall_second": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated variant names")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    epochs = 1 if args.quick else 3
    if args.one:
        print(json.dumps(one(json.loads(args.one), epochs)))
        return
    names = args.only.split(",") if args.only else list(VARIANTS)
    out = {"machine": machine(), "train_images": 12_800, "timed_epochs": epochs, "variants": {}}
    for name in names:
        spec = VARIANTS[name]
        env = {**os.environ, **spec.get("_env", {})}
        t_cpu0 = os.times()
        proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)] + (["--quick"] if args.quick else []),
                              env=env, capture_output=True, text=True)
        t_cpu1 = os.times()
        if proc.returncode:
            out["variants"][name] = {"error": proc.stderr[-500:]}
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        wall = t_cpu1.elapsed - t_cpu0.elapsed
        cpu = (t_cpu1.children_user + t_cpu1.children_system) - (t_cpu0.children_user + t_cpu0.children_system)
        res["cpu_seconds_per_wall_second"] = round(cpu / wall, 2)  # whole process, start-up included
        out["variants"][name] = res
        print(f"# {name}: {res['images_per_s']} img/s", file=sys.stderr, flush=True)
    base = out["variants"].get("default", {}).get("images_per_s")
    if base:
        for res in out["variants"].values():
            if "images_per_s" in res:
                res["speed_vs_default"] = round(res["images_per_s"] / base, 2)
    emit(out)


if __name__ == "__main__":
    main()
