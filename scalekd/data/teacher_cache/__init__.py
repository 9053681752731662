"""Cached teacher outputs replayed per crop (FKD, Shen & Xing, ECCV 2022).

`scalekd cache-teacher` (writer.py) runs the teacher once over K augmentation draws of every
training image and stores each draw (draws.py) with the teacher's top-k log-probabilities
(store.py). A run with teacher.mode=cached and teacher.cache=DIR replays, in epoch e, draw
(e mod K) of each image with its stored top-k (replay.py), made into dense soft labels and mixed
by Mixup/CutMix as the images are (labels.py); the teacher is neither built nor run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Optional

from scalekd.data.teacher_cache.draws import augmentation_config
from scalekd.data.teacher_cache.store import read_index
from scalekd.recipe import Recipe

TEACHER_MODES = ("online", "cached")


def replay_problems(recipe: Recipe) -> list[str]:
    """What a cache cannot be written or replayed for, whatever the cache."""
    d, problems = recipe.data, []
    if d.source == "ffcv":
        problems.append("data.source=ffcv cannot use a teacher cache yet: FFCV crops inside "
                        "its decoders, which cannot replay a stored crop; cache and train on "
                        "the imagefolder, fashion_mnist or synthetic source")
    if recipe.aug.interpolation == "random":
        problems.append("aug.interpolation=random is drawn per crop and not stored in a teacher "
                        "cache: choose one, e.g. aug.interpolation=bicubic")
    if recipe.teacher.function_matching:
        problems.append(
            "teacher.function_matching=true cannot use a teacher cache: function matching "
            "trains the student on the teacher's outputs for the very Mixup'd images it sees, "
            "but a cache holds the teacher's outputs on unmixed crops, and a cached run mixes "
            "the two images' outputs, which is not the teacher's output on the mixed image; run "
            "the teacher online (teacher.mode=online, the default), or set "
            "teacher.function_matching=false to distil from mixed cached outputs knowingly")
    return problems


def cache_problems(recipe: Recipe, needs_features: bool, logit_methods: list[str],
                   student_norm: Optional[Callable[[], dict]]) -> list[str]:
    """The checks of teacher.mode / teacher.cache, for `validate`, and what a cache combines
    with: a method that `needs_features` cannot (`logit_methods` can); its augmentation must be
    the run's, whose normalisation is the student's (`student_norm()`: mean and std; None: a
    student timm cannot build, reported by its own check)."""
    t = recipe.teacher
    if t.mode not in TEACHER_MODES:
        return [f"teacher.mode={t.mode!r} must be online or cached"]
    if t.mode == "online":
        return []
    problems = replay_problems(recipe)
    if needs_features:
        problems.append(
            f"distill.method={recipe.distill.method!r} needs the online teacher: it mimics the "
            "teacher's features (and runs its stages), which a teacher cache does not hold, "
            f"only top-k logits; use teacher.mode=online, or a logit method "
            f"({', '.join(logit_methods)}) with the cache")
    if recipe.data.mixed:
        problems.append("data.mixed is not supported with teacher.mode=cached: the cache holds "
                        "the real images' crops only; use teacher.mode=online with it")
    if recipe.data.uint8:
        problems.append("data.uint8=true is not supported with teacher.mode=cached yet: set "
                        "data.uint8=false")
    if not t.cache:
        return problems + ["teacher.mode=cached needs teacher.cache=DIR, a folder written by "
                           "`scalekd cache-teacher --out DIR ...`"]
    index = read_index(Path(t.cache)) if Path(t.cache).is_dir() else None
    if index is None:
        return problems + [f"teacher.cache={t.cache!r} holds no teacher cache (index.json): "
                           f"write it with `scalekd cache-teacher --out {t.cache} ...`"]
    if not index["complete"]:
        problems.append(f"teacher.cache={t.cache!r} is incomplete: run its `scalekd "
                        "cache-teacher` command again to finish it")
    if t.name and t.name != index["teacher"]["name"]:
        problems.append(f"teacher.name={t.name!r}, but teacher.cache={t.cache!r} holds the "
                        f"outputs of {index['teacher']['name']!r}")
    norm = student_norm() if student_norm else None
    ours = augmentation_config(recipe, norm["mean"], norm["std"]) if norm else {}
    differ = [f"{key} {index['augmentation'].get(key)!r} (cache) vs {value!r}"
              for key, value in ours.items() if index["augmentation"].get(key) != value]
    if differ:
        problems.append(f"teacher.cache={t.cache!r} was written under another augmentation, so "
                        "its crops are not this run's: " + "; ".join(differ)
                        + " (the student's normalisation counts: RandAugment fills and random "
                        "erasing use it)")
    return problems
