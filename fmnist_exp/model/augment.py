"""The training-time augmenter: flips, shifts, rotations, zoom and random erasing."""

from __future__ import annotations

import keras
from keras import layers

from ..data import DatasetInfo
from ..params import FitParams

# Random erasing as Zhong et al. (2017) publish it and train Fashion-MNIST with it: a rectangle of 2-40% of
# the image, aspect ratio (height / width) 0.3-3.3, filled with random values ("RE-R"; their Algorithm 1).
# Keras' RandomErasing draws each side's share separately (2-25% of the area here), so it cannot say that.
PUBLISHED_AREA = (0.02, 0.4)
PUBLISHED_ASPECT = (0.3, 1 / 0.3)
ATTEMPTS = 10  # boxes drawn per image; the first that fits inside the image is erased (the paper tries up to 100)


class PublishedErasing(layers.RandomErasing):
    """With probability ``factor``, one rectangle of ``area`` (a share of the image) and height/width ratio
    in ``aspect`` (both drawn uniformly), at a random position where it fits whole, takes uniform random
    values in ``value_range``. An image none of whose ``ATTEMPTS`` boxes fit is left as it is (under 0.1%
    of them on a square image with the published ranges)."""

    def __init__(self, factor: float, area=PUBLISHED_AREA, aspect=PUBLISHED_ASPECT, **kwargs):
        super().__init__((factor, factor), fill_value=None, **kwargs)
        self.area, self.aspect = tuple(area), tuple(aspect)

    def get_random_transformation(self, data, training=True, seed=None):
        if not training:
            return None
        images = data["images"] if isinstance(data, dict) else data
        b, ops = self.backend, self.backend.numpy
        shape = b.shape(images)
        n = shape[0]
        height, width = b.cast(shape[self.height_axis], "float32"), b.cast(shape[self.width_axis], "float32")
        seed = seed or self._get_seed_generator(b._backend)

        def uniform(size, low=0.0, high=1.0):
            return b.random.uniform(size, minval=low, maxval=high, dtype="float32", seed=seed)

        area = uniform((n, ATTEMPTS), *self.area) * height * width
        aspect = uniform((n, ATTEMPTS), *self.aspect)
        h, w = ops.round(ops.sqrt(area * aspect)), ops.round(ops.sqrt(area / aspect))
        fits = (h < height) & (w < width)
        first = ops.argmax(b.cast(fits, "int32"), axis=1)  # the first box that fits (0 where none does)

        def pick(v):
            return ops.take_along_axis(v, first[:, None], axis=1)[:, 0]

        h, w = pick(h), pick(w)
        y0 = ops.floor(uniform((n,)) * (height - h + 1))
        x0 = ops.floor(uniform((n,)) * (width - w + 1))
        apply = (uniform((n,)) < self.factor[1]) & ops.any(fits, axis=1)
        return {"apply_erasing": apply,
                "batch_masks": self._generate_batch_mask(shape, (x0, x0 + w, y0, y0 + h)),
                "fill_value": uniform(shape, *self.value_range)}

    def get_config(self):
        config = super().get_config()
        config.pop("factor"), config.pop("fill_value")
        return {**config, "factor": self.factor[1], "area": self.area, "aspect": self.aspect}


def eraser(p: FitParams) -> layers.Layer | None:
    """Random erasing with probability ``aug_erase`` (None: off), of ``aug_erase_shape``'s kind."""
    if not p.aug_erase:
        return None
    if p.aug_erase_shape == "published":
        return PublishedErasing(p.aug_erase, value_range=(0, 255), seed=p.seed)
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
