"""Lineage: which data a run saw, recorded where the MLflow UI shows it.

Every training run (and every trial) logs its training, validation and test splits as MLflow
dataset inputs (the runs table's Dataset column, the run page's Datasets panel). Each split's
digest is derived from its full content (MLflow's own digest hashes only the first 10,000
elements, which would miss a changed tail of the 54,000 training images), so two runs show the
same digest exactly when they saw the same images and labels.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np

DATASET_NAME = "fashion-mnist"
DIGEST_CHARS = 32  # MLflow stores at most 36 characters of a digest; 128 bits identify a split


def split_digest(x: np.ndarray, y: np.ndarray) -> str:
    """sha256 over a split's images and labels (shape and dtype included), hex, truncated."""
    h = hashlib.sha256()
    for a in (x, y):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:DIGEST_CHARS]


def _source(location: str) -> str:
    """The folder the files came from (for the Keras downloader: its cache folder)."""
    path = Path(location)
    if not path.exists():
        path = Path.home() / ".keras" / "datasets" / "fashion-mnist"
    return str(path.resolve())


def split_datasets(source: str, splits) -> dict[str, object]:
    """The three splits as MLflow datasets keyed by context (training, validation, test)."""
    import mlflow

    src = _source(source)
    parts = {"training": (splits.x_train, splits.y_train), "validation": (splits.x_val, splits.y_val),
             "test": (splits.x_test, splits.y_test)}
    with warnings.catch_warnings():  # "source can be interpreted in multiple ways": it is a local folder
        warnings.simplefilter("ignore", UserWarning)
        return {ctx: mlflow.data.from_numpy(x, targets=y, source=src, name=DATASET_NAME,
                                            digest=split_digest(x, y))
                for ctx, (x, y) in parts.items()}


def log_split_inputs(source: str, splits) -> dict[str, str]:
    """Attach the three splits to the active run; returns context -> digest."""
    import mlflow

    datasets = split_datasets(source, splits)
    contexts = list(datasets)
    mlflow.log_inputs(datasets=[datasets[c] for c in contexts], contexts=contexts, tags_list=[None] * len(contexts))
    return {c: datasets[c].digest for c in contexts}
