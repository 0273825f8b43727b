"""Finding and reading Fashion-MNIST files: the four official IDX files (gzip-compressed or not)
and the Kaggle-style CSV pair (``fashion-mnist_train.csv`` / ``fashion-mnist_test.csv`` with a
``label`` column and 784 pixel columns), validated as they are read. Places are searched in a
fixed order (:func:`candidate_dirs`); the Keras downloader is only the last resort for online users."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from .dataset import FIX_HINT, IMAGE_SHAPE, NUM_CLASSES, TEST_COUNT, TRAIN_COUNT, DataError, Dataset

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



def _read_maybe_gz(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return zlib.decompress(raw, 31)  # 31 = gzip wrapper; faster than gzip.open's loop
        except zlib.error as e:
            raise DataError(f"{path}: the gzip stream is corrupt or truncated ({e}). {FIX_HINT}") from e
    return raw


def parse_idx(buf: bytes, *, images: bool, path: Path | str = "<bytes>") -> np.ndarray:
    """Parse one IDX file (big-endian header, uint8 payload) and check its header."""
    want_magic = IDX_IMAGE_MAGIC if images else IDX_LABEL_MAGIC
    header_len = 16 if images else 8
    if len(buf) < header_len:
        raise DataError(f"{path}: only {len(buf)} bytes, too short for an IDX header. {FIX_HINT}")
    header = np.frombuffer(buf, dtype=">i4", count=header_len // 4)
    magic, count = int(header[0]), int(header[1])
    if magic != want_magic:
        kind = "image" if images else "label"
        raise DataError(
            f"{path}: magic number {magic}, expected {want_magic} for an IDX {kind} file; "
            f"the file is corrupt or is not the {kind} file. {FIX_HINT}"
        )
    shape: tuple[int, ...] = (count,)
    if images:
        rows, cols = int(header[2]), int(header[3])
        if (rows, cols) != IMAGE_SHAPE:
            raise DataError(f"{path}: images are {rows}x{cols}, expected 28x28. {FIX_HINT}")
        shape = (count, rows, cols)
    want_len = header_len + int(np.prod(shape))
    if len(buf) != want_len:
        raise DataError(
            f"{path}: {len(buf)} bytes, the header promises {want_len} "
            f"({count} records); the file is truncated or corrupt. {FIX_HINT}"
        )
    array = np.frombuffer(buf, dtype=np.uint8, offset=header_len).reshape(shape)
    if not images and array.size and int(array.max()) >= NUM_CLASSES:
        raise DataError(f"{path}: label {int(array.max())} found, labels are 0-9; the file is corrupt. {FIX_HINT}")
    return array


def read_idx(path: Path, *, images: bool) -> np.ndarray:
    """Read one IDX file, gzip-compressed or not; a corrupt file is a DataError naming it."""
    return parse_idx(_read_maybe_gz(path), images=images, path=path)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        if (directory / name).is_file():
            return directory / name
    return None


def load_idx_dir(directory: Path) -> Dataset:
    arrays = {}
    for key, stem in IDX_FILES.items():
        path = _find_idx(directory, stem)
        if path is None:
            raise DataError(f"{directory}: {stem}(.gz) is missing. {FIX_HINT}")
        arrays[key] = read_idx(path, images=key.startswith("x"))
    return _checked(arrays, source=str(directory), fmt="idx")


# ----------------------------------------------------------------------------- CSV


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one Kaggle-style CSV as (images, labels); a corrupt file is a DataError naming it."""
    import pandas as pd  # only needed for the CSV format

    try:
        frame = pd.read_csv(path, dtype=np.int64, engine="c")
    except (ValueError, OverflowError, pd.errors.ParserError, UnicodeDecodeError) as e:  # Overflow: > int64
        raise DataError(f"{path}: not a readable Fashion-MNIST CSV ({e}). {FIX_HINT}") from e
    if "label" not in frame.columns or frame.shape[1] != 785:
        raise DataError(
            f"{path}: expected a 'label' column and 784 pixel columns, found "
            f"{frame.shape[1]} columns. {FIX_HINT}"
        )
    pixels, labels = frame.drop(columns="label").to_numpy(), frame["label"].to_numpy()
    if pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255:
        raise DataError(f"{path}: pixel values outside 0-255. {FIX_HINT}")
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= NUM_CLASSES:
        raise DataError(f"{path}: labels outside 0-9. {FIX_HINT}")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels


def load_csv_dir(directory: Path) -> Dataset:
    x_train, y_train = read_csv(directory / CSV_FILES["train"])
    x_test, y_test = read_csv(directory / CSV_FILES["test"])
    arrays = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return _checked(arrays, source=str(directory), fmt="csv")


def _checked(arrays: dict, *, source: str, fmt: str) -> Dataset:
    for split, want in (("train", TRAIN_COUNT), ("test", TEST_COUNT)):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y):
            raise DataError(f"{source}: {split} has {len(x)} images but {len(y)} labels. {FIX_HINT}")
        if len(x) != want:
            raise DataError(f"{source}: {split} has {len(x)} images, Fashion-MNIST has {want}. {FIX_HINT}")
        if y.size and (int(y.min()) < 0 or int(y.max()) >= NUM_CLASSES):
            raise DataError(f"{source}: {split} labels outside 0-9. {FIX_HINT}")
        arrays[f"y_{split}"] = y.astype(np.uint8)
    return Dataset(**arrays, source=source, fmt=fmt)


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


def _has_idx(d: Path) -> bool:
    return any(_find_idx(d, stem) for stem in IDX_FILES.values())


def _has_csv(d: Path) -> bool:
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
    if explicit is not None and not (explicit.is_dir() and (_has_idx(explicit) or _has_csv(explicit))):
        raise DataError(
            f"data_dir={explicit}: no Fashion-MNIST IDX files ({', '.join(IDX_FILES.values())}, "
            f"optionally .gz) or CSV pair ({', '.join(CSV_FILES.values())}) there. {FIX_HINT}"
        )
    looked = []
    for d in candidate_dirs(data_dir, fallbacks):
        looked.append(str(d))
        if d.is_dir() and _has_idx(d):
            return load_idx_dir(d)
        if d.is_dir() and _has_csv(d):
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
