"""Which numeric precision a training runs in, and what the hardware offers.

``auto`` picks the fastest precision that keeps the accuracy here (docs/speed.md; the figures are
in BENCHMARKS.md, "Training speed on a CPU").
"""

from __future__ import annotations

import functools
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import keras


def resolve_precision(choice: str) -> str:
    """``auto``: the fastest precision that keeps the accuracy here. mixed_float16 where a GPU is
    visible (tensor cores); mixed_bfloat16 under TensorFlow on a CPU with bfloat16 instructions
    (oneDNN runs convolutions and matrix products in bfloat16 on AMX-BF16 or AVX512-BF16 units);
    float32 on other CPUs and backends, where neither has been measured to pay. XLA follows Keras' own ``auto``: on for
    GPUs, off on CPU."""
    if choice != "auto":
        return choice
    if gpu_visible():
        return "mixed_float16"
    native = keras.backend.backend() == "tensorflow" and bool(cpu_has_bfloat16())
    return "mixed_bfloat16" if native else "float32"


@functools.cache  # the hardware does not change within a process
def _cpu_flags() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


# oneDNN levels below AVX512_CORE_BF16: with ONEDNN_MAX_CPU_ISA capped at one of them oneDNN emulates bfloat16
# even on a CPU that has it (the cap is how one CPU runs as an older one does; docs/speed.md).
_ONEDNN_ISA_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def cpu_has_bfloat16() -> bool | None:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16) as oneDNN may use it; None
    where it cannot be told (no /proc/cpuinfo)."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _ONEDNN_ISA_WITHOUT_BF16:
        return False
    flags = _cpu_flags()
    return None if flags is None else ("avx512_bf16" in flags or "amx_bf16" in flags)


def warn_if_slow(precision: str) -> None:
    """mixed_bfloat16 without bfloat16 hardware is emulated and slower than float32: say so, once."""
    if precision == "mixed_bfloat16" and cpu_has_bfloat16() is False and not gpu_visible():
        _warn_bfloat16_emulated()


@functools.cache  # once per process
def _warn_bfloat16_emulated() -> None:
    print("[fmnist] warning: precision=mixed_bfloat16 on a CPU without bfloat16 instructions (AVX512-BF16 or "
          "AMX) is emulated and slower than float32; pass precision=float32 (or auto) here", file=sys.stderr,
          flush=True)


def gpu_visible() -> bool:
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


@contextmanager
def precision_policy(name: str):
    """Build layers under Keras' dtype policy ``name``; the global policy is restored after."""
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(old)
