"""What a study records on itself when it is made (its study file, family, data, builder: by one
worker, under its creation lock, setup.make_study), read back and checked, so that a resume, a
worker joining it and `register` work on what the study is."""

from __future__ import annotations

from typing import Any

import optuna

from .. import data as D
from .. import params as P
from ..model.builder import load as load_builder
from ..params import ConfigError
from ..scale.storage import StorageURL
from ..train.lineage import BUILDER_SHA256

# Study user attributes that make a study self-describing.
STUDY_FAMILY, STUDY_FILE, STUDY_TEXT = "family", "study_file", "study_file_text"
# the one dataset a study's trials are compared on: its digest, its name and the `data` it was created with
STUDY_DATA, STUDY_DATA_NAME, STUDY_DATA_ARG = "data_sha256", "data_name", "data"
STUDY_BUILDER = BUILDER_SHA256  # a study of a user's network: the builder file it was created with


def creation_lock(storage: StorageURL, study_name: str):
    """The lock under which one worker at a time makes study ``study_name`` (open_study)."""
    return storage.lock(f"create study {study_name}")


def stored_study(url: StorageURL, opened: optuna.storages.BaseStorage, study_name: str) -> dict[str, Any] | None:
    """The stored study's attributes; None for a study not made yet. A study seen half made (a worker
    started beside this one has created it and not yet written what it is: setup.make_study writes the
    study file last, under the creation lock) is read again once its maker lets the lock go: read in
    between, a study without its data would pass for one made before datasets were values (Fashion-MNIST)."""
    def read() -> optuna.Study | None:
        try:
            return optuna.load_study(study_name=study_name, storage=opened)
        except KeyError:
            return None

    study = read()
    if study is None:
        return None
    stored = study.user_attrs
    if STUDY_TEXT in stored:
        return stored
    with creation_lock(url, study_name):
        study = read()
    if study is None:
        return None  # deleted meanwhile: open_study makes it
    stored = study.user_attrs
    if not stored and all(t.state == optuna.trial.TrialState.WAITING for t in study.trials):
        return None  # its maker died before writing anything: open_study makes it again
    return stored


def check_study_data(study_name: str, ds: D.Dataset, stored: dict[str, Any] | None) -> None:
    """A stored study compares its trials on the data it was created on: other data is refused."""
    if stored is None:
        return
    # a study made before datasets were values recorded none: it trained Fashion-MNIST
    theirs = stored.get(STUDY_DATA_NAME, D.FASHION_MNIST.name)
    if stored.get(STUDY_DATA, ds.sha256 if theirs == ds.info.name else None) != ds.sha256:
        digest = f", sha256 {stored[STUDY_DATA][:12]}..." if STUDY_DATA in stored else ""
        given = stored.get(STUDY_DATA_ARG, theirs)
        raise ConfigError(f"study {study_name!r} was created on {theirs} (data={given}{digest}), not on "
                          f"this data ({ds.info.name}, sha256 {ds.sha256[:12]}...): a "
                          "study compares its trials on one dataset; give the study's data (or leave data out), "
                          "or give this data a study_name of its own")


def check_same_builder(study_name: str, p: P.NetworkParams, stored: dict[str, Any] | None) -> None:
    """A study of a user's network compares its trials on one builder: a worker or a resume whose builder
    file changed since the study was created is refused (its trials would train another network)."""
    if stored is None or STUDY_BUILDER not in stored:  # none recorded: a built-in network's (Builder.pinned)
        return
    now = load_builder(p.builder)
    if now.pinned:  # the package's own (an earlier version recorded it): its code version is the worker's
        return
    if stored[STUDY_BUILDER] != now.sha256:
        raise ConfigError(f"study {study_name!r} was created with another {now.file.name} (sha256 "
                          f"{stored[STUDY_BUILDER][:12]}..., now {now.sha256[:12]}...): its trials would train "
                          "another network than the earlier ones; restore the builder (each trial's run keeps its "
                          "source under builder/), or give the edited one a study_name of its own")
