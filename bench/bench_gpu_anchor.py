"""A GPU yardstick: the project's own training path against a hand-written PyTorch loop of the same
network and recipe, on the same machine, in one invocation (BENCHMARKS.md, "GPU").

    python bench/bench_gpu_anchor.py [--batch_size 1024] [--learning_rate 0.0057] [--epochs 10]
        [--bf16] [--compile] [--channels_last] [--project jax|torch|none] [--data_dir D] [--smoke]

**The anchor** is plain PyTorch, nothing of Keras: the default `cnn` network built from
`params.network("cnn")` (conv 3x3 without bias, max-pool, batch norm (momentum 0.1 = Keras' 0.9,
eps 1e-3), ReLU per block, `pool_first` as the default has it; dropout, a dense layer, dropout,
softmax), Glorot-uniform kernels and zero biases as Keras initialises them, Adam (eps 1e-7) with
the L2 penalty on the kernels (`weight_decay` = 2 x l2: the gradient of Keras' ``l2 * sum(w**2)``),
label smoothing, linear warm-up then cosine decay to zero per step as `train.fit.learning_rate` does.
The whole split lives on the device as uint8; each epoch shuffles on the device, and scores the
validation images inside the timed epoch (the project's `fit` does that too, for early stopping).
Test accuracy is scored after each epoch outside the clock, for the time to 93%.

**The project's path** is `python -m fmnist_exp cnn` (what `mlflow run . -e cnn` runs) in a child
process under ``KERAS_BACKEND`` = --project, with the same batch size, learning rate, epochs,
warm-up and precision, tracked into a throwaway SQLite store; its figures are the run's own
metrics (`train_wall_s`, `test_accuracy`). The ratio is its training seconds over the anchor's.

On the lent GPU machines (PyTorch and JAX, no TensorFlow, no network) the project's child needs
MLflow, Keras, Optuna and their dependencies carried as wheels; `--project none` times the anchor
alone. With the data (30 MB) the full `mlflow` wheel does not fit the 64 MiB that travels: carry
`mlflow-skinny`, `mlflow-tracing`, `cryptography` and the rest, and write a `mlflow-<version>.dist-info/METADATA`
(Name, Version) beside them, since the logged model's requirements read `mlflow`'s version (2026-11-27).
Prints one JSON object (stdout); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from common import machine  # noqa: E402

if TYPE_CHECKING:
    from fmnist_exp.params import CnnParams


def anchor_network(p: CnnParams):
    """The default cnn as a torch.nn.Sequential over NCHW float pixels 0-255."""
    from torch import nn

    layers: list[nn.Module] = []
    channels = 1
    for f in p.filters:
        for i in range(p.convs_per_block):
            layers.append(nn.Conv2d(channels, f, 3, padding=1, bias=not p.batch_norm))
            channels = f
            last = i == p.convs_per_block - 1
            if p.pool_first and last:
                layers.append(nn.MaxPool2d(2))
            if p.batch_norm:
                layers.append(nn.BatchNorm2d(f, eps=1e-3, momentum=0.1))
            layers.append(nn.ReLU(inplace=True))
        if not p.pool_first:
            layers.append(nn.MaxPool2d(2))  # Keras pools "valid": floor, as torch does
    side = 28
    for _ in p.filters:
        side //= 2
    head: list[nn.Module] = [nn.Flatten()]
    width = channels * side * side
    if p.dense_units:
        head += [nn.Dropout(p.dropout), nn.Linear(width, p.dense_units), nn.ReLU(inplace=True)]
        width = p.dense_units
    head += [nn.Dropout(p.dropout), nn.Linear(width, 10)]  # logits; the loss applies the softmax
    net = nn.Sequential(*layers, *head)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net, [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def lr_at(step: int, *, lr: float, total: int, warmup: int) -> float:
    """train.fit.learning_rate's schedule: linear from 0 over ``warmup`` steps, then cosine to 0."""
    if step < warmup:
        return lr * step / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * min(step - warmup, total - warmup) / max(1, total - warmup)))


def run_anchor(p: CnnParams, s, *, bf16: bool, compile_: bool, channels_last: bool) -> dict:
    import torch
    import torch.nn.functional as F

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(p.seed)
    net, kernels = anchor_network(p)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(device, memory_format=fmt)
    kernel_ids = {id(w) for w in kernels}
    others = [w for w in net.parameters() if id(w) not in kernel_ids]
    opt = torch.optim.Adam([{"params": kernels, "weight_decay": 2 * p.l2}, {"params": others}],
                           lr=p.learning_rate, eps=1e-7, **({"fused": True} if device.type == "cuda" else {}))
    step_fn = torch.compile(net) if compile_ else net

    def on_device(x, y):
        return (torch.as_tensor(np.array(x), device=device).unsqueeze(1),  # a copy: the split's arrays are read-only
                torch.as_tensor(np.array(y), device=device).long())

    xtr, ytr = on_device(s.x_train, s.y_train)
    xva, yva = on_device(s.x_val, s.y_val)
    xte, yte = on_device(s.x_test, s.y_test)

    def pixels(x):
        return x.float().contiguous(memory_format=fmt)

    def accuracy(x, y) -> float:
        net.eval()
        right = 0
        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            for i in range(0, len(x), 4096):
                right += int((net(pixels(x[i:i + 4096]) / 255.0).argmax(1) == y[i:i + 4096]).sum())
        net.train()
        return right / len(x)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    n, bs = len(xtr), p.batch_size
    steps = math.ceil(n / bs)
    total = p.epochs * steps
    warmup = min(int(round(p.warmup_epochs * steps)), total - 1)
    gen = torch.Generator(device=device).manual_seed(p.seed)
    epoch_s, test_acc, val_acc = [], [], []
    step = 0
    for epoch in range(p.epochs):
        sync()
        t0 = time.perf_counter()
        order = torch.randperm(n, device=device, generator=gen)
        for i in range(steps):
            idx = order[i * bs:(i + 1) * bs]
            for g in opt.param_groups:
                g["lr"] = lr_at(step, lr=p.learning_rate, total=total, warmup=warmup)
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                logits = step_fn(pixels(xtr[idx]) / 255.0)
                loss = F.cross_entropy(logits.float(), ytr[idx], label_smoothing=p.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        val_acc.append(round(accuracy(xva, yva), 4))  # inside the epoch's clock, as the project's fit
        sync()
        epoch_s.append(time.perf_counter() - t0)
        test_acc.append(round(accuracy(xte, yte), 4))
        print(f"[anchor] epoch {epoch + 1}: {epoch_s[-1]:.2f} s, val {val_acc[-1]:.4f}, test {test_acc[-1]:.4f}",
              file=sys.stderr, flush=True)
    cum = np.cumsum(epoch_s)
    first_93 = next((i for i, a in enumerate(test_acc) if a >= 0.93), None)
    return {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "torch": torch.__version__,
        "bf16": bf16, "compile": compile_, "channels_last": channels_last,
        "model_params": sum(w.numel() for w in net.parameters()),
        "test_accuracy": test_acc[-1], "val_accuracy": val_acc[-1], "train_s": round(float(cum[-1]), 2),
        "first_epoch_s": round(epoch_s[0], 2),
        "steady_epoch_s": round(float(np.median(epoch_s[1:] or epoch_s)), 3),
        "s_to_93_test": round(float(cum[first_93]), 2) if first_93 is not None else None,
        "test_acc_per_epoch": test_acc, "val_acc_per_epoch": val_acc,
    }


PROJECT_KEYS = ("batch_size", "learning_rate", "epochs", "warmup_epochs", "train_samples", "seed")


def run_project(p: CnnParams, *, backend: str, bf16: bool, data_dir: str | None) -> dict:
    """`python -m fmnist_exp cnn` with the anchor's recipe, in a child under KERAS_BACKEND=backend."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        flat = p.flat()
        flags = [arg for k in PROJECT_KEYS for arg in (f"--{k}", str(flat[k]))]
        flags += ["--precision", "mixed_bfloat16" if bf16 else "float32"]
        # absolute: the child runs in the temporary folder
        flags += ["--data_dir", str(Path(data_dir).resolve())] if data_dir else []
        env = {**os.environ, "KERAS_BACKEND": backend, "MLFLOW_TRACKING_URI": uri,
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "fmnist_exp", "cnn", *flags], env=env, cwd=tmp,
                              stdout=sys.stderr, stderr=sys.stderr)
        wall = time.perf_counter() - t0
        if proc.returncode:
            return {"backend": backend, "error": f"python -m fmnist_exp cnn exited {proc.returncode}"}
        mlflow.set_tracking_uri(uri)
        run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
        m = run.data.metrics
        params = run.data.params
        return {"backend": backend, "precision": params.get("precision_used", params.get("precision")),
                "test_accuracy": round(m["test_accuracy"], 4), "val_accuracy": round(m.get("val_accuracy", 0), 4),
                "train_s": round(m["train_wall_s"], 2), "process_wall_s": round(wall, 1),
                "command": f"KERAS_BACKEND={backend} python -m fmnist_exp cnn {' '.join(flags)}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch_size", type=int, default=1024)
    ap.add_argument("--learning_rate", type=float, default=None,
                    help="default: the cnn default scaled by sqrt(batch_size / its batch size)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--warmup_epochs", type=float, default=0.0)
    ap.add_argument("--train_samples", type=int, default=0, help="training images (0 = all)")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast (anchor), mixed_bfloat16 (project)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the anchor's network")
    ap.add_argument("--channels_last", action="store_true")
    ap.add_argument("--project", default="jax", choices=("jax", "torch", "tensorflow", "none"),
                    help="Keras backend of the project's run (none: the anchor alone)")
    ap.add_argument("--data_dir", default=None)
    ap.add_argument("--smoke", action="store_true", help="2 epochs on 2,000 images: checks the script, not a figure")
    args = ap.parse_args()

    from fmnist_exp import data
    from fmnist_exp import params as P
    from fmnist_exp.params.table import CNN_FILTERS

    default = P.network("cnn")
    lr = args.learning_rate or default.learning_rate * math.sqrt(args.batch_size / default.batch_size)
    p = P.network("cnn", {"batch_size": args.batch_size, "learning_rate": round(lr, 6), "epochs": args.epochs,
                          "warmup_epochs": args.warmup_epochs, "train_samples": args.train_samples,
                          **({"epochs": 2, "train_samples": 2000} if args.smoke else {})})
    if p.filters is None:  # not given: the family's widths, all four blocks on 28x28 images, as
        # model.networks.fit_to_data(p, FASHION_MNIST) makes them (not called: it imports Keras; the anchor does not)
        p = P.replaced(p, filters=CNN_FILTERS)
    ds = data.load(args.data_dir)
    s = data.split(ds, val_fraction=p.val_fraction, seed=p.seed, train_samples=p.train_samples)
    anchor = run_anchor(p, s, bf16=args.bf16, compile_=args.compile, channels_last=args.channels_last)
    print(json.dumps({"anchor": anchor}), file=sys.stderr, flush=True)
    project = None if args.project == "none" else run_project(p, backend=args.project, bf16=args.bf16,
                                                                  data_dir=args.data_dir)
    ratio = (round(project["train_s"] / anchor["train_s"], 2)
             if project and "train_s" in project and anchor["train_s"] else None)
    flat = p.flat()  # widths as "32,64,128,256", as the runs log them
    print(json.dumps({"machine": machine(), "data_source": ds.source, "smoke": args.smoke,
                      "recipe": {k: flat[k] for k in (*PROJECT_KEYS, "filters", "pool_first", "dropout", "l2",
                                                      "label_smoothing")},
                      "anchor": anchor, "project": project, "project_over_anchor": ratio}, indent=2))


if __name__ == "__main__":
    main()
