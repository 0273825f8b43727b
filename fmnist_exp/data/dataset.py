"""What a loaded dataset is: the arrays, where they came from, their digest; the class names
and image shape every stage shares. Plain numpy."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = (28, 28)
TRAIN_COUNT, TEST_COUNT = 60_000, 10_000

# sha256 of the decompressed arrays (x_train, y_train, x_test, y_test) of the official release,
# measured on Debian's dataset-fashion-mnist; it tells a user whether a run saw the real data.
OFFICIAL_CONTENT_SHA256 = "ca3ab2a37f845e1b8ae23cab1b51749a3011ba3bf1d9016176d75cbaabac376f"

FIX_HINT = (
    "Fix: on Debian/Ubuntu run `sudo apt-get install -y dataset-fashion-mnist`, "
    "or put the four IDX files (or the Kaggle CSV pair) in ./data, "
    "or point --data_dir / FMNIST_DATA_DIR at them."
)


class DataError(Exception):
    """The dataset is missing or unreadable; the message says where and what to do."""


@dataclass
class Dataset:
    """The train and test arrays plus where they came from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    fmt: str
    sha256: str = field(default="")

    def __post_init__(self):
        if not self.sha256:
            self.sha256 = content_hash(self.x_train, self.y_train, self.x_test, self.y_test)

    @property
    def official(self) -> bool:
        return self.sha256 == OFFICIAL_CONTENT_SHA256

    def describe(self) -> dict:
        """Flat facts that every run records about its data."""
        return {
            "data_source": self.source,
            "data_format": self.fmt,
            "data_sha256": self.sha256,
            "data_official": str(self.official).lower(),
            "data_train_count": len(self.y_train),
            "data_test_count": len(self.y_test),
        }


def content_hash(*arrays: np.ndarray) -> str:
    """sha256 over the decompressed uint8 arrays, so IDX, gzip and CSV copies agree."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.uint8).tobytes())
    return h.hexdigest()
