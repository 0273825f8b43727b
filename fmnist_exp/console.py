"""What the terminal shows: our own lines (one per trial, one per epoch), not the libraries' chatter.

Quiet by default: TensorFlow's C++ start-up lines (oneDNN, CUDA probes: absl logs written to
file descriptor 2 while TensorFlow is imported, whatever TF_CPP_MIN_LOG_LEVEL says), its later
C++ errors (``failed call to cuInit`` on a machine without a GPU), its Python warnings (function
retracing), MLflow's INFO lines and its artifact-download progress bars. ``python -m fmnist_exp
--verbose ...`` or FMNIST_VERBOSE=1 (which `mlflow run` passes on) brings them all back.
configure() runs when the package is imported, before TensorFlow is; the CLI calls it again
for --verbose. Variables the user set are left as they are.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import logging
import os
import sys

VERBOSE_ENV = "FMNIST_VERBOSE"
# quiet-mode defaults: TensorFlow's C++ logs (3 = none, not even cuInit's error), MLflow's tqdm
# bars, MLflow's INFO lines (read when mlflow is imported; the logger is set too if it was already)
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
             "MLFLOW_LOGGING_LEVEL": "WARNING"}
QUIET_LOGGERS = ("tensorflow", "absl")  # Python warnings such as tf.function retracing
_set_here: set[str] = set()  # the QUIET_ENV keys this module set (and may take back for --verbose)


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def configure(verbose: bool | None = None) -> None:
    """Quiet or verbose for this process and the processes it starts (``verbose`` None: from
    $FMNIST_VERBOSE)."""
    if verbose is not None:
        os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    loud = is_verbose()
    for key, value in QUIET_ENV.items():
        if loud and key in _set_here:
            del os.environ[key]
            _set_here.discard(key)
        elif not loud and key not in os.environ:
            os.environ[key] = value
            _set_here.add(key)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if loud else logging.ERROR)
    if "mlflow" in sys.modules:
        logging.getLogger("mlflow").setLevel(os.environ.get("MLFLOW_LOGGING_LEVEL", "INFO").upper())
    if not loud and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


def duration(seconds: float) -> str:
    """'42 s' below two minutes, '3.5 min' above: a console reader's unit."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


@contextlib.contextmanager
def stderr_silenced():
    """File descriptor 2 on /dev/null (C++ libraries write there directly, past sys.stderr)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Imports ``tensorflow`` (whoever asks: keras, MLflow, a test) with stderr silenced, once.

    It finds the module as the other finders would and wraps only the loader's exec_module, so
    the module is the same as without it. In verbose mode it steps aside."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow" or is_verbose():
            return None
        sys.meta_path.remove(self)  # tensorflow is imported once; and no recursion below
        spec = next((s for f in sys.meta_path if hasattr(f, "find_spec") and (s := f.find_spec(name, path, target))),
                    None)
        if spec is not None and spec.loader is not None:
            spec.loader = _SilencedLoader(spec.loader)
        return spec


class _SilencedLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__spec__.loader = module.__loader__ = self.loader  # the module keeps the real loader
        with stderr_silenced():
            self.loader.exec_module(module)
