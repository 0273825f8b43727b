"""fmnist-exp: Fashion-MNIST experiments with MLflow tracking and Optuna tuning.

Pipeline, one module per step: data -> models -> train -> experiment (one tracked run)
-> tune (Optuna study) -> registry (test score, register, aliases). config holds every
default; cli exposes the MLproject entry points.
"""

__version__ = "0.1.0"

import os as _os

# TensorFlow's C++ start-up chatter (CUDA probes, CPU feature notes) hides the useful output.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN kernels: TensorFlow turns them on by itself only on some Intel CPUs; on this project's
# 2-core AMD machines they trained the CNN up to 1.36x faster (no gain in the machine's slow
# phases; BENCHMARKS.md). Must be set
# before TensorFlow is imported; export TF_ENABLE_ONEDNN_OPTS=0 to compare.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
