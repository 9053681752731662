"""Teacher caches of the tiny runs (helpers.runs): written with the run's own overrides, the way
a user writes the cache of the recipe they train."""

from __future__ import annotations

from pathlib import Path

from helpers.runs import tiny_overrides

# an fp32 teacher (the tests compare its outputs on replayed crops with the stored ones), and
# RandAugment and random erasing, replayed from the stored seeds
CACHE_RUN = ("teacher.dtype=fp32", "aug.auto_augment=rand-m7-mstd0.5", "aug.re_prob=0.25")
DRAWS, TOPK, SHARD = 3, 4, 24  # 64 images: shards of 24, 24 and 16


def cache_run(run_dir, teacher_checkpoint, *extra: str) -> list[str]:
    """The tiny KD run's overrides with an fp32 teacher."""
    return tiny_overrides(run_dir, teacher_checkpoint, *CACHE_RUN, *extra)


def write_cache(out: Path, overrides: list[str], draws: int = DRAWS, k: int = TOPK,
                shard_size: int = SHARD, **kwargs) -> dict:
    """The cache of the recipe `overrides` describe, in this process; its index."""
    from scalekd.recipe import Recipe, apply_overrides
    from scalekd.tools.cache_teacher import cache_teacher

    recipe = apply_overrides(Recipe(), overrides)
    return cache_teacher(recipe, out, draws, k, shard_size, batch_size=32, **kwargs)


def cached(cache: Path) -> list[str]:
    return ["teacher.mode=cached", f"teacher.cache={cache}"]
