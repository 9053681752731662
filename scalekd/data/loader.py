"""Loaders for training and evaluation: one augmentation shared by teacher and student."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_transform
from torch.utils.data import DataLoader, Dataset

from scalekd.data.ffcv_source import BetonImages, EvalBatches, TrainBatches
from scalekd.data.on_batch import BatchFinish, seed_all
from scalekd.data.mix_folder import MixedImages, WithMixed
from scalekd.data.sampler import EpochBatches, MixedBatches, loader_generator
from scalekd.data.source import LabelledImages, SkipCounter
from scalekd.data.workers import leave_signals_to_trainer
from scalekd.data.teacher_cache.labels import SoftLabelMixup
from scalekd.data.transforms import train_transform
from scalekd.data.teacher_cache.replay import replay_batches, replay_loader
from scalekd.model_config import data_config
from scalekd.recipe import Recipe, RecipeError, grad_accum_steps, per_process_batch

CPU = torch.device("cpu")


class SeededTransform(Dataset):
    """Applies `transform` to item `index` with every RNG seeded by the item's own seed."""

    def __init__(self, images: LabelledImages, transform: Callable):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = item
        seed_all(seed)
        image, target = self.images[index]
        return self.transform(image), target


@dataclass
class Batch:
    """A micro-batch on the training device, as the teacher and every student see it."""

    images: torch.Tensor
    targets: torch.Tensor  # labels (-1: unlabelled), or soft targets after Mixup/CutMix
    soft: Optional[torch.Tensor] = None  # teacher.mode=cached: the stored teacher's (B, C)


@dataclass
class TrainData:
    # (images, targets) batches; teacher.mode=cached: (images, targets, teacher soft labels)
    loader: Iterable[tuple[torch.Tensor, ...]]
    batches: EpochBatches
    mixup: Optional[Mixup]
    num_classes: int
    steps_per_epoch: int  # optimiser steps
    grad_accum: int
    skipped: Optional[SkipCounter] = None  # data.bad_files=skip: bad files left out so far

    def epoch(self, epoch: int, start_step: int = 0) -> Iterable[tuple[torch.Tensor,
                                                                       torch.Tensor]]:
        """The loader for `epoch`, skipping the micro-batches of `start_step` steps (resume)."""
        self.batches.set_position(epoch, start_step * self.grad_accum)
        return self.loader

    def on_device(self, batch: tuple[torch.Tensor, ...], device: torch.device) -> Batch:
        """A loader's batch on `device`, with the one Mixup/CutMix draw that teacher and
        students share (the cached teacher's soft labels mixed likewise)."""
        images, targets, *soft = batch
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if self.mixup is not None:
            images, targets, *soft = self.mixup(images, targets, *soft)
        return Batch(images, targets, *soft)


def batch_problems(recipe: Recipe, world_size: int) -> list[str]:
    """The global batch split over `world_size` processes and the accumulation."""
    d, accum = recipe.data, grad_accum_steps(recipe, world_size)
    per_step = world_size * max(accum, 1)
    if d.batch_size <= 0 or d.grad_accum <= 0 or d.device_batch < 0:
        return ["data.batch_size and data.grad_accum must be positive, "
                "data.device_batch positive or 0"]
    if d.device_batch and d.grad_accum != 1:
        return [f"data.device_batch={d.device_batch} derives the accumulation; "
                f"drop data.grad_accum={d.grad_accum} (or data.device_batch)"]
    if not accum:
        return [f"no accumulation count splits data.batch_size={d.batch_size} over "
                f"{world_size} process(es) into equal micro-batches of at most "
                f"data.device_batch={d.device_batch}; choose a batch size with more divisors"]
    if d.batch_size % per_step:
        return [f"data.batch_size={d.batch_size} (global) is not divisible by "
                f"{world_size} process(es) x data.grad_accum={d.grad_accum}; choose a multiple "
                f"of {per_step}"]
    if (recipe.aug.mixup > 0 or recipe.aug.cutmix > 0) and (d.batch_size // per_step) % 2:
        return [f"Mixup/CutMix pair images within a batch and need an even per-process batch; "
                f"data.batch_size={d.batch_size} gives {d.batch_size // per_step}"]
    return []


def unlabelled_problems(recipe: Recipe, distils: bool) -> list[str]:
    """data.unlabelled, with a method that has distillation terms (`distils`) or not."""
    d, a, problems = recipe.data, recipe.aug, []
    if d.unlabelled and not d.labels_per_class:
        problems.append("data.unlabelled=true needs data.labels_per_class > 0 (which images "
                        "keep their labels)")
    if d.unlabelled and not distils:
        problems.append(f"data.unlabelled=true: unlabelled images only feed distillation terms, "
                        f"and distill.method={recipe.distill.method!r} has none")
    if (a.mixup > 0 or a.cutmix > 0) and d.unlabelled:
        problems.append("Mixup/CutMix cannot mix labels of unlabelled images: set aug.mixup=0 "
                        "aug.cutmix=0 or data.unlabelled=false")
    return problems


def labels_problems(recipe: Recipe, needs_classes: bool) -> list[str]:
    """data.labels=false: what reads labels or classes cannot run."""
    d, a, r = recipe.data, recipe.aug, recipe
    if d.labels:
        return []
    checks = [
        (not needs_classes,
         f"data.labels=false: the images have no labels, and distill.method="
         f"{r.distill.method!r} as set reads labels or class logits; use distill.method=features"
         ", or distill.method=scalekd with distill.weights.kd=0 and distill.hard_loss=none"),
        (not d.labels_per_class and not d.unlabelled,
         "data.labels=false drops every label: data.labels_per_class and data.unlabelled do not "
         "apply; set them to 0 and false"),
        (a.mixup == 0 and a.cutmix == 0,
         "data.labels=false: Mixup/CutMix mix labels; set aug.mixup=0 aug.cutmix=0"),
        (not r.teacher.probe,
         "data.labels=false: a probed teacher (teacher.probe) predicts classes; give the "
         "encoder alone (teacher.name + teacher.checkpoint)"),
        (not d.mixed, "data.labels=false: data.mixed does not apply (every image is unlabelled)"),
    ]
    return [msg for ok, msg in checks if not ok]


def data_setting_problems(recipe: Recipe) -> list[str]:
    d, a = recipe.data, recipe.aug
    checks = [
        (0 <= a.smoothing < 1, "aug.smoothing must be in [0, 1)"),
        (a.repeated_aug >= 1, "aug.repeated_aug must be >= 1"),
        (d.bad_files in ("error", "skip"), "data.bad_files must be error or skip"),
        (d.augment_workers >= -1, "data.augment_workers must be -1 (data.workers), 0 (the "
         "main process) or a process count"),
        (d.input_size >= 8, f"data.input_size={d.input_size} is too small"),
    ]
    return [msg for ok, msg in checks if not ok]


def train_data_problems(recipe: Recipe) -> list[str]:
    """The loaders' checks of data.* and aug.*, for `recipe.validate`: ranges, and timm's own
    checks of the augmentation (RandAugment string, interpolation) from building it once."""
    d, a = recipe.data, recipe.aug

    def interval(pair) -> bool:
        return (isinstance(pair, tuple) and len(pair) == 2
                and all(isinstance(v, (int, float)) for v in pair) and 0 < pair[0] <= pair[1])

    checks = [
        (d.workers >= 0, f"data.workers={d.workers} must be >= 0 (0: load in the training "
         "process)"),
        (d.eval_batch_size >= 0, f"data.eval_batch_size={d.eval_batch_size} must be >= 0 (0: "
         "the training per-process batch)"),
        (d.labels_per_class >= 0, f"data.labels_per_class={d.labels_per_class} must be >= 0 "
         "(0: every label)"),
        (bool(d.train_split) and bool(d.val_split) and d.train_split != d.val_split,
         f"data.train_split={d.train_split!r} and data.val_split={d.val_split!r} must be two "
         "different splits (evaluating on the training images would hide overfitting)"),
        (interval(a.scale) and a.scale[1] <= 1, f"aug.scale={a.scale} must be (min, max) with "
         "0 < min <= max <= 1 (shares of the image's area)"),
        (interval(a.ratio), f"aug.ratio={a.ratio} must be (min, max) with 0 < min <= max"),
        (0 <= a.hflip <= 1 and 0 <= a.re_prob <= 1,
         "aug.hflip and aug.re_prob are probabilities: in [0, 1]"),
        (a.color_jitter >= 0 and a.mixup >= 0 and a.cutmix >= 0,
         "aug.color_jitter, aug.mixup and aug.cutmix must be >= 0 (0: off)"),
        (0 < a.crop_pct <= 1, f"aug.crop_pct={a.crop_pct} must be in (0, 1]"),
    ]
    problems = [msg for ok, msg in checks if not ok]
    if not problems:
        try:
            train_transform(recipe, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
            create_transform(d.input_size, interpolation=eval_interpolation(a.interpolation, ""))
        except Exception as err:  # timm raises AssertionError, KeyError, ValueError
            problems.append(f"aug.auto_augment={a.auto_augment!r} / aug.interpolation="
                            f"{a.interpolation!r}: timm cannot build it ({err!r})")
    return problems


def build_train_data(recipe: Recipe, images: LabelledImages, mean, std, rank: int,
                     world_size: int, device: torch.device = CPU) -> TrainData:
    """Batches of student-normalised images (on `device` for the ffcv source and
    data.uint8, else on the CPU) and labels, in the order of EpochBatches (MixedBatches with
    data.mixed)."""
    d, a = recipe.data, recipe.aug
    images = (keep_labelled(images, d.labels_per_class, d.unlabelled) if d.labels
              else drop_labels(images))
    batch, accum = per_process_batch(recipe, world_size), grad_accum_steps(recipe, world_size)
    cached = recipe.teacher.mode == "cached"  # replays the crops of a teacher cache
    if d.mixed:  # half of every micro-batch real, half synthetic (label -1)
        mixed = MixedImages(Path(d.mixed))
        batches = MixedBatches(len(images), len(mixed), batch // 2, rank, world_size,
                               recipe.run.seed, repeats=a.repeated_aug, multiple_of=accum)
        images = WithMixed(images, mixed)
    else:
        sampler = partial(replay_batches, recipe) if cached else EpochBatches
        batches = sampler(len(images), batch, rank, world_size, recipe.run.seed,
                          repeats=a.repeated_aug, multiple_of=accum)
    if batches.batches_per_epoch == 0:
        raise ValueError(
            f"{batches.num_samples} training images do not fill one optimiser step of "
            f"data.batch_size={d.batch_size}; lower data.batch_size"
        )
    base = images.base if isinstance(images, _Subset) else images
    rows = images.keep if isinstance(images, _Subset) else range(len(images))  # of `base`
    if isinstance(base, BetonImages):
        loader = TrainBatches(recipe, base, np.asarray(rows), images.targets, batches, mean,
                              std, device)
    elif cached:  # batches of (images, targets, the teacher's soft labels)
        loader = replay_loader(recipe, images, rows, len(base), mean, std, batches, device)
    else:
        # use_prefetcher: timm hands uint8 out, normalisation and erasing left to us
        transform = train_transform(recipe, mean, std, use_prefetcher=d.uint8)
        loader = DataLoader(SeededTransform(images, transform), batch_sampler=batches,
                            num_workers=d.workers, persistent_workers=d.workers > 0,
                            pin_memory=torch.cuda.is_available(),
                            generator=loader_generator(recipe.run.seed),
                            worker_init_fn=leave_signals_to_trainer)
        if d.uint8:
            loader = _Finished(loader, batches, BatchFinish(mean, std, device,
                                                            erase_prob=a.re_prob))
    mixup = None
    if a.mixup > 0 or a.cutmix > 0:
        mixup = (SoftLabelMixup if cached else Mixup)(
            mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, label_smoothing=a.smoothing,
            num_classes=len(images.classes))
    return TrainData(loader, batches, mixup, len(images.classes),
                     batches.batches_per_epoch // accum, accum, images.skipped)


class _Finished:
    """The uint8 batches of `loader`, finished on the batch (on_batch.BatchFinish) with the
    seeds of the samples `batches` put in them."""

    def __init__(self, loader: DataLoader, batches: EpochBatches, finish: BatchFinish):
        self.loader, self.batches, self.finish = loader, batches, finish

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch, (images, targets) in zip(self.batches, self.loader):
            yield self.finish(images, [seed for _, seed in batch]), targets


def build_eval_loader(recipe: Recipe, images: LabelledImages, mean, std, rank: int,
                      world_size: int, input_size: Optional[int] = None,
                      device: torch.device = CPU) -> Iterable[tuple[torch.Tensor,
                                                                    torch.Tensor]]:
    """Each rank gets the same number of batches (ZeRO-3 forwards are collective); padding
    items are marked with target -1 and not counted."""
    d = recipe.data
    batch = d.eval_batch_size or per_process_batch(recipe, world_size)
    if isinstance(images, BetonImages):
        return EvalBatches(recipe, images, mean, std, rank, world_size, batch,
                           input_size or d.input_size, device)
    transform = create_transform(input_size or d.input_size, is_training=False,
                                 interpolation=eval_interpolation(recipe.aug.interpolation,
                                                                  recipe.student.name,
                                                                  recipe.student.kwargs),
                                 mean=mean, std=std,
                                 crop_pct=recipe.aug.crop_pct)
    per_rank = -(-len(images) // world_size)
    indices = list(range(rank, len(images), world_size))
    indices += [-1] * (per_rank - len(indices))
    # persistent workers (as timm's loaders): forked once, at the first evaluation, not at
    # every one; each fork of a process running gloo, OpenMP and loader threads risks a child
    # stuck in os.fork() (seen once in 240 forks of tests/engine/test_stopping.py)
    return DataLoader(_Padded(images, transform, indices), batch_size=batch,
                      num_workers=d.workers, persistent_workers=d.workers > 0, shuffle=False,
                      generator=loader_generator(recipe.run.seed),
                      worker_init_fn=leave_signals_to_trainer)


def eval_interpolation(interpolation: str, student: str,
                       student_kwargs: Optional[dict] = None) -> str:
    """Evaluation resizes with one fixed interpolation: aug.interpolation, or, where that is
    'random' (a draw per training crop, timm train.py's default), the student's own (timm's data
    config of the model: bicubic where its pretrained_cfg names none), as timm's train.py
    evaluates."""
    if interpolation != "random":
        return interpolation
    return data_config(student, student_kwargs)["interpolation"] if student else "bicubic"


class _Padded(Dataset):
    def __init__(self, images: LabelledImages, transform: Callable, indices: list[int]):
        self.images, self.transform, self.indices = images, transform, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        index = self.indices[i]
        image, target = self.images[max(index, 0)]
        return self.transform(image), target if index >= 0 else -1


def keep_labelled(images: LabelledImages, per_class: int,
                  unlabelled: bool = False) -> LabelledImages:
    """Keep `per_class` labels per class, chosen once (seed 0) for every run and seed; the other
    images are dropped, or kept with label -1 (`unlabelled`: a transfer set for distillation)."""
    if not per_class:
        return images
    rng = np.random.default_rng(0)
    targets = np.asarray(images.targets)
    counts = np.bincount(targets[targets >= 0], minlength=len(images.classes))
    if per_class > counts.min():
        raise RecipeError([f"data.labels_per_class={per_class}: class "
                           f"{images.classes[counts.argmin()]!r} has only {counts.min()} training "
                           f"images (the fewest of any class); choose at most {counts.min()}, "
                           "or 0 for every label"])
    labelled = np.sort(np.concatenate([
        rng.permutation(np.flatnonzero(targets == c))[:per_class]
        for c in range(len(images.classes))
    ]))
    if unlabelled:
        relabelled = np.full_like(targets, -1)
        relabelled[labelled] = targets[labelled]
        return _Subset(images, list(range(len(targets))), relabelled.tolist())
    return _Subset(images, labelled.tolist(), targets[labelled].tolist())


def drop_labels(images: LabelledImages) -> LabelledImages:
    """Every image with label -1 and no classes (data.labels=false): the student is built
    without a classifier."""
    subset = _Subset(images, list(range(len(images))), [-1] * len(images))
    subset.classes = []
    return subset


class _Subset(LabelledImages):
    def __init__(self, images: LabelledImages, keep: list[int], targets: list[int]):
        self.base, self.keep = images, keep
        self.classes = images.classes
        self.targets = targets
        self.skipped = images.skipped

    def image(self, index: int):
        return self.base.image(self.keep[index])
