"""Stored augmentation draws: the random-resized crop and the flip of a training image, drawn
once when the cache is written, then replayed exactly in every epoch that uses that draw.

A draw is six int32 (`FIELDS`): the crop box in the source image (top, left, height, width), the
flip, and the seed of everything drawn after the crop (timm's RandAugment or colour jitter, and
random erasing). Crop and flip come from timm's own transforms (its RandomResizedCrop's
`get_params`), seeded per (image, draw) from the cache's seed as the sampler seeds samples; the
rest of the image path is timm's training transform, split where timm splits it for mixing
datasets (`create_transform(separate=True)`), run with every RNG seeded by the stored seed. The
cache writer and the training loader both go through `Augmentation.apply`, so the pixels a
student trains on are the pixels the teacher saw.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms

from scalekd.data.on_batch import seed_all
from scalekd.data.sampler import EpochBatches
from scalekd.data.transforms import train_transform
from scalekd.recipe import Recipe

FIELDS = ("top", "left", "height", "width", "flip", "seed")


def draw_seeds(seed: int, draw: int, index: int) -> tuple[int, int]:
    """(crop-and-flip seed, seed of the rest) of draw `draw` of image `index`: two independent
    streams, the second kept to 31 bits so that a draw fits int32."""
    crop, rest = np.random.SeedSequence([seed, draw, index]).generate_state(2)
    return int(crop), int(rest) >> 1


def augmentation_config(recipe: Recipe, mean: Sequence[float], std: Sequence[float]) -> dict:
    """What the stored draws and the images replayed from them depend on; a training run must
    match the cache's (the mean is RandAugment's fill colour and, normalised, random erasing's)."""
    d, a = recipe.data, recipe.aug
    return {"input_size": d.input_size, "scale": list(a.scale), "ratio": list(a.ratio),
            "hflip": a.hflip, "color_jitter": a.color_jitter, "auto_augment": a.auto_augment,
            "re_prob": a.re_prob, "interpolation": a.interpolation,
            "mean": [float(m) for m in mean], "std": [float(s) for s in std]}


class Augmentation:
    """The recipe's training augmentation with the crop and flip taken out: `draw` makes a
    draw for an image, `apply` replays one (a float tensor normalised with `mean`/`std`)."""

    def __init__(self, recipe: Recipe, mean: Sequence[float], std: Sequence[float]):
        primary, secondary, final = train_transform(recipe, mean, std, separate=True)
        self.crop = primary.transforms[0]  # timm's RandomResizedCropAndInterpolation
        self.hflip = recipe.aug.hflip
        self.rest = transforms.Compose([secondary, final])

    def draw(self, image: Image.Image, seed: int, index: int, draw: int) -> list[int]:
        crop_seed, rest_seed = draw_seeds(seed, draw, index)
        seed_all(crop_seed)
        top, left, height, width = self.crop.get_params(image, self.crop.scale, self.crop.ratio)
        flip = int(torch.rand(1).item() < self.hflip)  # as torchvision's RandomHorizontalFlip
        return [top, left, height, width, flip, rest_seed]

    def apply(self, image: Image.Image, draw: Sequence[int]) -> torch.Tensor:
        top, left, height, width, flip, seed = (int(v) for v in draw)
        x = TF.resized_crop(image, top, left, height, width, self.crop.size,
                            self.crop.interpolation)
        if flip:
            x = TF.hflip(x)
        seed_all(seed)
        return self.rest(x)


class DrawBatches(EpochBatches):
    """The sampler's batches with each item's draw instead of its seed: (dataset index, draw).

    Epoch e replays draw (e * repeats + copy) mod K, where copy is which of the `repeats`
    consecutive copies of an image (repeated augmentation) a position holds: a pure function of
    the epoch and the position, so a resumed run, or one on another process count, replays the
    same draws; the copies of a repeated image get different draws when K allows."""

    def __init__(self, *args, draws: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.draws = draws

    def item(self, order: np.ndarray, position: int) -> tuple[int, int]:
        return int(order[position]), (self.epoch * self.repeats
                                      + position % self.repeats) % self.draws
