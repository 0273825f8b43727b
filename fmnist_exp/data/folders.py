"""Folders as datasets: a folder's optional ``dataset.yaml`` (:func:`read_spec`), and a folder of
class-named subfolders of PNG/JPEG images read the way Keras' ``image_dataset_from_directory`` and
torchvision's ``ImageFolder`` read it (:func:`read_image_folder`): ``DIR/<class>/*.png``, or
``DIR/train/<class>/...`` beside ``DIR/test/<class>/...`` for a fixed test set; classes are the
subfolder names, sorted, unless dataset.yaml lists them.

:func:`decode_image` is the one way an image file becomes pixels, here and in the served
classifier, so a served PNG is read exactly as the training images were. Plain PIL and numpy.
"""

from __future__ import annotations

import io
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from .dataset import DataError
from .files import label_dtype

SPEC_FILE = "dataset.yaml"
SPEC_KEYS = ("name", "classes", "image_size", "channels", "flips", "test_fraction")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Folder names that mean a split, not a class: a folder of class folders with one of them (but not
# train/ and test/ together) is refused rather than read as a class called "val".
SPLIT_NAMES = ("train", "test", "val", "valid", "validation")
GREY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"}
WIDE_GREYS = {"I", "I;16", "I;16B", "I;16L", "I;16N"}  # 16-bit greys: PIL's convert("L") clips them to white
EXIF_ORIENTATION, TURNED = 0x0112, (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class DatasetSpec:
    """A folder's dataset.yaml, checked; ``None``: not given."""

    name: str | None = None
    classes: tuple[str, ...] | None = None
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    flips: bool | None = None
    test_fraction: float | None = None


def slug(text: str) -> str:
    """A dataset name from a file or folder name: lowercase, runs of anything but a-z0-9 as "-"."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "dataset"


# ----------------------------------------------------------------------------- dataset.yaml


def read_spec(directory: Path) -> DatasetSpec:
    """``directory/dataset.yaml``, checked key by key; an empty spec where there is none."""
    import yaml

    path = directory / SPEC_FILE
    if not path.is_file():
        return DatasetSpec()
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid YAML ({e}). Fix it; a valid one reads e.g. `classes: [cat, dog]`.") from e
    if not isinstance(raw, dict):
        raise DataError(f"{path}: holds {type(raw).__name__ if raw is not None else 'nothing'}, not a mapping of "
                        f"keys to values. Write one key per line, e.g. `classes: [cat, dog]` "
                        f"(known keys: {', '.join(SPEC_KEYS)}).")
    unknown = sorted(str(k) for k in raw if k not in SPEC_KEYS)
    if unknown:
        raise DataError(f"{path}: unknown key(s) {', '.join(unknown)}. The known keys are {', '.join(SPEC_KEYS)}.")
    checked: dict[str, Any] = {key: _CHECKS[key](value, path) for key, value in raw.items()}
    return DatasetSpec(**checked)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # YAML's yes/no/true are bools, never sizes


def _name(v: Any, path: Path) -> str:
    """The dataset's name, as a folder's name becomes one (lowercase, a-z0-9 and "-"): it names the
    registered model (<name>-classifier) and the runs' dataset inputs. Fashion-MNIST's is its own."""
    if not isinstance(v, str) or not v.strip():
        raise DataError(f"{path}: name must be a non-empty string, e.g. `name: flowers`; got {v!r}.")
    name = slug(v)
    if name == "fashion-mnist":
        raise DataError(f"{path}: name: {v} is Fashion-MNIST's own, which these files are not (their digest differs); "
                        "give them a name of their own.")
    return name


def _classes(v: Any, path: Path) -> tuple[str, ...]:
    if (not isinstance(v, list) or len(v) < 2
            or not all((isinstance(c, str) and c.strip()) or _is_int(c) for c in v)):
        raise DataError(f"{path}: classes must be a list of at least two class names (folder names, or the names "
                        f"of labels 0, 1, ... in order), e.g. `classes: [cat, dog]`; got {v!r}. "
                        "Quote names YAML reads otherwise, e.g. \"yes\", \"no\", \"1.5\".")
    names = tuple(str(c).strip() for c in v)
    twice = sorted(n for n, count in Counter(names).items() if count > 1)
    if twice:
        raise DataError(f"{path}: classes lists {', '.join(repr(n) for n in twice)} more than once; "
                        "give each class once.")
    return names


def _image_size(v: Any, path: Path) -> tuple[int, int]:
    size = [v, v] if _is_int(v) else v
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(s) and s > 0 for s in size)):
        raise DataError(f"{path}: image_size must be [height, width] or one number for a square, "
                        f"e.g. `image_size: [32, 32]`; got {v!r}.")
    return int(size[0]), int(size[1])


def _channels(v: Any, path: Path) -> int:
    if not _is_int(v) or v not in (1, 3):
        raise DataError(f"{path}: channels must be 1 (grayscale) or 3 (colour); got {v!r}.")
    return int(v)


def _flips(v: Any, path: Path) -> bool:
    if not isinstance(v, bool):
        raise DataError(f"{path}: flips must be true or false (whether a mirror image keeps its label); got {v!r}.")
    return v


def _test_fraction(v: Any, path: Path) -> float:
    if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 0.5):
        raise DataError(f"{path}: test_fraction must be a number above 0 and at most 0.5, "
                        f"e.g. `test_fraction: 0.2`; got {v!r}.")
    return float(v)


_CHECKS: dict[str, Any] = {"name": _name, "classes": _classes, "image_size": _image_size, "channels": _channels,
           "flips": _flips, "test_fraction": _test_fraction}


# ----------------------------------------------------------------------------- decoding


def decode_image(source: str | os.PathLike | IO[bytes] | bytes, shape: tuple[int, int, int], name: str) -> np.ndarray:
    """One PNG/JPEG file as uint8 pixels of ``shape`` (height, width, channels): (H, W) for one
    channel, (H, W, 3) for three. EXIF rotation applied, converted to grayscale or RGB (alpha
    dropped, 16-bit greys scaled to 8 bits), stretched to the size (Lanczos) where it differs.
    An unreadable or truncated file is a DataError naming ``name``."""
    from PIL import Image, ImageOps

    h, w, c = shape
    if c not in (1, 3):
        raise ValueError(f"decode_image: {c} channels; images are read as 1 (grayscale) or 3 (RGB)")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as opened:
            opened.load()  # decode it all now, so a truncated file is refused here, not read half grey
            im = _convert(ImageOps.exif_transpose(opened), c)
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.LANCZOS)  # a plain stretch, as Keras' loader does
            return np.array(im, dtype=np.uint8)
    except (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError) as e:
        # OSError covers UnidentifiedImageError and "image file is truncated"; PIL's decoders raise the others
        raise DataError(f"{name}: not a readable PNG/JPEG image ({e}). Re-save it as PNG or JPEG, or remove it.") from e


def _convert(im, channels: int):
    from PIL import Image

    if im.mode in WIDE_GREYS:  # keep the top 8 of 16 bits, as the file meant them
        wide = np.clip(np.asarray(im, dtype=np.int64), 0, 65535)
        im = Image.fromarray((wide >> 8).astype(np.uint8), "L")
    target = "L" if channels == 1 else "RGB"
    return im if im.mode == target else im.convert(target)


def _probe(path: Path) -> tuple[bool, tuple[int, int]]:
    """Whether a file is grayscale, and its (height, width) once turned upright; from its header only."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            grey = im.mode in GREY_MODES or (im.mode in ("P", "PA") and _grey_palette(im))
            w, h = im.size
            if im.getexif().get(EXIF_ORIENTATION) in TURNED:
                w, h = h, w
            return grey, (h, w)
    except (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable PNG/JPEG image ({e}). Re-save it as PNG or JPEG, or remove it.") from e


def _grey_palette(im) -> bool:
    rgb = np.asarray(im.getpalette("RGB") or [], dtype=np.int64).reshape(-1, 3)
    return bool((rgb == rgb[:, :1]).all())


# ----------------------------------------------------------------------------- image folders


@dataclass(frozen=True)
class FolderImages:
    """An image folder's pixels and labels by part ("all", or "train" and "test"), canonical order."""

    parts: dict[str, tuple[np.ndarray, np.ndarray]]
    class_names: tuple[str, ...]
    shape: tuple[int, int, int]
    notes: tuple[str, ...]


def read_image_folder(directory: Path, spec: DatasetSpec) -> FolderImages:
    """Every PNG/JPEG under ``directory``'s class folders, decoded to one shape (see module doc)."""
    layout = _layout(directory, spec)
    classes = _part_classes(layout, spec)
    listing = {part: [(f, i) for i, c in enumerate(classes) for f in _images(folder / c)]
               for part, folder in layout.items()}
    every = [f for files in listing.values() for f, _ in files]
    if not every:
        raise DataError(f"{directory}: no PNG/JPEG images in its class folders ({', '.join(classes)}). Put each "
                        f"class's images ({', '.join(IMAGE_SUFFIXES)}) in {directory}/<class>/.")
    probes = [_probe(f) for f in every]
    channels = spec.channels or (1 if all(grey for grey, _ in probes) else 3)
    size = spec.image_size or Counter(s for _, s in probes).most_common(1)[0][0]
    shape = (size[0], size[1], channels)
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for part, files in listing.items():
        x = np.empty((len(files), *(size if channels == 1 else shape)), dtype=np.uint8)
        for j, (f, _) in enumerate(files):
            x[j] = decode_image(f, shape, str(f))
        parts[part] = (x, np.array([i for _, i in files], dtype=label_dtype(len(classes))))
    return FolderImages(parts, tuple(classes), shape, _notes(probes, shape))


def _notes(probes: list[tuple[bool, tuple[int, int]]], shape: tuple[int, int, int]) -> tuple[str, ...]:
    h, w, c = shape
    total, notes = len(probes), []
    resized = sum(s != (h, w) for _, s in probes)
    if resized:
        notes.append(f"{resized} of {total} images resized to {h}x{w}")
    greys = sum(grey for grey, _ in probes)
    if c == 3 and greys:
        notes.append(f"{greys} of {total} images were grayscale, converted to RGB")
    if c == 1 and greys < total:
        notes.append(f"{total - greys} of {total} colour images converted to grayscale")
    return tuple(notes)


def _subfolders(directory: Path) -> list[str]:
    return sorted(d.name for d in directory.iterdir() if d.is_dir() and not d.name.startswith("."))


def _layout(directory: Path, spec: DatasetSpec) -> dict[str, Path]:
    """{"all": DIR} for a folder of class folders; {"train": DIR/train, "test": DIR/test} for a fixed test set."""
    found = _subfolders(directory)
    listed = set(spec.classes or ())
    if {"train", "test"} <= set(found) - listed:
        others = [f for f in found if f not in ("train", "test")]
        if others:
            raise DataError(f"{directory}: holds train/ and test/ (a fixed test set) and also "
                            f"{', '.join(o + '/' for o in others)}; only train/ and test/ are read. Move those "
                            "images into train/ (each run splits its validation set off train/) or elsewhere.")
        if spec.test_fraction is not None:
            raise DataError(f"{directory / SPEC_FILE}: test_fraction is given, but test/ is the test set, so "
                            "nothing is held out. Remove test_fraction, or move test/'s images into train/.")
        return {"train": directory / "train", "test": directory / "test"}
    split_like = [f for f in found if f in SPLIT_NAMES and f not in listed]
    if split_like:
        raise DataError(f"{directory}: holds {', '.join(s + '/' for s in split_like)} but not both train/ and "
                        "test/. A fixed test set is DIR/train/<class>/ beside DIR/test/<class>/ (each run splits "
                        "its validation set off train/); a folder of class folders is DIR/<class>/, and a class "
                        f"named {split_like[0]} must be listed in {SPEC_FILE}'s classes.")
    if not found:
        raise DataError(f"{directory}: no class folders (and no IDX or CSV files). A folder dataset holds one "
                        "folder of PNG/JPEG images per class, DIR/<class>/*.png, or DIR/train/<class>/ beside "
                        "DIR/test/<class>/.")
    return {"all": directory}


def _part_classes(layout: dict[str, Path], spec: DatasetSpec) -> list[str]:
    """The class names, in label order, checked against every part's folders."""
    per_part = {part: _classes_of(folder, spec) for part, folder in layout.items()}
    if "train" in per_part and per_part["train"] != per_part["test"]:
        train, test = set(per_part["train"]), set(per_part["test"])
        raise DataError(f"{layout['train'].parent}: train/ and test/ hold different class folders (only in "
                        f"train/: {sorted(train - test) or 'none'}; only in test/: {sorted(test - train) or 'none'}). "
                        "Give both the same class folders.")
    return next(iter(per_part.values()))


def _classes_of(folder: Path, spec: DatasetSpec) -> list[str]:
    found = _subfolders(folder)
    if spec.classes is None:
        return found
    missing = [c for c in spec.classes if c not in found]
    if missing:
        raise DataError(f"{folder}: {SPEC_FILE} lists class {missing[0]!r}, but there is no folder {missing[0]}/ "
                        f"here (found: {', '.join(found) or 'none'}). Add it with its images, or remove it "
                        "from classes.")
    extra = [f for f in found if f not in spec.classes]
    if extra:
        raise DataError(f"{folder / extra[0]}: a folder that is not among {SPEC_FILE}'s classes "
                        f"({', '.join(spec.classes)}). Add {extra[0]!r} to classes, or move the folder out.")
    return list(spec.classes)


def _images(folder: Path) -> list[Path]:
    """A class folder's PNG/JPEG files (subfolders included, hidden ones not), sorted by relative path."""
    found = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root, n) for n in names if not n.startswith(".") and n.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())
