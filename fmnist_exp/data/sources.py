"""Which dataset a run reads. :func:`load_dataset` turns a ``data`` value into a checked
:class:`Dataset`:

- ``fashion-mnist`` (the default): Fashion-MNIST, found as :func:`files.load` finds it;
- ``digits``: scikit-learn's 1,797 real 8x8 handwritten digits (pixels 0-16, scaled to 0-255);
- a ``.npz`` file with ``x_train``, ``y_train``, ``x_test``, ``y_test`` (and ``class_names``);
- a folder of IDX files or of the CSV pair, named by its ``dataset.yaml`` unless it is Fashion-MNIST;
- a folder of class folders of PNG/JPEG images (folders.py).

Data a run could not use is refused here, before any run starts. Where the data brings no test
set (digits, a folder of class folders), one is held out by the dataset's digest, never by a run's
seed, so every run of the same data tests on the same images. :func:`check_split` says whether a
run's validation fraction can be stratified.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np

from . import files
from .dataset import FASHION_MNIST, OFFICIAL_CONTENT_SHA256, DataError, Dataset, DatasetInfo, content_hash
from .folders import SPEC_FILE, read_image_folder, read_spec, slug

FASHION, DIGITS = "fashion-mnist", "digits"
DEFAULT_TEST_FRACTION = 0.2
# Per class: 2 to test on, and 5 to train on, so that a 10% validation split can be stratified.
MIN_TEST_PER_CLASS, MIN_TRAIN_PER_CLASS = 2, 5
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
WHAT_TO_GIVE = ("Give fashion-mnist, digits, a .npz file (arrays x_train, y_train, x_test, y_test) or a folder: "
                "one subfolder of PNG/JPEG images per class, or IDX/CSV files with a dataset.yaml naming the classes.")


def load_dataset(data: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None) -> Dataset:
    """The dataset ``data`` names (see the module doc), checked. ``data_dir`` is only where to
    look for Fashion-MNIST; with any other ``data`` it is ignored."""
    text = str(data).strip() if data is not None else ""
    if text in ("", FASHION):
        ds = files.load(data_dir)
    elif text == DIGITS:
        ds = _digits()
    else:
        ds = _from_path(text)
    _check_classes(ds)
    return ds


def _from_path(text: str) -> Dataset:
    path = Path(text).expanduser()
    if not path.exists():
        raise DataError(f"data={text}: not fashion-mnist, digits, an .npz file or a folder "
                        f"(no such file or folder: {path.absolute()}). {WHAT_TO_GIVE}")
    if path.is_dir():
        return _files_dir(path) if files.has_idx(path) or files.has_csv(path) else _image_folder(path)
    if path.suffix.lower() == ".npz":
        return _npz(path)
    raise DataError(f"data={text}: not fashion-mnist, digits, an .npz file or a folder "
                    f"({path.absolute()} is a file, not an .npz). {WHAT_TO_GIVE}")


# ----------------------------------------------------------------------------- digits


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.round(digits.images * 255 / 16).astype(np.uint8)
    info = DatasetInfo(DIGITS, (8, 8, 1), tuple(str(d) for d in range(10)), pixel_range=(0, 16), flips=False,
                       background="dark")
    return _held_out(x, digits.target.astype(np.uint8), info, source="sklearn.datasets.load_digits", fmt="sklearn",
                     fraction=DEFAULT_TEST_FRACTION)


# ----------------------------------------------------------------------------- folders


def _image_folder(directory: Path) -> Dataset:
    spec = read_spec(directory)
    images = read_image_folder(directory, spec)
    info = DatasetInfo(spec.name or slug(directory.resolve().name), images.shape, images.class_names,
                       flips=bool(spec.flips), background="as-is")
    source = str(directory.resolve())
    if "all" in images.parts:
        x, y = images.parts["all"]
        return _held_out(x, y, info, source=source, fmt="folder", fraction=spec.test_fraction or DEFAULT_TEST_FRACTION,
                         notes=images.notes)
    (x_train, y_train), (x_test, y_test) = images.parts["train"], images.parts["test"]
    return Dataset(x_train, y_train, x_test, y_test, source=source, fmt="folder", info=info, notes=images.notes)


def _files_dir(directory: Path) -> Dataset:
    """A folder of IDX files or the CSV pair: any image size, classes from its dataset.yaml."""
    spec, yaml_path = read_spec(directory), directory / SPEC_FILE
    fmt = "idx" if files.has_idx(directory) else "csv"
    if spec.test_fraction is not None:
        raise DataError(f"{yaml_path}: test_fraction is given, but the {fmt.upper()} files hold a test set, so "
                        "nothing is held out. Remove test_fraction.")
    if spec.channels not in (None, 1):
        raise DataError(f"{yaml_path}: channels: {spec.channels}, but {fmt.upper()} files hold grayscale images. "
                        "Remove channels.")
    expect = files.Expect(image_shape=spec.image_size, num_classes=len(spec.classes) if spec.classes else None,
                          label_fix=f"list every class in {yaml_path}, in label order, or fix the labels.")
    read = files.read_idx_dir if fmt == "idx" else files.read_csv_dir
    arrays = files.checked_arrays(read(directory, expect), str(directory), expect)
    _same_shape(arrays, directory)
    sha = content_hash(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"])
    if spec.classes is None:
        info = _fashion_or_refuse(arrays, sha, directory, fmt)
    else:
        h, w = arrays["x_train"].shape[1:]
        info = DatasetInfo(spec.name or slug(directory.resolve().name), (h, w, 1), spec.classes,
                           flips=bool(spec.flips), background=_background(arrays["x_train"]))
    return Dataset(**arrays, source=str(directory.resolve()), fmt=fmt, info=info, sha256=sha)


def _fashion_or_refuse(arrays: dict, sha: str, directory: Path, fmt: str) -> DatasetInfo:
    """Without a class list, files with Fashion-MNIST's names are Fashion-MNIST only if their content is."""
    if sha == OFFICIAL_CONTENT_SHA256:
        return FASHION_MNIST
    k = int(max(arrays["y_train"].max(initial=0), arrays["y_test"].max(initial=0))) + 1
    names = [f'"{i}"' for i in range(min(k, 10))] + ([f'..., "{k - 1}"'] if k > 10 else [])
    raise DataError(f"{directory}: these {fmt.upper()} files are not Fashion-MNIST's (content sha256 {sha[:12]}..., "
                    f"Fashion-MNIST's is {OFFICIAL_CONTENT_SHA256[:12]}...), and files of these names hold other "
                    "datasets too (MNIST's digits, say), so their labels have no names. Write "
                    f"{directory / SPEC_FILE} naming the {k} classes in label order, e.g. "
                    f"`classes: [{', '.join(names)}]`.")


def _background(x: np.ndarray) -> str:
    """"dark" for grayscale images on a black ground, like MNIST's (served files are then padded and
    inverted to match), else "as-is"."""
    if x.ndim != 3 or not len(x):
        return "as-is"
    sample = x[:1000]
    border = np.concatenate([sample[:, 0], sample[:, -1], sample[:, :, 0], sample[:, :, -1]], axis=1)
    return "dark" if np.median(border) < 32 else "as-is"


# ----------------------------------------------------------------------------- .npz


def _npz(path: Path) -> Dataset:
    raw = _npz_arrays(path)
    xs, pixel_range = _npz_pixels(path, raw["x_train"], raw["x_test"])
    ys = [_npz_labels(path, raw, split) for split in ("train", "test")]
    k = int(max(y.max(initial=0) for y in ys)) + 1
    names = _npz_class_names(path, raw["class_names"]) if "class_names" in raw else tuple(str(i) for i in range(k))
    if k > len(names):
        raise DataError(f"{path}: label {k - 1} found, but class_names lists {len(names)} classes "
                        f"(labels 0-{len(names) - 1}). Add the missing names to class_names, or fix the labels.")
    dtype = files.label_dtype(len(names))
    arrays = dict(x_train=xs[0], y_train=ys[0].astype(dtype), x_test=xs[1], y_test=ys[1].astype(dtype))
    _same_shape(arrays, path)
    h, w = xs[0].shape[1:3]
    info = DatasetInfo(slug(path.stem), (h, w, 3 if xs[0].ndim == 4 else 1), names, pixel_range=pixel_range,
                       flips=False, background=_background(xs[0]))
    return Dataset(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                   source=str(path.resolve()), fmt="npz", info=info)


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    save = "Save it with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=..., class_names=[...])."
    try:
        with np.load(path, allow_pickle=False) as z:  # never unpickle: a .npz may come from anywhere
            raw = {key: z[key] for key in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz file of plain arrays ({e}). {save}") from e
    missing = [key for key in NPZ_KEYS if key not in raw]
    if missing:
        raise DataError(f"{path}: no {', '.join(repr(m) for m in missing)} array in it (it holds: "
                        f"{', '.join(sorted(raw)) or 'nothing'}); it needs {', '.join(NPZ_KEYS)}. {save}")
    return raw


def _npz_images(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    if x.ndim == 4 and x.shape[3] == 1:
        x = x[..., 0]  # grayscale is held as (n, H, W), as Fashion-MNIST is
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[3] == 3)):
        raise DataError(f"{path}: {key} has shape {x.shape}; expected (n, height, width), (n, height, width, 1) "
                        "or (n, height, width, 3).")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.iscomplexobj(x):
        raise DataError(f"{path}: {key} holds {x.dtype} values; expected pixel numbers (uint8 0-255, or 0-1).")
    return x


def _npz_pixels(path: Path, x_train: np.ndarray, x_test: np.ndarray) -> tuple[list[np.ndarray], tuple[float, float]]:
    """Both image arrays as uint8 0-255, and the range their values came in (decided for both together)."""
    xs = [_npz_images(path, key, x) for key, x in (("x_train", x_train), ("x_test", x_test))]
    if all(x.dtype == np.uint8 for x in xs):
        return xs, (0, 255)
    if not all(np.isfinite(x).all() for x in xs):
        raise DataError(f"{path}: the images hold NaN or infinite values. Pixels must be 0-255 (or 0-1).")
    lo = min(float(x.min(initial=0)) for x in xs)
    hi = max(float(x.max(initial=0)) for x in xs)
    if lo < 0 or hi > 255:
        raise DataError(f"{path}: pixel values run {lo:g} to {hi:g}; expected 0-255 (or 0-1). Rescale them.")
    if hi <= 1.0:
        return [np.round(x.astype(np.float64) * 255).astype(np.uint8) for x in xs], (0, 1)
    return [np.round(x.astype(np.float64)).astype(np.uint8) for x in xs], (0, 255)


def _npz_labels(path: Path, raw: dict[str, np.ndarray], split: str) -> np.ndarray:
    x, y = raw[f"x_{split}"], raw[f"y_{split}"]
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y  # Keras' CIFAR labels come as (n, 1)
    integral = np.issubdtype(y.dtype, np.integer) or (
        np.issubdtype(y.dtype, np.floating) and bool(np.isfinite(y).all()) and bool((y == np.round(y)).all()))
    if y.ndim != 1 or not integral:
        raise DataError(f"{path}: y_{split} is {y.dtype} of shape {y.shape}; expected one whole-number label "
                        "per image, (n,).")
    if len(x) != len(y):
        raise DataError(f"{path}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels; "
                        "they must be the same length.")
    if y.size and y.min() < 0:
        raise DataError(f"{path}: y_{split} holds label {int(y.min())}; labels are 0, 1, ... (one per class).")
    return y.astype(np.int64)


def _npz_class_names(path: Path, names: np.ndarray) -> tuple[str, ...]:
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise DataError(f"{path}: class_names is {names.dtype} of shape {names.shape}; expected a list of "
                        "strings, e.g. class_names=np.array(['cat', 'dog']).")
    out = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist())
    if len(set(out)) != len(out):
        raise DataError(f"{path}: class_names lists a name more than once ({', '.join(out)}); give each class once.")
    return out


# ----------------------------------------------------------------------------- checks and the test split


def _same_shape(arrays: dict, where: Path) -> None:
    a, b = arrays["x_train"].shape[1:], arrays["x_test"].shape[1:]
    if a != b:
        text = "x".join(map(str, a)), "x".join(map(str, b))
        raise DataError(f"{where}: the training images are {text[0]}, the test images {text[1]}; "
                        "train and test must hold images of one shape.")


def _held_out(x: np.ndarray, y: np.ndarray, info: DatasetInfo, *, source: str, fmt: str, fraction: float,
              notes: tuple[str, ...] = ()) -> Dataset:
    """The test set held out by the data's own digest: the same images whatever the run or its seed."""
    from sklearn.model_selection import train_test_split

    _check_class_count(info, source)
    counts, need = np.bincount(y, minlength=info.num_classes), MIN_TEST_PER_CLASS + MIN_TRAIN_PER_CLASS
    short = np.flatnonzero(counts < need)
    if short.size:
        name, n = info.class_names[short[0]], int(counts[short[0]])
        raise DataError(f"{source}: class '{name}' has {n} image(s){_others(short)}; each class needs at least "
                        f"{need} ({MIN_TEST_PER_CLASS} held out to test on, {MIN_TRAIN_PER_CLASS} to train on). "
                        f"Add images of '{name}', or leave the class out.")
    digest = content_hash(x, y)  # over all images and labels, in the canonical order
    try:
        train, test = train_test_split(np.arange(len(y)), test_size=fraction, stratify=y,
                                       random_state=int(digest[:8], 16))
    except ValueError as e:  # e.g. fewer test images than classes
        raise DataError(f"{source}: cannot hold out test_fraction {fraction:g} of {len(y)} images with every one of "
                        f"the {info.num_classes} classes in it ({e}). Raise test_fraction in {SPEC_FILE}, "
                        "or add images.") from e
    train, test = np.sort(train), np.sort(test)
    return Dataset(x[train], y[train], x[test], y[test], source=source, fmt=fmt, info=info,
                   test_split=f"held out by digest, {fraction * 100:g}%", notes=notes)


def _others(short: np.ndarray) -> str:
    return f" (and {short.size - 1} other class(es) too few)" if short.size > 1 else ""


def _check_class_count(info: DatasetInfo, source: str) -> None:
    if info.num_classes < 2:
        raise DataError(f"{source}: {info.num_classes} class ({', '.join(info.class_names) or 'none'}); a "
                        "classifier needs at least two. Add a class (for a folder: one subfolder of images per class).")


def _check_classes(ds: Dataset) -> None:
    """Each class can be tested on and trained on, with a stratified validation split."""
    _check_class_count(ds.info, ds.source)
    held_out = ds.test_split != "given"
    for part, y, need in (("training", ds.y_train, MIN_TRAIN_PER_CLASS), ("test", ds.y_test, MIN_TEST_PER_CLASS)):
        counts = np.bincount(y, minlength=ds.info.num_classes)
        short = np.flatnonzero(counts < need)
        if short.size:
            name = ds.info.class_names[short[0]]
            fix = (f"{'Raise' if part == 'test' else 'Lower'} test_fraction in {SPEC_FILE}, or add images of '{name}'"
                   if held_out else f"Add images of '{name}' to the {part} set")
            raise DataError(f"{ds.source}: class '{name}' has {counts[short[0]]} image(s) in the {part} set"
                            f"{_others(short)}; each class needs at least {MIN_TEST_PER_CLASS} to test on and "
                            f"{MIN_TRAIN_PER_CLASS} to train on (so a validation split can be stratified). {fix}.")


def check_split(ds: Dataset, val_fraction: float) -> None:
    """Refuse a validation fraction whose stratified split of ``ds``'s training set cannot be made
    (scikit-learn needs 2 training images of each class, and as many validation and remaining
    images as classes)."""
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction={val_fraction:g}: must be above 0 and below 1, e.g. 0.1.")
    k, n = ds.info.num_classes, len(ds.y_train)
    counts = np.bincount(ds.y_train, minlength=k)
    short = np.flatnonzero(counts < 2)
    if short.size:
        name = ds.info.class_names[short[0]]
        raise DataError(f"{ds.info.name}: class '{name}' has {counts[short[0]]} training image(s); a stratified "
                        f"validation split needs at least 2 of each class. Add images of '{name}'.")
    n_val = math.ceil(val_fraction * n)  # as scikit-learn's train_test_split counts them
    if n_val < k:
        lowest = math.ceil(k / n * 1000) / 1000
        raise DataError(f"{ds.info.name}: val_fraction={val_fraction:g} holds out {n_val} of {n} training images "
                        f"for validation, fewer than its {k} classes, so a stratified split cannot give each one. "
                        f"Use val_fraction {lowest:g} or more, or add images.")
    if n - n_val < k:
        highest = math.floor((n - k) / n * 1000) / 1000
        raise DataError(f"{ds.info.name}: val_fraction={val_fraction:g} leaves {n - n_val} of {n} training images "
                        f"to train on, fewer than its {k} classes. Use val_fraction {highest:g} or less.")
