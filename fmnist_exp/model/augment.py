"""The training-time augmenter: flips, shifts, rotations, zoom and random erasing."""

from __future__ import annotations

import keras
from keras import layers

from ..data import DatasetInfo
from ..params import FitParams


def build_augmenter(p: FitParams, info: DatasetInfo) -> keras.Sequential:
    """Random horizontal flips (only where ``info`` says a mirror image keeps its label), then shifts,
    rotations and zoom of at most ``aug_shift``, ``aug_rotate`` and ``aug_zoom``, then random erasing
    with probability ``aug_erase`` (train-time only; a 0 leaves that transform out). Shifts take the
    nearest pixel, so a shifted image stays as sharp as the test images; rotation and zoom resample
    bilinearly."""
    seed = p.seed
    geometric = [
        layers.RandomTranslation(p.aug_shift, p.aug_shift, fill_mode="constant", interpolation="nearest", seed=seed)
        if p.aug_shift else None,
        layers.RandomRotation(p.aug_rotate, fill_mode="constant", seed=seed) if p.aug_rotate else None,
        layers.RandomZoom(p.aug_zoom, fill_mode="constant", seed=seed) if p.aug_zoom else None,
        # after the geometry, on the image's channels; the tuple fixes the probability at aug_erase
        layers.RandomErasing((p.aug_erase, p.aug_erase), scale=(0.02, 0.25), fill_value=0.0,
                             value_range=(0, 255), seed=seed) if p.aug_erase else None,
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
