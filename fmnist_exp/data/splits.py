"""The validation split out of the training set, stratified and seeded, and the smaller
training subsets of quick runs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dataset import Dataset, DatasetInfo


@dataclass
class Splits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    info: DatasetInfo  # the dataset's description: shape, classes, flips


def split_indices(y: np.ndarray, *, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Which training-set images :func:`split` keeps for training and which it holds out."""
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(len(y)), test_size=val_fraction, stratify=y, random_state=seed)


def training_count(ds: Dataset, *, val_fraction: float, seed: int, train_samples: int = 0) -> int:
    """How many images :func:`split` keeps for training, without copying them."""
    kept = len(ds.y_train) - len(split_indices(ds.y_train, val_fraction=val_fraction, seed=seed)[1])
    return min(kept, train_samples) if train_samples else kept


def split(ds: Dataset, *, val_fraction: float, seed: int, train_samples: int = 0) -> Splits:
    """Stratified, seeded validation split out of the training set.

    ``train_samples`` (0 = all) then takes a stratified subset of what is left for training,
    so the validation set does not change when a quick run uses less data.
    """
    from sklearn.model_selection import train_test_split

    tr, val = split_indices(ds.y_train, val_fraction=val_fraction, seed=seed)
    x_tr, x_val, y_tr, y_val = ds.x_train[tr], ds.x_train[val], ds.y_train[tr], ds.y_train[val]
    if train_samples and train_samples < len(y_tr):
        x_tr, _, y_tr, _ = train_test_split(
            x_tr, y_tr, train_size=train_samples, stratify=y_tr, random_state=seed
        )
    return Splits(x_tr, y_tr, x_val, y_val, ds.x_test, ds.y_test, ds.info)
