"""The training-time augmenter: flips, shifts, rotations and zoom."""

from __future__ import annotations

import keras
from keras import layers

from ..data import DatasetInfo
from ..params import FitParams


def build_augmenter(p: FitParams, info: DatasetInfo) -> keras.Sequential:
    """Random horizontal flips (only where ``info`` says a mirror image keeps its label), then shifts,
    rotations and zoom of at most ``aug_shift``, ``aug_rotate`` and ``aug_zoom`` (train-time only; a 0
    leaves that transform out). Shifts take the
    nearest pixel and fill with the background, so a shift is a whole number of pixels (a padded random
    crop: ``aug_shift`` = (k + 0.5) / side moves by -k..k pixels, each as often); rotation and zoom
    resample bilinearly."""
    seed = p.seed
    geometric = [
        layers.RandomTranslation(p.aug_shift, p.aug_shift, fill_mode="constant", interpolation="nearest", seed=seed)
        if p.aug_shift else None,
        layers.RandomRotation(p.aug_rotate, fill_mode="constant", seed=seed) if p.aug_rotate else None,
        layers.RandomZoom(p.aug_zoom, fill_mode="constant", seed=seed) if p.aug_zoom else None,
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
