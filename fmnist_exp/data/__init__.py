"""Datasets: what a dataset is (dataset.py), finding and reading Fashion-MNIST's files (files.py),
folders of images and dataset.yaml (folders.py), which dataset a run reads (sources.py:
load_dataset), and the validation split (splits.py). Everything here is plain numpy, PIL, PyYAML and
scikit-learn: no TensorFlow, no MLflow."""

from .dataset import (
    FASHION_CLASSES,
    FASHION_MNIST,
    FIX_HINT,
    OFFICIAL_CONTENT_SHA256,
    TEST_COUNT,
    TRAIN_COUNT,
    DataError,
    Dataset,
    DatasetInfo,
    content_hash,
    recorded,
)
from .files import (
    CSV_FILES,
    DEBIAN_DIR,
    FASHION_FILES,
    IDX_FILES,
    IDX_IMAGE_MAGIC,
    IDX_LABEL_MAGIC,
    KERAS_CACHE_DIR,
    Expect,
    candidate_dirs,
    checked_arrays,
    default_dirs,
    label_dtype,
    load,
    load_csv_dir,
    load_idx_dir,
    parse_idx,
    read_csv,
    read_csv_dir,
    read_idx,
    read_idx_dir,
)
from .folders import IMAGE_SUFFIXES, SPEC_FILE, SPEC_KEYS, DatasetSpec, decode_image, read_spec
from .sources import (
    DEFAULT_TEST_FRACTION,
    MIN_TEST_PER_CLASS,
    MIN_TRAIN_PER_CLASS,
    check_split,
    load_dataset,
)
from .splits import Splits, split, split_indices, training_count

__all__ = [
    "CSV_FILES", "DEBIAN_DIR", "FASHION_CLASSES", "FASHION_MNIST", "FIX_HINT", "IDX_FILES", "IDX_IMAGE_MAGIC",
    "IDX_LABEL_MAGIC", "KERAS_CACHE_DIR", "OFFICIAL_CONTENT_SHA256", "TEST_COUNT", "TRAIN_COUNT",
    "DataError", "Dataset", "DatasetInfo", "Splits", "candidate_dirs", "content_hash", "default_dirs", "load",
    "load_csv_dir", "load_idx_dir", "parse_idx", "read_csv", "read_idx", "split", "split_indices", "training_count",
    "DEFAULT_TEST_FRACTION", "FASHION_FILES", "IMAGE_SUFFIXES", "MIN_TEST_PER_CLASS", "MIN_TRAIN_PER_CLASS",
    "SPEC_FILE", "SPEC_KEYS", "DatasetSpec", "Expect", "check_split", "checked_arrays", "decode_image",
    "label_dtype", "load_dataset", "read_csv_dir", "read_idx_dir", "read_spec", "recorded",
]
