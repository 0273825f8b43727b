"""Fashion-MNIST: what a dataset is (dataset.py), finding and reading its files (files.py),
and the validation split (splits.py). Everything here is plain numpy: no TensorFlow, no MLflow."""

from .dataset import (
    CLASS_NAMES,
    FIX_HINT,
    IMAGE_SHAPE,
    NUM_CLASSES,
    OFFICIAL_CONTENT_SHA256,
    TEST_COUNT,
    TRAIN_COUNT,
    DataError,
    Dataset,
    content_hash,
)
from .files import (
    CSV_FILES,
    DEBIAN_DIR,
    IDX_FILES,
    IDX_IMAGE_MAGIC,
    IDX_LABEL_MAGIC,
    KERAS_CACHE_DIR,
    candidate_dirs,
    default_dirs,
    load,
    load_csv_dir,
    load_idx_dir,
    parse_idx,
    read_csv,
    read_idx,
)
from .splits import Splits, split, split_indices

__all__ = [
    "CLASS_NAMES", "CSV_FILES", "DEBIAN_DIR", "FIX_HINT", "IDX_FILES", "IDX_IMAGE_MAGIC", "IDX_LABEL_MAGIC",
    "IMAGE_SHAPE", "KERAS_CACHE_DIR", "NUM_CLASSES", "OFFICIAL_CONTENT_SHA256", "TEST_COUNT", "TRAIN_COUNT",
    "DataError", "Dataset", "Splits", "candidate_dirs", "content_hash", "default_dirs", "load", "load_csv_dir",
    "load_idx_dir", "parse_idx", "read_csv", "read_idx", "split", "split_indices",
]
