"""Lineage: which data and which code a run saw, recorded where the MLflow UI shows it, and
what a registered version needs to be rebuilt (``python -m fmnist_exp reproduce``).

Every training run (and every trial) logs its training, validation and test splits as MLflow
dataset inputs (the runs table's Dataset column, the run page's Datasets panel); a study's parent
run logs the same entities for the splits its trials share (study.artifacts). Each split's
digest is derived from its full content (MLflow's own digest hashes only the first 10,000
elements, which would miss a changed tail of the 54,000 training images), so two runs show the
same digest exactly when they saw the same images and labels. Every training run is also
tagged with the project's git commit and whether the tree had uncommitted edits; a registered
version carries both, the data digests and the command that rebuilds it (registry.versions).
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mlflow.data.numpy_dataset import NumpyDataset

    from ..params import NetworkParams

DIGEST_CHARS = 32  # MLflow stores at most 36 characters of a digest; 128 bits identify a split


def split_digest(x: np.ndarray, y: np.ndarray) -> str:
    """sha256 over a split's images and labels (shape and dtype included), hex, truncated."""
    h = hashlib.sha256()
    for a in (x, y):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data.cast("B"))
    return h.hexdigest()[:DIGEST_CHARS]


def _source(location: str) -> str:
    """The folder or file the data came from (the Keras downloader: its cache folder; scikit-learn's
    digits: the loader's name)."""
    if location.startswith("sklearn."):
        return location
    path = Path(location)
    if not path.exists():
        path = Path.home() / ".keras" / "datasets" / "fashion-mnist"
    return str(path.resolve())


def split_datasets(source: str, splits) -> dict[str, NumpyDataset]:
    """The three splits as MLflow datasets keyed by context (training, validation, test)."""
    return datasets(source, {"training": (splits.x_train, splits.y_train), "validation": (splits.x_val, splits.y_val),
                             "test": (splits.x_test, splits.y_test)}, splits.info.name)


def datasets(source: str, parts: dict[str, tuple[np.ndarray, np.ndarray]], name: str) -> dict[str, NumpyDataset]:
    """context -> (images, labels) as MLflow datasets named ``name`` (the dataset's), each with its own
    full digest."""
    from mlflow.data.numpy_dataset import from_numpy

    src = _source(source)
    with warnings.catch_warnings():  # "source can be interpreted in multiple ways": it is a local folder
        warnings.simplefilter("ignore", UserWarning)
        return {ctx: from_numpy(x, targets=y, source=src, name=name, digest=split_digest(x, y))
                for ctx, (x, y) in parts.items()}


def log_split_inputs(source: str, splits) -> dict[str, str]:
    """Attach the three splits to the active run; returns context -> digest."""
    return log_inputs(split_datasets(source, splits))


def log_inputs(by_context: dict[str, NumpyDataset]) -> dict[str, str]:
    """Attach MLflow datasets (context -> dataset) to the active run; returns context -> digest."""
    import mlflow
    from mlflow.exceptions import MlflowException

    contexts: list[str | None] = list(by_context)
    for attempt in range(3):
        try:
            mlflow.log_inputs(datasets=list(by_context.values()), contexts=contexts, tags_list=[None] * len(contexts))
            break
        except MlflowException as e:
            # Two workers logging the same split into one experiment at once: the tracking server
            # checks for the dataset, then inserts it, and the slower insert breaks the unique key
            # (seen with PostgreSQL). The request is rolled back; again, it finds the winner's row.
            if attempt == 2 or not any(k in str(e) for k in ("UniqueViolation", "UNIQUE constraint", "dataset_pk")):
                raise
            time.sleep(0.5 * (attempt + 1))
    return {c: d.digest for c, d in by_context.items()}


# ----------------------------------------------------------------------------- code version

PROJECT_DIR = Path(__file__).resolve().parents[2]  # the checkout: fmnist_exp/train/lineage.py
UNKNOWN = "unknown"
GIT_COMMIT_TAG, GIT_DIRTY_TAG = "git_commit", "git_dirty"
MLFLOW_GIT_TAG = "mlflow.source.git.commit"  # what `mlflow run` records from a git checkout


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_DIR), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None  # no git on this machine
    return out.stdout if out.returncode == 0 else None


def git_state() -> dict[str, str]:
    """The project's commit and whether its tree differs from it (``git status --porcelain``
    of the project folder): 'unknown' for both outside a git checkout (an installed wheel)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {GIT_COMMIT_TAG: UNKNOWN, GIT_DIRTY_TAG: UNKNOWN}
    status = _git("status", "--porcelain", "--", ".")
    dirty = UNKNOWN if status is None else str(bool(status.strip())).lower()
    return {GIT_COMMIT_TAG: commit.strip(), GIT_DIRTY_TAG: dirty}


def log_code_version() -> dict[str, str]:
    """Tag the active run with the code's commit and dirty flag (beside MLflow's own
    ``mlflow.source.git.commit``, which only `mlflow run` sets and which says nothing of edits)."""
    import mlflow

    state = git_state()
    mlflow.set_tags(state)
    return state


def recorded_code_version(run) -> dict[str, str]:
    """Commit and dirty flag a run recorded: our tags, else MLflow's commit tag, else unknown."""
    tags = run.data.tags
    commit = tags.get(GIT_COMMIT_TAG) or tags.get(MLFLOW_GIT_TAG) or UNKNOWN
    return {GIT_COMMIT_TAG: commit, GIT_DIRTY_TAG: tags.get(GIT_DIRTY_TAG, UNKNOWN)}


# ----------------------------------------------------------------------------- read back from a run

# On an ensemble's run (study/ensemble.py): its members' run ids, comma-separated, in seed order;
# `reproduce` rebuilds each of them from its own run.
MEMBERS_TAG = "ensemble_members"


def split_digests(run) -> dict[str, str]:
    """context -> digest of the dataset inputs a run logged (see log_split_inputs)."""
    out = {}
    for d in run.inputs.dataset_inputs if run.inputs else []:
        context = {t.key: t.value for t in d.tags}.get("mlflow.data.context")
        if context:
            out[context] = d.dataset.digest
    return out


# What a run records of a user's builder (model/builder.py): its file's digest, its source, and each of
# its own parameters under its own name (the runs table's columns), beside the JSON ``hp`` it trained with.
BUILDER_SHA256, BUILDER_SOURCE_DIR = "model_sha256", "builder"


def log_builder(p: NetworkParams) -> None:
    """The builder that makes ``p``'s network, on the active run: its reference as a tag; for a user's, also its
    digest, values and source file, so that ``reproduce`` can tell an edited builder before any training and the
    code that trained is kept beside the model (the package's own are recorded by the code version)."""
    import mlflow

    from ..model import builder as user
    from .tracking import log_params

    b = user.load(p.builder)
    mlflow.set_tags({"model_builder": b.ref, **({"model_requires": b.requires} if b.requires else {})})
    if b.pinned:
        return
    log_params({BUILDER_SHA256: b.sha256, **p.hp_values()})
    with tempfile.TemporaryDirectory() as tmp:  # the bytes that trained, whatever their encoding
        kept = Path(tmp) / b.file.name
        kept.write_bytes(b.source)
        mlflow.log_artifact(str(kept), BUILDER_SOURCE_DIR)
