"""The recipe's training augmentation as timm builds it (aug.*), in one place: the loaders apply
it, validation builds it once to let timm check it, and a teacher cache takes it apart to store
and replay its draws."""

from __future__ import annotations

from collections.abc import Sequence

from timm.data import create_transform

from scalekd.recipe import Recipe


def train_transform(recipe: Recipe, mean: Sequence[float], std: Sequence[float], **options):
    """timm's training transform of aug.* at data.input_size, normalising with `mean`/`std`;
    `options` go to timm's create_transform as they are (separate=True, use_prefetcher=True)."""
    d, a = recipe.data, recipe.aug
    return create_transform(
        d.input_size, is_training=True, scale=a.scale, ratio=a.ratio, hflip=a.hflip,
        color_jitter=a.color_jitter, auto_augment=a.auto_augment or None,
        interpolation=a.interpolation, mean=mean, std=std, re_prob=a.re_prob, **options)
