"""What a dataset is: its description (:class:`DatasetInfo`: name, image shape, class names, pixel
range, whether a mirror image keeps its label, digest), which travels with every run to every
stage, and the loaded arrays (:class:`Dataset`). Fashion-MNIST is one dataset among others
(:data:`FASHION_MNIST`), and the default. Plain numpy.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

import numpy as np

FASHION_CLASSES = (
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
TRAIN_COUNT, TEST_COUNT = 60_000, 10_000  # Fashion-MNIST's

# sha256 of the decompressed arrays (x_train, y_train, x_test, y_test) of the official release,
# measured on Debian's dataset-fashion-mnist; it tells a user whether a run saw the real data.
OFFICIAL_CONTENT_SHA256 = "ca3ab2a37f845e1b8ae23cab1b51749a3011ba3bf1d9016176d75cbaabac376f"

FIX_HINT = (
    "Fix: on Debian/Ubuntu run `sudo apt-get install -y dataset-fashion-mnist`, "
    "or put the four IDX files (or the Kaggle CSV pair) in ./data, "
    "or point --data_dir / FMNIST_DATA_DIR at them."
)

# How a served PNG/JPEG is made to look like the training images (classifier.pyfunc.load_image):
# "dark": grayscale with a dark background (Fashion-MNIST, digits): a light-bordered image is inverted
# and a non-square one padded with its border colour; "as-is": the images a folder dataset was read
# from: the same decoding as the loader (resized, never inverted).
BACKGROUNDS = ("dark", "as-is")


class DataError(Exception):
    """The dataset is missing, unreadable or unusable; the message says where, what and what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's description, the same for every run that reads it.

    ``shape`` is (height, width, channels). Grayscale images (one channel) are held and fed to the
    networks as (n, height, width) arrays, colour ones as (n, height, width, channels): the built-in
    networks keep Fashion-MNIST's input layout, and so its bits. ``pixel_range`` is what the files
    held before the loader scaled them to 0-255 (scikit-learn's digits: 0-16). ``flips``: a mirror
    image (left to right) keeps its label, so training may flip and answers may average a mirror.
    """

    name: str
    shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    pixel_range: tuple[float, float] = (0, 255)
    flips: bool = False
    background: str = "dark"
    sha256: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.shape[2]

    @property
    def array_shape(self) -> tuple[int, ...]:
        """One image's array shape: (height, width) for grayscale, (height, width, channels) for colour."""
        return self.shape[:2] if self.channels == 1 else self.shape

    @property
    def pixels(self) -> int:
        """Values per image: height x width x channels."""
        return int(np.prod(self.shape))

    def shape_text(self) -> str:
        h, w, c = self.shape
        return f"{h}x{w}x{c}"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> DatasetInfo:
        return cls(**{**raw, "shape": tuple(raw["shape"]), "class_names": tuple(raw["class_names"]),
                      "pixel_range": tuple(raw["pixel_range"])})

    def dumps(self) -> str:
        return json.dumps(self.to_json())


FASHION_MNIST = DatasetInfo("fashion-mnist", (28, 28, 1), FASHION_CLASSES, flips=True)


@dataclass
class Dataset:
    """The train and test arrays, their description, and where they came from.

    ``test_split``: "given" where the files hold a test set (Fashion-MNIST, ``.npz``, IDX/CSV, a
    ``test/`` folder), else how the test images were held out: fixed by the dataset's digest,
    never by a run's seed. ``notes``: what the loader changed (e.g. images resized), said to the user.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    fmt: str
    info: DatasetInfo = FASHION_MNIST
    sha256: str = field(default="")
    test_split: str = "given"
    notes: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.sha256:
            self.sha256 = content_hash(self.x_train, self.y_train, self.x_test, self.y_test)
        self.info = replace(self.info, sha256=self.sha256)

    @property
    def official(self) -> bool:
        return self.sha256 == OFFICIAL_CONTENT_SHA256

    def describe(self) -> dict:
        """Flat facts that every run records about its data (the full description: dataset.json)."""
        return {
            "data_source": self.source,
            "data_format": self.fmt,
            "data_sha256": self.sha256,
            "data_official": str(self.official).lower(),
            "data_train_count": len(self.y_train),
            "data_test_count": len(self.y_test),
            "data_name": self.info.name,
            "data_shape": self.info.shape_text(),
            "data_classes": self.info.num_classes,
            "data_flips": str(self.info.flips).lower(),
            "data_pixel_range": "{:g}-{:g}".format(*self.info.pixel_range),
            "data_test_split": self.test_split,
        }


def recorded(params: dict[str, str]) -> dict[str, str]:
    """The data facts a run logged (:meth:`Dataset.describe`); a run of code before datasets were values
    logged some of them only, and trained Fashion-MNIST: the others are its."""
    earlier = {"data_name": FASHION_MNIST.name, "data_shape": FASHION_MNIST.shape_text(),
               "data_classes": str(FASHION_MNIST.num_classes), "data_test_split": "given"}
    return {**earlier, **{k: v for k, v in params.items() if k.startswith("data_")}}


def content_hash(*arrays: np.ndarray) -> str:
    """sha256 over the decompressed uint8 arrays, so IDX, gzip and CSV copies agree."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.uint8).tobytes())
    return h.hexdigest()
