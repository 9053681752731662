"""Epoch order over processes, with a seed for every sample's augmentation.

torch's DistributedSampler and timm's RepeatAugSampler give each rank its indices, but the
augmentation a sample receives then depends on which worker happened to load it and how many
draws that worker made before. Resuming mid-epoch (or changing the worker count) would change
every later crop. Here each item carries its own seed, derived from (run seed, epoch, position in
the global order), so a sample's augmentation is a pure function of where it stands in the run:
resume is exact, and a 2-process run sees the same crops as a 1-process run of the same global
batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


class EpochBatches:
    """Per-process batches of (dataset index, augmentation seed) pairs for one epoch.

    The global order is a seeded permutation, each index repeated `repeats` times in a row
    (repeated augmentation, as in DeiT and timm's RepeatAugSampler) and cut to the data set's
    length. Micro-batch m covers global positions [m*B*W, (m+1)*B*W); rank r takes every W-th
    position from r, so the copies of a repeated image land on different ranks.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int, world_size: int,
                 seed: int, repeats: int = 1, multiple_of: int = 1):
        self.num_samples, self.batch_size = num_samples, batch_size
        full = num_samples // (batch_size * world_size)
        self.batches_per_epoch = full - full % multiple_of  # whole optimiser steps only
        self.rank, self.world_size = rank, world_size
        self.seed, self.repeats = seed, repeats
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        """The epoch to iterate next, and how many of its micro-batches to skip (resume)."""
        self.epoch, self.start = epoch, start_batch

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.global_order(self.epoch)
        span = self.batch_size * self.world_size
        for m in range(self.start, self.start + len(self)):
            positions = range(m * span + self.rank, (m + 1) * span, self.world_size)
            yield [self.item(order, p) for p in positions]

    def item(self, order: np.ndarray, position: int) -> tuple[int, int]:
        """The sample at global `position` of this epoch: (dataset index, augmentation seed)."""
        return int(order[position]), sample_seed(self.seed, self.epoch, position)

    def global_order(self, epoch: int) -> np.ndarray:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        perm = torch.randperm(self.num_samples, generator=g).numpy()
        return np.repeat(perm, self.repeats)[: self.num_samples]


class MixedBatches(EpochBatches):
    """EpochBatches over real images with as many synthetic ones (data.mixed) beside them:
    every per-process micro-batch is `batch_size` real items (EpochBatches' order over indices
    [0, num_real)) followed by `batch_size` synthetic ones (indices num_real + [0,
    num_synthetic)), so real and synthetic images are sampled 1:1 in every batch, as the
    task-specific distillation paper samples them "with equal frequency". An epoch is still
    one pass over the real images. The synthetic items form one stream over the whole run,
    cut in seeded permutations of the synthetic set (each synthetic image once per cycle);
    like the real order, position q of the stream and its augmentation seed are functions of
    (seed, q) alone, so resuming mid-epoch continues the same stream.
    """

    def __init__(self, num_real: int, num_synthetic: int, batch_size: int, rank: int,
                 world_size: int, seed: int, repeats: int = 1, multiple_of: int = 1):
        super().__init__(num_real, batch_size, rank, world_size, seed, repeats, multiple_of)
        self.num_synthetic = num_synthetic

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        span = self.batch_size * self.world_size
        cycles: dict[int, np.ndarray] = {}
        for m, real in zip(range(self.start, self.batches_per_epoch), super().__iter__()):
            first = (self.epoch * self.batches_per_epoch + m) * span
            synthetic = []
            for q in range(first + self.rank, first + span, self.world_size):
                cycle, at = divmod(q, self.num_synthetic)
                if cycle not in cycles:
                    g = torch.Generator().manual_seed(sample_seed(self.seed, cycle, 0, SHUFFLE))
                    cycles[cycle] = torch.randperm(self.num_synthetic, generator=g).numpy()
                synthetic.append((self.num_samples + int(cycles[cycle][at]),
                                  sample_seed(self.seed, 0, q, SYNTHETIC)))
            yield real + synthetic


SYNTHETIC, SHUFFLE = 1, 2  # seed streams of MixedBatches, apart from the real images' (0)


def loader_generator(seed: int) -> torch.Generator:
    """A DataLoader's own generator. Each DataLoader iterator draws its workers' base seed when
    it is created, by default from the global torch RNG: the stream the student's dropout and
    drop path draw from, restored on resume. A resumed job creates its iterator at another step
    than the uninterrupted run, so that draw would shift the student's stream. The samples are
    seeded one by one (sample_seed), so this seed reaches nothing else."""
    return torch.Generator().manual_seed(seed)


def sample_seed(seed: int, epoch: int, position: int, stream: int = 0) -> int:
    key = [seed, epoch, position] + ([stream] if stream else [])
    return int(np.random.SeedSequence(key).generate_state(1)[0])
