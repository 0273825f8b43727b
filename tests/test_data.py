"""Data loading on the real files: formats, validation, search order, splits."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from fmnist_exp import data as D


def _write_idx_dir(ds: D.Dataset, folder, *, compress: bool):
    return _write_idx_files({"x_train": ds.x_train, "y_train": ds.y_train, "x_test": ds.x_test, "y_test": ds.y_test},
                            folder, compress=compress)


def _write_idx_files(arrays: dict, folder, *, compress: bool):
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in D.IDX_FILES.items():
        a = arrays[key]
        magic = D.IDX_IMAGE_MAGIC if key.startswith("x") else D.IDX_LABEL_MAGIC
        header = np.array([magic, *a.shape], dtype=">i4").tobytes()
        payload = header + a.astype(np.uint8).tobytes()
        if compress:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(payload, compresslevel=1))
        else:
            (folder / stem).write_bytes(payload)
    return folder


def test_real_dataset_is_found_and_checked(dataset):
    assert dataset.x_train.shape == (60_000, 28, 28) and dataset.x_test.shape == (10_000, 28, 28)
    assert dataset.x_train.dtype == np.uint8
    assert set(np.unique(dataset.y_train)) == set(range(10))
    assert np.bincount(dataset.y_test).tolist() == [1000] * 10
    assert dataset.official, "the Debian copy's decompressed content is the official release"


def test_uncompressed_idx_gives_same_content(dataset, tmp_path):
    folder = _write_idx_dir(dataset, tmp_path / "raw", compress=False)
    again = D.load(folder)
    assert again.sha256 == dataset.sha256 and again.fmt == "idx" and again.source == str(folder)


def test_truncated_file_is_named(dataset, tmp_path):
    folder = _write_idx_dir(dataset, tmp_path / "cut", compress=False)
    path = folder / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(D.DataError, match="t10k-images-idx3-ubyte.*truncated"):
        D.load(folder)


def test_truncated_gzip_is_named(tmp_path):
    folder = tmp_path / "gz"
    folder.mkdir()
    for stem in D.IDX_FILES.values():
        shutil.copy(D.DEBIAN_DIR / f"{stem}.gz", folder)
    p = folder / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:5000])
    with pytest.raises(D.DataError, match="train-images-idx3-ubyte.gz.*(corrupt|truncated)"):
        D.load(folder)


def test_wrong_magic_is_refused(dataset, tmp_path):
    folder = _write_idx_dir(dataset, tmp_path / "magic", compress=False)
    labels, images = folder / "train-labels-idx1-ubyte", folder / "train-images-idx3-ubyte"
    labels.write_bytes(images.read_bytes())  # image file where the labels should be
    with pytest.raises(D.DataError, match="magic number 2051, expected 2049"):
        D.load(folder)


def test_csv_pair_loads_same_content(dataset, tmp_path):
    """Fashion-MNIST's images written as the CSV pair read as the same images as from IDX files: the
    same arrays, the same digest, through Fashion-MNIST's readers and through a folder's loader. A
    part of the images (writing all 70,000 as CSV takes seconds); the Fashion-MNIST loader reads
    the pair and wants all of them."""
    import pandas as pd

    part = {"x_train": dataset.x_train[:1000], "y_train": dataset.y_train[:1000],
            "x_test": dataset.x_test[:200], "y_test": dataset.y_test[:200]}
    classes = f"classes: {list(D.FASHION_CLASSES)}\n"
    idx = _write_idx_files(part, tmp_path / "idx", compress=False)
    csv = tmp_path / "csv"
    csv.mkdir()
    cols = ["label"] + [f"pixel{i}" for i in range(1, 785)]
    for split in ("train", "test"):
        x, y = part[f"x_{split}"], part[f"y_{split}"]
        frame = pd.DataFrame(np.column_stack([y, x.reshape(len(x), -1)]), columns=cols)
        frame.to_csv(csv / D.CSV_FILES[split], index=False)

    from_idx, from_csv = D.read_idx_dir(idx), D.read_csv_dir(csv)  # Fashion-MNIST's: 28x28, labels 0-9
    for key, a in part.items():
        np.testing.assert_array_equal(from_csv[key], a)
        np.testing.assert_array_equal(from_idx[key], a)
    for folder in (idx, csv):
        (folder / "dataset.yaml").write_text(classes)
    as_idx, as_csv = D.load_dataset(str(idx)), D.load_dataset(str(csv))
    assert (as_idx.fmt, as_csv.fmt) == ("idx", "csv")
    assert as_csv.sha256 == as_idx.sha256 == D.content_hash(*part.values())
    with pytest.raises(D.DataError, match="train has 1000 images, expected 60000"):
        D.load(csv)


def test_bad_csv_is_refused(tmp_path):
    (tmp_path / "fashion-mnist_train.csv").write_text("label,pixel1\n3,7\n")
    (tmp_path / "fashion-mnist_test.csv").write_text("label,pixel1\n3,7\n")
    with pytest.raises(D.DataError, match="784 pixel columns"):
        D.load(tmp_path)


def test_nothing_found_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.delenv("FMNIST_DATA_DIR", raising=False)
    places = [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(D.DataError) as err:
        D.load(fallbacks=places, allow_download=False)
    text = str(err.value)
    for p in places:
        assert str(p) in text
    assert "Keras downloader" in text and "apt-get install -y dataset-fashion-mnist" in text


def test_empty_named_data_dir_is_an_error(tmp_path):
    with pytest.raises(D.DataError, match=f"data_dir={tmp_path}"):
        D.load(tmp_path)


def test_env_var_is_searched_first(tmp_path, monkeypatch):
    folder = tmp_path / "env"
    folder.mkdir()
    for stem in D.IDX_FILES.values():
        shutil.copy(D.DEBIAN_DIR / f"{stem}.gz", folder)
    monkeypatch.setenv("FMNIST_DATA_DIR", str(folder))
    assert D.load().source == str(folder)


def test_split_is_stratified_seeded_and_keeps_validation(dataset):
    a = D.split(dataset, val_fraction=0.1, seed=1)
    b = D.split(dataset, val_fraction=0.1, seed=1, train_samples=1000)
    assert len(a.y_val) == 6000 and np.bincount(a.y_val).tolist() == [600] * 10
    assert len(a.y_train) == 54_000
    assert np.array_equal(a.x_val, b.x_val), "a smaller training subset keeps the same validation set"
    assert len(b.y_train) == 1000 and np.bincount(b.y_train).tolist() == [100] * 10
    c = D.split(dataset, val_fraction=0.1, seed=2)
    assert not np.array_equal(a.y_val, c.y_val)
    assert a.x_test is dataset.x_test
