"""`scalekd cache-teacher`: run the teacher once over K stored augmentation draws of every
training image and keep its top-k, so that long schedules replay those crops instead of paying
the teacher's forward every epoch (FKD, Shen & Xing, ECCV 2022).

The work is cut into shards of `shard_size` images; under `accelerate launch` process r writes
shards r, r + W, ...; a shard already on disk is skipped, so running the same command again
resumes. The index is written first (not yet complete) and marked complete once every shard is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from scalekd.data.classes import load_split
from scalekd.data.source import LabelledImages
from scalekd.data.teacher_cache import replay_problems
from scalekd.data.teacher_cache.draws import Augmentation, augmentation_config
from scalekd.data.teacher_cache.store import (FORMAT, class_dtype, read_index, shard_name,
                                              size_estimate, write_index, write_shard)
from scalekd.engine.logging import RunLog
from scalekd.engine.validation import validate
from scalekd.models import data_config
from scalekd.models.teacher import recipe_teacher, teacher_input_size
from scalekd.recipe import Recipe, RecipeError

CPU = torch.device("cpu")


class DrawnCrops(Dataset):
    """Item (i, draw) -> (image i under a new draw, the draw as int32 (6,))."""

    def __init__(self, images: LabelledImages, augmentation: Augmentation, seed: int):
        self.images, self.augmentation, self.seed = images, augmentation, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, draw = item
        image, _ = self.images[index]
        stored = self.augmentation.draw(image, self.seed, index, draw)
        return self.augmentation.apply(image, stored), torch.tensor(stored, dtype=torch.int32)


def writer_problems(recipe: Recipe) -> list[str]:
    """What stops `recipe`'s teacher cache from being written (checked before any compute)."""
    # the recipe as an online run: the teacher, its weights and the data are checked
    online = dataclasses.replace(recipe, students={},
                                 teacher=dataclasses.replace(recipe.teacher, mode="online"))
    try:
        validate(online)
        problems = []
    except RecipeError as err:
        problems = err.problems
    if not recipe.teacher.name:
        problems.append("a teacher cache needs a teacher: set teacher.name=<timm model> and "
                        "teacher.checkpoint=FILE")
    return problems + replay_problems(recipe)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def new_index(recipe: Recipe, num_images: int, num_classes: int, draws: int, k: int,
              shard_size: int, mean, std) -> dict[str, Any]:
    t = recipe.teacher
    shards = -(-num_images // shard_size)
    return {
        "format": FORMAT,
        "teacher": {"name": t.name, "checkpoint": t.checkpoint,
                    "sha256": file_sha256(t.checkpoint) if t.checkpoint else "",
                    "pretrained": t.pretrained, "kwargs": t.kwargs,
                    "input_size": teacher_input_size(t, recipe.data.input_size), "dtype": t.dtype},
        "k": k, "draws": draws, "num_images": num_images, "num_classes": num_classes,
        "seed": recipe.run.seed, "augmentation": augmentation_config(recipe, mean, std),
        "shard_size": shard_size, "shards": [shard_name(s) for s in range(shards)],
        "complete": False,
    }


def cache_teacher(recipe: Recipe, out: Path, draws: int, k: int, shard_size: int = 10_000,
                  batch_size: int = 64, rank: int = 0, world_size: int = 1,
                  device: torch.device = CPU, barrier: Callable[[], None] = lambda: None
                  ) -> dict[str, Any]:
    """Write (or finish writing) the cache of `recipe`'s teacher on its training split to
    `out`; returns the index. A folder holding a cache of another configuration is an error."""

    out = Path(out)
    images = load_split(recipe.data, recipe.data.train_split)  # data.classes as training sees it
    norm = data_config(recipe.student.name, recipe.student.kwargs)
    num_classes = len(images.classes)
    if not 1 <= k <= num_classes or draws < 1 or shard_size < 1:
        raise ValueError(f"--topk must lie in [1, {num_classes}] (the classes), --draws and "
                         f"--shard-size must be positive; got {k}, {draws}, {shard_size}")
    index = new_index(recipe, len(images), num_classes, draws, k, shard_size, norm["mean"],
                      norm["std"])
    previous = read_index(out)
    if previous is not None:
        differ = sorted(key for key in index if key != "complete"
                        and previous.get(key) != index[key])
        if differ:
            raise ValueError(f"{out} holds a teacher cache of another configuration (its "
                             f"{', '.join(differ)} differ): write to another folder, or delete "
                             "this one")
        index["complete"] = previous["complete"]
    main = rank == 0
    out.mkdir(parents=True, exist_ok=True)  # every rank writes its shards here
    if main:
        write_index(out, index)

    shards = [(s, s * shard_size, min((s + 1) * shard_size, len(images)))
              for s in range(len(index["shards"])) if s % world_size == rank]
    todo = [s for s in shards if not (out / shard_name(s[0])).is_file()]
    batches, owner = [], []
    for shard, start, end in todo:
        items = [(i, d) for i in range(start, end) for d in range(draws)]
        for b in range(0, len(items), batch_size):
            batches.append(items[b:b + batch_size])
            owner.append(shard)
    if main:
        print(f"teacher cache {out}: {size_estimate(len(images), draws, k, num_classes)}",
              flush=True)
    if len(todo) < len(shards):
        print(f"rank {rank}: {len(shards) - len(todo)} finished shard(s) skipped", flush=True)
    log = RunLog(out / "tb", len(batches), 0, main)

    if todo:
        with torch.random.fork_rng():  # the teacher's (discarded) init draws no global RNG
            teacher = recipe_teacher(recipe, num_classes).to(device)
        crops = DrawnCrops(images, Augmentation(recipe, norm["mean"], norm["std"]),
                           recipe.run.seed)
        loader = DataLoader(crops, batch_sampler=batches, num_workers=recipe.data.workers)
        parts: list[tuple[torch.Tensor, ...]] = []
        started = time.perf_counter()
        for b, (pixels, stored) in enumerate(loader):
            log_probs = F.log_softmax(teacher(pixels.to(device)).logits, dim=-1)
            top, classes = log_probs.topk(k, dim=-1)  # sorted, largest first
            parts.append((stored, top.cpu(), classes.cpu().to(class_dtype(num_classes))))
            log.advance({"shard": str(owner[b])})
            if b + 1 == len(batches) or owner[b + 1] != owner[b]:
                shard, start, end = next(s for s in todo if s[0] == owner[b])
                write_shard(out, shard, start, *(torch.cat(p).view(end - start, draws, -1)
                                                 for p in zip(*parts)))
                parts = []
                log.scalars(b + 1, {"throughput/images_per_s": (b + 1) * batch_size
                                    / (time.perf_counter() - started)})
    log.close()
    barrier()
    if main and all((out / name).is_file() for name in index["shards"]):
        index["complete"] = True
        write_index(out, index)
    return index
