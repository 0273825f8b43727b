"""The training-time augmenter: flips, shifts, rotations, zoom and random erasing."""

from __future__ import annotations

import keras
from keras import layers

from ..data import DatasetInfo
from ..params import FitParams


def eraser(p: FitParams) -> layers.Layer | None:
    """Random erasing with probability ``aug_erase`` (None: off)."""
    if not p.aug_erase:
        return None
    # the tuple fixes the probability at aug_erase; erased to the background (0)
    return layers.RandomErasing((p.aug_erase, p.aug_erase), scale=(0.02, 0.25), fill_value=0.0,
                                value_range=(0, 255), seed=p.seed)


def build_augmenter(p: FitParams, info: DatasetInfo) -> keras.Sequential:
    """Random horizontal flips (only where ``info`` says a mirror image keeps its label), then shifts,
    rotations and zoom of at most ``aug_shift``, ``aug_rotate`` and ``aug_zoom``, then random erasing
    with probability ``aug_erase`` (train-time only; a 0 leaves that transform out). Shifts take the
    nearest pixel and fill with the background, so a shift is a whole number of pixels (a padded random
    crop: ``aug_shift`` = (k + 0.5) / side moves by -k..k pixels, each as often); rotation and zoom
    resample bilinearly."""
    seed = p.seed
    geometric = [
        layers.RandomTranslation(p.aug_shift, p.aug_shift, fill_mode="constant", interpolation="nearest", seed=seed)
        if p.aug_shift else None,
        layers.RandomRotation(p.aug_rotate, fill_mode="constant", seed=seed) if p.aug_rotate else None,
        layers.RandomZoom(p.aug_zoom, fill_mode="constant", seed=seed) if p.aug_zoom else None,
        eraser(p),  # after the geometry, on the image's channels
    ]
    return keras.Sequential(
        [
            layers.Reshape(info.shape),
            *([layers.RandomFlip("horizontal", seed=seed)] if info.flips else []),
            *[layer for layer in geometric if layer is not None],
            layers.Reshape(info.array_shape),
        ],
        name="augment",
    )
