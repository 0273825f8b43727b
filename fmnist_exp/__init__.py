"""fmnist-exp: Fashion-MNIST experiments with MLflow tracking and Optuna tuning.

The pipeline, one subpackage per stage, each importing only earlier ones: data -> model -> train
(one tracked run) -> study (an Optuna study) -> registry (test score, register, aliases) ->
serving. params holds every parameter once; scale holds the scale-out plumbing (storage, proxy,
locks) that the study uses; commands are the entry points on top, and cli.py parses them.
"""

__version__ = "0.1.0"

import os as _os

# oneDNN kernels: TensorFlow turns them on by itself only on some Intel CPUs; on AMD CPUs they
# train the CNN faster too (BENCHMARKS.md, "Training speed on a CPU"). Must be set before
# TensorFlow is imported; export TF_ENABLE_ONEDNN_OPTS=0 to compare.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
# A study must survive its tracking server being down for 60 s (a restart, a redeploy): every MLflow
# call retries a refused or failed request with exponential backoff, 2 * 2^(n-1) s capped at 120 s
# (urllib3), so with 7 retries the last attempt goes out 244 s after the first failure (at 0, 0, 4,
# 12, 28, 60, 124, 244 s). These are MLflow 3's defaults, pinned here so that the guarantee does
# not rest on them (tests/test_faults.py checks the window MLflow builds from them). The price of
# backoff: a call may wait up to one step after the server is back.
_os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
_os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2")

# The console shows this project's lines, not TensorFlow's and MLflow's chatter (console.py;
# --verbose or FMNIST_VERBOSE=1 brings it back). Must run before TensorFlow is imported.
from . import console as _console  # noqa: E402

_console.configure()
