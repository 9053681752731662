"""Training on a cache (teacher.mode=cached): each sample is its image under the stored draw the
epoch assigns it (draws.DrawBatches), with that crop's stored top-k; batches carry the teacher's
dense soft labels (labels.dense_probs) on the device, and no teacher runs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from scalekd.data.sampler import loader_generator
from scalekd.data.source import LabelledImages
from scalekd.data.workers import leave_signals_to_trainer
from scalekd.recipe import Recipe
from scalekd.data.teacher_cache.draws import Augmentation, DrawBatches
from scalekd.data.teacher_cache.labels import dense_probs
from scalekd.data.teacher_cache.store import CacheReader, read_index


class ReplayedCrops(Dataset):
    """Item (i, draw) -> (image i under its stored draw, label, stored log-probs, classes).
    `rows[i]` is item i's image in the training split the cache was written for (a kept subset
    of labels is a subset of its rows)."""

    def __init__(self, images: LabelledImages, rows: Sequence[int], augmentation: Augmentation,
                 reader: CacheReader):
        self.images, self.rows = images, rows
        self.augmentation, self.reader = augmentation, reader

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]):
        index, draw = item
        stored, log_probs, classes = self.reader.entry(self.rows[index], draw)
        image, target = self.images[index]
        return self.augmentation.apply(image, stored.tolist()), target, log_probs, classes


class SoftLabelled:
    """A loader's (images, targets, log-probs, classes) batches as (images, targets, soft
    labels), the dense labels built on `device` from the top-k."""

    def __init__(self, loader: DataLoader, num_classes: int, device: torch.device):
        self.loader, self.num_classes, self.device = loader, num_classes, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for images, targets, log_probs, classes in self.loader:
            probs = dense_probs(log_probs.to(self.device, non_blocking=True),
                                classes.to(self.device, non_blocking=True), self.num_classes)
            yield images, targets, probs


def replay_batches(recipe: Recipe, *args, **kwargs) -> DrawBatches:
    """The sampler of a cached run: EpochBatches' arguments, the cache's number of draws."""
    return DrawBatches(*args, draws=read_index(recipe.teacher.cache)["draws"], **kwargs)


def replay_loader(recipe: Recipe, images: LabelledImages, rows: Sequence[int], split_size: int,
                  mean, std, batches: DrawBatches, device: torch.device) -> SoftLabelled:
    """`images` (of a training split of `split_size` images, `rows` theirs) replayed from the
    cache; a cache written for another split or class count is an error."""
    reader = CacheReader(recipe.teacher.cache)
    cached = reader.index["num_images"], reader.index["num_classes"]
    if cached != (split_size, len(images.classes)):
        raise ValueError(
            f"teacher.cache={recipe.teacher.cache!r} holds {cached[0]} images of {cached[1]} "
            f"classes; the training split has {split_size} of {len(images.classes)}: write the "
            "cache for this data (scalekd cache-teacher with the run's data.* overrides)")
    crops = ReplayedCrops(images, rows, Augmentation(recipe, mean, std), reader)
    workers = recipe.data.workers
    loader = DataLoader(crops, batch_sampler=batches, num_workers=workers,
                        persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
                        generator=loader_generator(recipe.run.seed),
                        worker_init_fn=leave_signals_to_trainer)
    return SoftLabelled(loader, len(images.classes), device)
