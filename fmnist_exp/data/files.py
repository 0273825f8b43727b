"""Finding and reading Fashion-MNIST files: the four official IDX files (gzip-compressed or not)
and the Kaggle-style CSV pair (``fashion-mnist_train.csv`` / ``fashion-mnist_test.csv`` with a
``label`` column and 784 pixel columns), validated as they are read. Places are searched in a
fixed order (:func:`candidate_dirs`); the Keras downloader is only the last resort for online users.

The readers take an :class:`Expect`: Fashion-MNIST's (:data:`FASHION_FILES`: 28x28, labels 0-9,
60,000/10,000 images) unless told otherwise, so the same readers serve other datasets stored in
these formats (MNIST's files, say), whose class list comes from their ``dataset.yaml``."""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dataset import FASHION_MNIST, FIX_HINT, TEST_COUNT, TRAIN_COUNT, DataError, Dataset

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
CSV_FILES = {"train": "fashion-mnist_train.csv", "test": "fashion-mnist_test.csv"}
IDX_IMAGE_MAGIC, IDX_LABEL_MAGIC = 2051, 2049

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
KERAS_CACHE_DIR = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets" / "fashion-mnist"


@dataclass(frozen=True)
class Expect:
    """What a folder's IDX or CSV files must hold; ``None``: whatever the files say.

    ``image_shape``: (height, width); a CSV without it must hold square images. ``num_classes``:
    labels are 0 to num_classes - 1. ``counts``: (train, test) image counts. ``hint``: what to do
    about a damaged file; ``label_fix``: what to do about a label outside the class list.
    """

    image_shape: tuple[int, int] | None = None
    num_classes: int | None = None
    counts: tuple[int, int] | None = None
    hint: str = "Fix: replace the file with an intact copy."
    label_fix: str = "list every class in dataset.yaml, in label order, or fix the labels."

    def label_error(self, where: Path | str, found: int) -> DataError:
        k = self.num_classes or 0
        return DataError(f"{where}: label {found} found, labels are 0-{k - 1} ({k} classes); {self.label_fix}")


FASHION_FILES = Expect((FASHION_MNIST.shape[0], FASHION_MNIST.shape[1]), FASHION_MNIST.num_classes,
                       (TRAIN_COUNT, TEST_COUNT), FIX_HINT, "the file is corrupt. " + FIX_HINT)


def label_dtype(num_classes: int | None) -> type:
    """uint8 labels below 256 classes, as Fashion-MNIST's (so its bits never change); int32 above."""
    return np.uint8 if num_classes is None or num_classes < 256 else np.int32


def _read_maybe_gz(path: Path, hint: str = FIX_HINT) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return zlib.decompress(raw, 31)  # 31 = gzip wrapper; faster than gzip.open's loop
        except zlib.error as e:
            raise DataError(f"{path}: the gzip stream is corrupt or truncated ({e}). {hint}") from e
    return raw


def parse_idx(buf: bytes, *, images: bool, path: Path | str = "<bytes>", expect: Expect = FASHION_FILES) -> np.ndarray:
    """Parse one IDX file (big-endian header, uint8 payload) and check its header."""
    want_magic = IDX_IMAGE_MAGIC if images else IDX_LABEL_MAGIC
    header_len = 16 if images else 8
    hint = expect.hint
    if len(buf) < header_len:
        raise DataError(f"{path}: only {len(buf)} bytes, too short for an IDX header. {hint}")
    header = np.frombuffer(buf, dtype=">i4", count=header_len // 4)
    magic, count = int(header[0]), int(header[1])
    if magic != want_magic:
        kind = "image" if images else "label"
        raise DataError(
            f"{path}: magic number {magic}, expected {want_magic} for an IDX {kind} file; "
            f"the file is corrupt or is not the {kind} file. {hint}"
        )
    shape: tuple[int, ...] = (count,)
    if images:
        rows, cols = int(header[2]), int(header[3])
        if expect.image_shape is not None and (rows, cols) != expect.image_shape:
            h, w = expect.image_shape
            raise DataError(f"{path}: images are {rows}x{cols}, expected {h}x{w}. {hint}")
        shape = (count, rows, cols)
    want_len = header_len + int(np.prod(shape))
    if len(buf) != want_len:
        raise DataError(
            f"{path}: {len(buf)} bytes, the header promises {want_len} "
            f"({count} records); the file is truncated or corrupt. {hint}"
        )
    array = np.frombuffer(buf, dtype=np.uint8, offset=header_len).reshape(shape)
    if not images and array.size and expect.num_classes is not None and int(array.max()) >= expect.num_classes:
        raise expect.label_error(path, int(array.max()))
    return array


def read_idx(path: Path, *, images: bool, expect: Expect = FASHION_FILES) -> np.ndarray:
    """Read one IDX file, gzip-compressed or not; a corrupt file is a DataError naming it."""
    return parse_idx(_read_maybe_gz(path, expect.hint), images=images, path=path, expect=expect)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        if (directory / name).is_file():
            return directory / name
    return None


def read_idx_dir(directory: Path, expect: Expect = FASHION_FILES) -> dict[str, np.ndarray]:
    """The four IDX files of a folder as x_train, y_train, x_test, y_test (unchecked against each other)."""
    arrays = {}
    for key, stem in IDX_FILES.items():
        path = _find_idx(directory, stem)
        if path is None:
            raise DataError(f"{directory}: {stem}(.gz) is missing. {expect.hint}")
        arrays[key] = read_idx(path, images=key.startswith("x"), expect=expect)
    return arrays


def load_idx_dir(directory: Path) -> Dataset:
    return _checked(read_idx_dir(directory), source=str(directory), fmt="idx")


# ----------------------------------------------------------------------------- CSV


def _csv_shape(path: Path, columns: int, expect: Expect) -> tuple[int, int]:
    """The (height, width) that ``columns`` pixel columns hold: the expected one, else a square."""
    if expect.image_shape is not None:
        h, w = expect.image_shape
        if columns != h * w:
            raise DataError(f"{path}: expected a 'label' column and {h * w} pixel columns ({h}x{w} images), "
                            f"found {columns + 1} columns. {expect.hint}")
        return h, w
    side = math.isqrt(columns)
    if columns == 0 or side * side != columns:
        raise DataError(f"{path}: {columns} pixel columns are not a square image; give the image size in "
                        f"{path.parent / 'dataset.yaml'}, e.g. `image_size: [height, width]`.")
    return side, side


def read_csv(path: Path, expect: Expect = FASHION_FILES) -> tuple[np.ndarray, np.ndarray]:
    """Read one Kaggle-style CSV as (images, labels); a corrupt file is a DataError naming it."""
    import pandas as pd  # only needed for the CSV format

    try:
        frame = pd.read_csv(path, dtype=np.int64, engine="c")
    except (ValueError, OverflowError, pd.errors.ParserError, UnicodeDecodeError) as e:  # Overflow: > int64
        raise DataError(f"{path}: not a readable image CSV (a 'label' column, then pixel columns) ({e}). "
                        f"{expect.hint}") from e
    if "label" not in frame.columns:
        raise DataError(f"{path}: no 'label' column among its {frame.shape[1]} columns; expected a 'label' column "
                        f"and one column per pixel. {expect.hint}")
    h, w = _csv_shape(path, frame.shape[1] - 1, expect)
    pixels, labels = frame.drop(columns="label").to_numpy(), frame["label"].to_numpy()
    if pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255:
        raise DataError(f"{path}: pixel values outside 0-255. {expect.hint}")
    if labels.min(initial=0) < 0:
        raise DataError(f"{path}: negative label {int(labels.min())}. {expect.hint}")
    if expect.num_classes is not None and labels.max(initial=0) >= expect.num_classes:
        raise expect.label_error(path, int(labels.max()))
    return pixels.astype(np.uint8).reshape(-1, h, w), labels


def read_csv_dir(directory: Path, expect: Expect = FASHION_FILES) -> dict[str, np.ndarray]:
    """The CSV pair of a folder as x_train, y_train, x_test, y_test (unchecked against each other)."""
    x_train, y_train = read_csv(directory / CSV_FILES["train"], expect)
    x_test, y_test = read_csv(directory / CSV_FILES["test"], expect)
    return dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def load_csv_dir(directory: Path) -> Dataset:
    return _checked(read_csv_dir(directory), source=str(directory), fmt="csv")


def checked_arrays(arrays: dict[str, np.ndarray], source: str, expect: Expect = FASHION_FILES) -> dict:
    """The four arrays, checked against each other and ``expect``, labels as :func:`label_dtype`."""
    for split, i in (("train", 0), ("test", 1)):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y):
            raise DataError(f"{source}: {split} has {len(x)} images but {len(y)} labels. {expect.hint}")
        if expect.counts is not None and len(x) != expect.counts[i]:
            raise DataError(f"{source}: {split} has {len(x)} images, expected {expect.counts[i]}. {expect.hint}")
        k = expect.num_classes
        if y.size and (int(y.min()) < 0 or (k is not None and int(y.max()) >= k)):
            raise expect.label_error(f"{source}: {split}", int(y.max()) if int(y.min()) >= 0 else int(y.min()))
        arrays[f"y_{split}"] = y.astype(label_dtype(k))
    return arrays


def _checked(arrays: dict, *, source: str, fmt: str) -> Dataset:
    return Dataset(**checked_arrays(arrays, source), source=source, fmt=fmt)


# ----------------------------------------------------------------------------- search


def default_dirs() -> list[Path]:
    return [Path("data"), DEBIAN_DIR, KERAS_CACHE_DIR]


def candidate_dirs(data_dir: str | os.PathLike | None = None, fallbacks: list[Path] | None = None) -> list[Path]:
    """Where to look, in order: the parameter, $FMNIST_DATA_DIR, ./data, Debian, Keras cache."""
    dirs = []
    for d in (data_dir, os.environ.get("FMNIST_DATA_DIR")):
        if d:
            dirs.append(Path(d).expanduser())
    return dirs + (default_dirs() if fallbacks is None else list(fallbacks))


def has_idx(d: Path) -> bool:
    return any(_find_idx(d, stem) for stem in IDX_FILES.values())


def has_csv(d: Path) -> bool:
    return any((d / name).is_file() for name in CSV_FILES.values())


def load(
    data_dir: str | os.PathLike | None = None,
    *,
    fallbacks: list[Path] | None = None,
    allow_download: bool = True,
) -> Dataset:
    """Load Fashion-MNIST from the first place that has it.

    An explicitly named ``data_dir`` that holds no dataset is an error, not a reason to look
    elsewhere: a user who names a folder means that folder.
    """
    explicit = Path(data_dir).expanduser() if data_dir else None
    if explicit is not None and not (explicit.is_dir() and (has_idx(explicit) or has_csv(explicit))):
        raise DataError(
            f"data_dir={explicit}: no Fashion-MNIST IDX files ({', '.join(IDX_FILES.values())}, "
            f"optionally .gz) or CSV pair ({', '.join(CSV_FILES.values())}) there. {FIX_HINT}"
        )
    looked = []
    for d in candidate_dirs(data_dir, fallbacks):
        looked.append(str(d))
        if d.is_dir() and has_idx(d):
            return load_idx_dir(d)
        if d.is_dir() and has_csv(d):
            return load_csv_dir(d)
    if allow_download:
        try:
            return _download_with_keras()
        except Exception as e:  # no network here is the normal case; report it with the rest
            looked.append(f"Keras downloader (failed: {type(e).__name__}: {e})")
    else:
        looked.append("Keras downloader (disabled)")
    raise DataError(
        "Fashion-MNIST was not found. Looked in:\n  - " + "\n  - ".join(looked) + "\n" + FIX_HINT
    )


def _download_with_keras() -> Dataset:
    from keras.datasets import fashion_mnist  # imported late: it drags in TensorFlow

    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()
    arrays = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return _checked(arrays, source="keras.datasets.fashion_mnist", fmt="keras")
