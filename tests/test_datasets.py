"""Datasets other than Fashion-MNIST, on real files made from real images: scikit-learn's digits
(as PNGs, IDX, CSV and .npz), patches of scikit-learn's two sample photos (a colour folder), and
Fashion-MNIST's own files. Every refusal is asserted by its message."""

from __future__ import annotations

import gzip
import io
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from sklearn.model_selection import train_test_split

from fmnist_exp import data as D

# one test process for the whole file: its module-scoped fixtures are made once (pyproject's --dist loadgroup)
pytestmark = pytest.mark.xdist_group("datasets")

DIGITS = tuple(str(d) for d in range(10))


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits as the loader scales them: (1797, 8, 8) uint8 0-255, uint8 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.round(d.images * 255 / 16).astype(np.uint8), d.target.astype(np.uint8)


@pytest.fixture(scope="module")
def photos():
    from sklearn.datasets import load_sample_images

    return load_sample_images().images  # china.jpg, flower.jpg: (427, 640, 3) uint8


def _patches(photo: np.ndarray, n: int, size: int = 32) -> list[np.ndarray]:
    return [photo[40 * (i // 8):40 * (i // 8) + size, 40 * (i % 8):40 * (i % 8) + size] for i in range(n)]


def _write_pngs(folder, images) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(images):
        Image.fromarray(a).save(folder / f"{i:04d}.png")


def _digit_folder(root, x, y, per_class: int):
    """DIR/<digit>/NNNN.png, and the images and labels in the loader's canonical order."""
    xs, ys = [], []
    for d in range(10):
        images = x[y == d][:per_class]
        _write_pngs(root / str(d), images)
        xs.append(images)
        ys += [d] * len(images)
    return np.concatenate(xs), np.array(ys, dtype=np.uint8)


def _by_digest(x, y, fraction=0.2):
    """The split the loader promises: by the content's digest, indices sorted."""
    seed = int(D.content_hash(x, y)[:8], 16)
    tr, te = train_test_split(np.arange(len(y)), test_size=fraction, stratify=y, random_state=seed)
    return np.sort(tr), np.sort(te)


def _write_idx(folder, arrays: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in D.IDX_FILES.items():
        a = arrays[key]
        magic = D.IDX_IMAGE_MAGIC if key.startswith("x") else D.IDX_LABEL_MAGIC
        (folder / f"{stem}.gz").write_bytes(gzip.compress(np.array([magic, *a.shape], ">i4").tobytes() + a.tobytes()))


def _given(x, y):
    """Digits cut into a fixed train/test pair (the first 1,500 to train on)."""
    return {"x_train": x[:1500], "y_train": y[:1500], "x_test": x[1500:], "y_test": y[1500:]}


# ----------------------------------------------------------------------------- Fashion-MNIST and digits


def test_fashion_mnist_is_what_files_load_gives(dataset):
    for name in (None, "", "fashion-mnist"):
        ds = D.load_dataset(name)
        assert ds.sha256 == dataset.sha256 == D.OFFICIAL_CONTENT_SHA256
        assert np.array_equal(ds.x_train, dataset.x_train) and np.array_equal(ds.y_test, dataset.y_test)
        assert ds.y_train.dtype == np.uint8 and ds.test_split == "given"
        assert ds.info == replace(D.FASHION_MNIST, sha256=ds.sha256)


def test_data_dir_applies_only_to_fashion_mnist(tmp_path):
    assert D.load_dataset("digits", data_dir=tmp_path / "nowhere").info.name == "digits"
    with pytest.raises(D.DataError, match="data_dir="):
        D.load_dataset("fashion-mnist", data_dir=tmp_path / "nowhere")


def test_digits_scaled_and_tested_on_images_fixed_by_their_digest(digits):
    x, y = digits
    a = D.load_dataset("digits")
    np.random.seed(1)  # nothing a run seeds may move the test set
    b = D.load_dataset("digits")
    assert a.info == replace(D.DatasetInfo("digits", (8, 8, 1), DIGITS, pixel_range=(0, 16), flips=False,
                                           background="dark"), sha256=a.sha256)
    assert (a.source, a.fmt, a.test_split) == ("sklearn.datasets.load_digits", "sklearn", "held out by digest, 20%")
    assert a.x_train.shape == (1437, 8, 8) and a.x_test.shape == (360, 8, 8) and a.x_train.dtype == np.uint8
    assert x.max() == 255 and np.array_equal(np.unique(x), np.unique(np.round(np.arange(17) * 255 / 16)))
    tr, te = _by_digest(x, y)
    assert np.array_equal(a.x_train, x[tr]) and np.array_equal(a.y_test, y[te])
    assert np.array_equal(a.x_test, b.x_test) and a.sha256 == b.sha256
    D.check_split(a, 0.1)


# ----------------------------------------------------------------------------- image folders


def test_grey_folder_is_read_like_image_dataset_from_directory(digits, tmp_path):
    x_all, y_all = _digit_folder(tmp_path / "My Digits!", *digits, per_class=20)
    (tmp_path / "My Digits!" / "README.txt").write_text("not an image: ignored")
    (tmp_path / "My Digits!" / "3" / "notes.txt").write_text("ignored too")
    ds = D.load_dataset(str(tmp_path / "My Digits!"))
    assert ds.info == replace(D.DatasetInfo("my-digits", (8, 8, 1), DIGITS, background="as-is"), sha256=ds.sha256)
    assert (ds.fmt, ds.source, ds.notes) == ("folder", str((tmp_path / "My Digits!").resolve()), ())
    tr, te = _by_digest(x_all, y_all)
    assert np.array_equal(ds.x_train, x_all[tr]) and np.array_equal(ds.y_test, y_all[te])
    assert ds.test_split == "held out by digest, 20%" and np.bincount(ds.y_test).tolist() == [4] * 10


def test_colour_folder_with_a_grey_and_a_larger_image(photos, tmp_path):
    china, flower = _patches(photos[0], 16), _patches(photos[1], 16)
    _write_pngs(tmp_path / "china", china)
    _write_pngs(tmp_path / "flower", flower)
    grey, big = china[0][..., 1], photos[1][200:240, 300:340]  # big: 40x40, stretched to the usual 32x32
    Image.fromarray(grey).save(tmp_path / "china" / "grey.png")
    Image.fromarray(big).save(tmp_path / "flower" / "big.JPG", quality=95)
    ds = D.load_dataset(str(tmp_path))
    assert ds.info.shape == (32, 32, 3) and ds.info.class_names == ("china", "flower") and ds.x_train.ndim == 4
    assert ds.notes == ("1 of 34 images resized to 32x32", "1 of 34 images were grayscale, converted to RGB")
    big_read = D.decode_image(tmp_path / "flower" / "big.JPG", (32, 32, 3), "big.JPG")
    stretched = np.array(Image.open(tmp_path / "flower" / "big.JPG").resize((32, 32), Image.Resampling.LANCZOS))
    assert np.array_equal(big_read, stretched)
    # canonical order: class, then relative path ("0000.png" ... "0015.png" before "big.JPG", "grey.png")
    x_all = np.stack([*china, np.repeat(grey[..., None], 3, axis=2), *flower, big_read])
    y_all = np.array([0] * 17 + [1] * 17, dtype=np.uint8)
    tr, te = _by_digest(x_all, y_all)
    assert np.array_equal(ds.x_train, x_all[tr]) and np.array_equal(ds.x_test, x_all[te])


def test_dataset_yaml_sets_name_order_channels_and_size(photos, tmp_path):
    _write_pngs(tmp_path / "china", _patches(photos[0], 10))
    _write_pngs(tmp_path / "flower", _patches(photos[1], 10))
    (tmp_path / "dataset.yaml").write_text(
        "name: Sample Photos\nclasses: [flower, china]\nchannels: 1\nimage_size: 16\nflips: true\n"
        "test_fraction: 0.3\n")
    ds = D.load_dataset(str(tmp_path))
    assert (ds.info.name, ds.info.class_names, ds.info.shape, ds.info.flips) == (
        "sample-photos", ("flower", "china"), (16, 16, 1), True)
    assert ds.x_train.shape[1:] == (16, 16) and ds.test_split == "held out by digest, 30%"
    assert ds.notes == ("20 of 20 images resized to 16x16", "20 of 20 colour images converted to grayscale")
    files = sorted((tmp_path / "flower").glob("*.png")) + sorted((tmp_path / "china").glob("*.png"))
    x_all = np.stack([D.decode_image(f, (16, 16, 1), f.name) for f in files])
    tr, te = _by_digest(x_all, np.array([0] * 10 + [1] * 10, dtype=np.uint8), fraction=0.3)  # flower first, as listed
    assert np.array_equal(ds.x_train, x_all[tr]) and np.array_equal(ds.x_test, x_all[te])


def test_fixed_train_and_test_folders(digits, tmp_path):
    x, y = digits
    _digit_folder(tmp_path / "train", x[:1000], y[:1000], per_class=10)
    x_test, y_test = _digit_folder(tmp_path / "test", x[1000:], y[1000:], per_class=3)
    ds = D.load_dataset(str(tmp_path))
    assert ds.test_split == "given" and len(ds.y_train) == 100
    assert np.array_equal(ds.x_test, x_test) and np.array_equal(ds.y_test, y_test)


def test_decode_image_reads_files_bytes_16_bit_and_exif_rotation(photos, tmp_path):
    path = tmp_path / "p.png"
    Image.fromarray(_patches(photos[0], 1)[0]).save(path)
    from_path = D.decode_image(path, (32, 32, 3), "p.png")
    assert np.array_equal(from_path, D.decode_image(io.BytesIO(path.read_bytes()), (32, 32, 3), "p"))
    assert np.array_equal(from_path, D.decode_image(path.read_bytes(), (32, 32, 3), "p"))
    wide = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    assert np.array_equal(D.decode_image(tmp_path / "w.png", (64, 64, 1), "w"), (wide >> 8).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    Image.fromarray(photos[0][:20, :30]).save(tmp_path / "r.jpg", exif=exif)
    assert D.decode_image(tmp_path / "r.jpg", (30, 20, 3), "r").shape == (30, 20, 3)


# ----------------------------------------------------------------------------- .npz, IDX and CSV


def test_npz_uint8_with_class_names(digits, tmp_path):
    x, y = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    np.savez(tmp_path / "My Digits.v2.npz", **_given(x, y), class_names=names)
    ds = D.load_dataset(str(tmp_path / "My Digits.v2.npz"))
    assert (ds.info.name, ds.info.class_names, ds.info.pixel_range, ds.fmt) == (
        "my-digits-v2", tuple(names), (0, 255), "npz")
    assert ds.info.background == "dark" and not ds.info.flips and ds.test_split == "given"
    assert np.array_equal(ds.x_train, x[:1500]) and ds.y_train.dtype == np.uint8


def test_npz_floats_0_1_with_a_channel_axis_and_no_names(digits, tmp_path):
    x, y = digits
    arrays = {k: (v[..., None] / 255).astype(np.float32) if k.startswith("x") else v.astype(np.int64)
              for k, v in _given(x, y).items()}
    np.savez(tmp_path / "d.npz", **arrays)
    ds = D.load_dataset(str(tmp_path / "d.npz"))
    assert ds.info.class_names == DIGITS and ds.info.pixel_range == (0, 1) and ds.info.shape == (8, 8, 1)
    assert np.array_equal(ds.x_train, x[:1500]) and np.array_equal(ds.x_test, x[1500:])
    np.savez(tmp_path / "e.npz", **{k: v.astype(float) if k.startswith("x") else v for k, v in _given(x, y).items()})
    assert D.load_dataset(str(tmp_path / "e.npz")).sha256 == ds.sha256, "floats 0-255 are kept as they are"


def test_npz_colour(photos, tmp_path):
    x = np.stack(_patches(photos[0], 16) + _patches(photos[1], 16))
    y = np.array([0] * 16 + [1] * 16)
    np.savez(tmp_path / "p.npz", x_train=x[2:30], y_train=y[2:30], x_test=x[[0, 1, 30, 31]], y_test=y[[0, 1, 30, 31]])
    ds = D.load_dataset(str(tmp_path / "p.npz"))
    assert ds.info.shape == (32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3) and ds.info.background == "as-is"


def test_idx_folder_of_other_content_needs_its_classes_named(digits, tmp_path):
    _write_idx(tmp_path / "mnist-like", _given(*digits))
    with pytest.raises(D.DataError, match=r"not Fashion-MNIST's \(content sha256 [0-9a-f]{12}.*"
                                          r"dataset\.yaml naming the 10 classes.*classes: \[\"0\", \"1\""):
        D.load_dataset(str(tmp_path / "mnist-like"))
    (tmp_path / "mnist-like" / "dataset.yaml").write_text(f"classes: {list(DIGITS)}\n")
    ds = D.load_dataset(str(tmp_path / "mnist-like"))
    assert (ds.info.name, ds.info.shape, ds.info.class_names, ds.fmt) == ("mnist-like", (8, 8, 1), DIGITS, "idx")
    assert np.array_equal(ds.x_test, digits[0][1500:]) and ds.info.background == "dark"
    (tmp_path / "mnist-like" / "dataset.yaml").write_text("classes: [a, b, c, d, e]\n")
    with pytest.raises(D.DataError, match=r"train-labels-idx1-ubyte.gz: label 9 found, labels are 0-4 \(5 classes\); "
                                          r"list every class in .*dataset.yaml"):
        D.load_dataset(str(tmp_path / "mnist-like"))


def test_fashion_mnist_idx_folder_needs_no_yaml(dataset, tmp_path):
    for stem in D.IDX_FILES.values():
        shutil.copy(D.DEBIAN_DIR / f"{stem}.gz", tmp_path)
    ds = D.load_dataset(str(tmp_path))
    assert ds.info == replace(D.FASHION_MNIST, sha256=D.OFFICIAL_CONTENT_SHA256) and ds.fmt == "idx"
    assert np.array_equal(ds.x_train, dataset.x_train)


def _write_csv(folder, arrays) -> None:
    folder.mkdir(exist_ok=True)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        pixels = x.reshape(len(x), -1)
        header = "label," + ",".join(f"pixel{i + 1}" for i in range(pixels.shape[1]))
        rows = [",".join(map(str, [label, *row])) for label, row in zip(y, pixels, strict=True)]
        (folder / D.CSV_FILES[split]).write_text("\n".join([header, *rows]) + "\n")


def test_csv_folder_with_yaml_any_image_size(digits, tmp_path):
    x, y = digits
    _write_csv(tmp_path, _given(x, y))
    (tmp_path / "dataset.yaml").write_text(f"name: digits-csv\nclasses: {list(DIGITS)}\n")
    ds = D.load_dataset(str(tmp_path))
    assert (ds.info.name, ds.info.shape, ds.fmt) == ("digits-csv", (8, 8, 1), "csv")
    assert np.array_equal(ds.x_train, x[:1500]) and np.array_equal(ds.y_test, y[1500:])
    _write_csv(tmp_path, _given(np.ascontiguousarray(x[:, :, :6]), y))  # 8x6: 48 pixel columns, not a square
    with pytest.raises(D.DataError, match=r"48 pixel columns are not a square image.*image_size: \[height, width\]"):
        D.load_dataset(str(tmp_path))
    (tmp_path / "dataset.yaml").write_text(f"classes: {list(DIGITS)}\nimage_size: [8, 6]\n")
    ds = D.load_dataset(str(tmp_path))
    assert ds.info.shape == (8, 6, 1) and np.array_equal(ds.x_train, x[:1500, :, :6])


# ----------------------------------------------------------------------------- refusals


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_unknown_data_and_missing_paths_are_named(tmp_path):
    with pytest.raises(D.DataError, match=r"data=nope: not fashion-mnist, digits, an .npz file or a folder "
                                          r"\(no such file or folder: .*nope\)\. Give fashion-mnist, digits"):
        D.load_dataset("nope")
    (tmp_path / "x.csv").write_text("label\n1\n")
    with pytest.raises(D.DataError, match=r"x\.csv is a file, not an \.npz"):
        D.load_dataset(str(tmp_path / "x.csv"))


def test_empty_folders_are_refused(tmp_path):
    with pytest.raises(D.DataError, match=r"no class folders \(and no IDX or CSV files\)"):
        D.load_dataset(str(tmp_path))
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "notes.txt").write_text("no images here")
    with pytest.raises(D.DataError, match=r"no PNG/JPEG images in its class folders \(cat, dog\)"):
        D.load_dataset(str(tmp_path))


def test_fewer_than_two_classes_is_refused(digits, tmp_path):
    _write_pngs(tmp_path / "only" / "zero", digits[0][:20])
    with pytest.raises(D.DataError, match=r"1 class \(zero\); a classifier needs at least two"):
        D.load_dataset(str(tmp_path / "only"))
    x, y = digits
    path = _npz(tmp_path / "one.npz", x_train=x[:20], y_train=np.zeros(20, int), x_test=x[20:25],
                y_test=np.zeros(5, int))
    with pytest.raises(D.DataError, match=r"1 class \(0\); a classifier needs at least two"):
        D.load_dataset(path)


def test_a_class_with_too_few_images_is_named(digits, tmp_path):
    x, y = digits
    _write_pngs(tmp_path / "held" / "zero", x[y == 0][:20])
    _write_pngs(tmp_path / "held" / "one", x[y == 1][:6])
    with pytest.raises(D.DataError, match=r"class 'one' has 6 image\(s\); each class needs at least 7 "
                                          r"\(2 held out to test on, 5 to train on\)"):
        D.load_dataset(str(tmp_path / "held"))
    _digit_folder(tmp_path / "fixed" / "train", x, y, per_class=10)
    _digit_folder(tmp_path / "fixed" / "test", x, y, per_class=2)
    (tmp_path / "fixed" / "test" / "7" / "0001.png").unlink()
    with pytest.raises(D.DataError, match=r"class '7' has 1 image\(s\) in the test set; each class needs at least 2 "
                                          r"to test on and 5 to train on .* Add images of '7' to the test set"):
        D.load_dataset(str(tmp_path / "fixed"))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_unreadable_and_truncated_images_are_named(photos, tmp_path, fmt):
    for c in ("a", "b"):
        _write_pngs(tmp_path / c, _patches(photos[0], 8))
    bad = tmp_path / "b" / f"bad.{fmt.lower()}"
    buf = io.BytesIO()
    Image.fromarray(photos[1][:64, :64]).save(buf, fmt)
    bad.write_bytes(buf.getvalue()[:-300])
    with pytest.raises(D.DataError, match=rf"{re.escape(str(bad))}: not a readable PNG/JPEG image \(.*[Tt]runcated"):
        D.load_dataset(str(tmp_path))
    bad.write_bytes(b"not an image at all")
    with pytest.raises(D.DataError, match=rf"{re.escape(str(bad))}: not a readable PNG/JPEG image \(cannot identify"):
        D.load_dataset(str(tmp_path))


def test_npz_refusals(digits, tmp_path):
    x, y = digits
    good = _given(x, y)
    with pytest.raises(D.DataError, match=r"no 'y_test' array in it \(it holds: x_test, x_train, y_train\)"):
        D.load_dataset(_npz(tmp_path / "a.npz", **{k: v for k, v in good.items() if k != "y_test"}))
    with pytest.raises(D.DataError, match="x_train has 1500 images but y_train has 1499 labels"):
        D.load_dataset(_npz(tmp_path / "b.npz", **{**good, "y_train": y[:1499]}))
    with pytest.raises(D.DataError, match=r"label 9 found, but class_names lists 2 classes \(labels 0-1\)"):
        D.load_dataset(_npz(tmp_path / "c.npz", **good, class_names=np.array(["a", "b"])))
    with pytest.raises(D.DataError, match="the training images are 8x8, the test images 8x7"):
        D.load_dataset(_npz(tmp_path / "d.npz", **{**good, "x_test": x[1500:, :, :7]}))
    with pytest.raises(D.DataError, match=r"x_train has shape \(1500, 64\); expected \(n, height, width\)"):
        D.load_dataset(_npz(tmp_path / "e.npz", **{**good, "x_train": x[:1500].reshape(1500, 64)}))
    (tmp_path / "f.npz").write_bytes(b"not a zip")
    with pytest.raises(D.DataError, match=r"f\.npz: not a readable \.npz file"):
        D.load_dataset(str(tmp_path / "f.npz"))


@pytest.mark.parametrize("value, message", [
    (-1.0, "pixel values run -1 to 255"),
    (256.0, "pixel values run 0 to 256"),
    (np.nan, "NaN or infinite"),
])
def test_npz_pixels_outside_0_255_are_refused(digits, tmp_path, value, message):
    arrays = _given(*digits)
    arrays["x_train"] = arrays["x_train"].astype(np.float32)
    arrays["x_train"][3, 4, 4] = value
    with pytest.raises(D.DataError, match=message):
        D.load_dataset(_npz(tmp_path / "p.npz", **arrays))


def test_folder_layout_refusals(digits, tmp_path):
    x, y = digits
    _digit_folder(tmp_path / "a" / "train", x, y, per_class=10)
    _digit_folder(tmp_path / "a" / "test", x, y, per_class=3)
    shutil.rmtree(tmp_path / "a" / "test" / "9")
    with pytest.raises(D.DataError, match=r"train/ and test/ hold different class folders \(only in train/: \['9'\]"):
        D.load_dataset(str(tmp_path / "a"))
    shutil.rmtree(tmp_path / "a" / "test")
    with pytest.raises(D.DataError, match=r"holds train/ but not both train/ and test/"):
        D.load_dataset(str(tmp_path / "a"))
    _digit_folder(tmp_path / "b", x, y, per_class=10)
    (tmp_path / "b" / "dataset.yaml").write_text("classes: ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '10']\n")
    with pytest.raises(D.DataError, match=r"lists class '10', but there is no folder 10/ here"):
        D.load_dataset(str(tmp_path / "b"))
    (tmp_path / "b" / "dataset.yaml").write_text("classes: ['0', '1', '2', '3', '4', '5', '6', '7', '8']\n")
    with pytest.raises(D.DataError, match=r"b/9: a folder that is not among dataset.yaml's classes"):
        D.load_dataset(str(tmp_path / "b"))


@pytest.mark.parametrize("text, message", [
    ("colour: 3\n", r"unknown key\(s\) colour\. The known keys are name, classes, image_size, channels, flips, "
                    r"test_fraction"),
    ("- a\n- b\n", r"holds list, not a mapping of keys to values"),
    ("classes: [cat]\n", r"classes must be a list of at least two class names"),
    ("classes: [cat, cat]\n", r"classes lists 'cat' more than once"),
    ("image_size: [0, 3]\n", r"image_size must be \[height, width\] or one number"),
    ("channels: 2\n", r"channels must be 1 \(grayscale\) or 3 \(colour\); got 2"),
    ("flips: maybe\n", r"flips must be true or false"),
    ("test_fraction: 0.7\n", r"test_fraction must be a number above 0 and at most 0.5"),
    ("classes: [a\n", r"not valid YAML"),
    ("name: Fashion MNIST\n", r"name: Fashion MNIST is Fashion-MNIST's own, which these files are not"),
])
def test_dataset_yaml_is_checked(tmp_path, text, message):
    (tmp_path / "dataset.yaml").write_text(text)
    with pytest.raises(D.DataError, match=message):
        D.load_dataset(str(tmp_path))


def test_test_fraction_is_refused_where_the_files_hold_a_test_set(digits, tmp_path):
    _write_idx(tmp_path, _given(*digits))
    (tmp_path / "dataset.yaml").write_text(f"classes: {list(DIGITS)}\ntest_fraction: 0.2\n")
    with pytest.raises(D.DataError, match="test_fraction is given, but the IDX files hold a test set"):
        D.load_dataset(str(tmp_path))


def test_check_split_refuses_what_cannot_be_stratified(digits):
    x, y = digits
    info = D.DatasetInfo("tiny", (8, 8, 1), DIGITS)
    picks = np.concatenate([np.flatnonzero(y == d)[:5] for d in range(10)])
    tiny = D.Dataset(x[picks], y[picks], x[:20], y[:20], source="test", fmt="npz", info=info)
    with pytest.raises(D.DataError, match=r"tiny: val_fraction=0.1 holds out 5 of 50 training images for "
                                          r"validation, fewer than its 10 classes.*Use val_fraction 0.2 or more"):
        D.check_split(tiny, 0.1)
    D.check_split(tiny, 0.2)
    with pytest.raises(D.DataError, match=r"leaves 5 of 50 training images to train on.*val_fraction 0.8 or less"):
        D.check_split(tiny, 0.9)
    with pytest.raises(D.DataError, match=r"val_fraction=1.5: must be above 0 and below 1"):
        D.check_split(tiny, 1.5)
    one = D.Dataset(x[picks[4:]], y[picks[4:]], x[:20], y[:20], source="test", fmt="npz", info=info)
    with pytest.raises(D.DataError, match=r"class '0' has 1 training image\(s\); a stratified validation split"):
        D.check_split(one, 0.5)


def test_a_tune_of_data_without_a_study_file_gets_the_study_for_its_images(dataset, digits, photos, tmp_path,
                                                                             tracking, capsys):
    """`tune --data X` with no study file: digits (8x8) gets experiments/digits.yaml, a two-class colour folder
    and a folder of Fashion-MNIST's images (which the default study refused: it asks for mirror images) get
    experiments/images.yaml, each said in one line, and the whole setup a study checks before any run passes;
    Fashion-MNIST itself, a study file, a study name or the mlp family keep today's choice."""
    from fmnist_exp import params as P
    from fmnist_exp.study import setup

    colour = tmp_path / "colour"
    for k, photo in enumerate(photos):
        _write_pngs(colour / ("china", "flower")[k], _patches(photo, 40))
    fashion = tmp_path / "fashion"
    for label in range(10):
        images = dataset.x_train[dataset.y_train == label][:20]
        _write_pngs(fashion / D.FASHION_CLASSES[label].replace("/", "-"), images)

    chosen = {}
    for data in ("digits", str(colour), str(fashion)):
        args, ds = setup.study_for_data(P.tune_args({"data": data}))
        line = capsys.readouterr().out.strip()
        assert ds is not None and line.startswith(f"[tune] no study file given: study={args.study} "), line
        assert "docs/studies.md, 'A study for your data'" in line and f"{ds.info.name}: " in line
        chosen[data] = args.study
    assert chosen == {"digits": "digits", str(colour): "images", str(fashion): "images"}
    # as the command runs it: every check a new study runs before any run passes (flips, widths, reference)
    prepared = setup.prepare(P.tune_args({"data": str(colour)}))
    assert (prepared.study_name, prepared.spec.path.name, prepared.spec.family) == ("images", "images.yaml", "cnn")
    # a study_name of its own (what check_study_data tells a second folder to give) keeps the choice
    prepared = setup.prepare(P.tune_args({"data": str(fashion), "study_name": "fashion-folder"}))
    assert (prepared.study_name, prepared.spec.path.name) == ("fashion-folder", "images.yaml")
    for given in ({"data": "fashion-mnist"}, {"data": "digits", "study": "mlp"}, {"data": "digits", "family": "mlp"}):
        args, ds = setup.study_for_data(P.tune_args(given))
        assert ds is None and args == P.tune_args(given)
    args, ds = setup.study_for_data(P.tune_args({"data": "digits", "study_name": "mine"}), stored=True)
    assert ds is None and args.study is None  # a stored study keeps its own file
