"""Per-sample augmentations of decoded uint8 batches (timm's RandAugment, colour jitter) in a
pool of processes, one batch ahead of the training loop.

Written by hand because no library covers the case: FFCV's decode pipeline is numba code that
cannot call PIL, and torch's DataLoader workers own whole samples, not slices of a batch that
was decoded elsewhere. Batches move through two shared-memory slots (one being augmented while
the loop consumes the other); each worker augments a contiguous slice in place. Every image's
RNGs are seeded from its own seed, as in the main-process path (scalekd.data.on_batch), so the
result is bit-identical to it and to any worker count.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import SpawnContext, SpawnProcess

import numpy as np
import torch

from scalekd.data.on_batch import augment_in_place
from scalekd.data.workers import leave_signals_to_trainer, signals_held

_SLOTS = 2  # one batch in flight while the loop holds the previous one
_worker: dict = {}  # in each worker: its slots and transform


def _attach(slots: torch.Tensor, transform: Callable) -> None:
    leave_signals_to_trainer()
    torch.set_num_threads(1)  # PIL work; torch's threads would only oversubscribe the cores
    _worker.update(slots=slots.numpy(), transform=transform)


def _augment(slot: int, start: int, seeds: Sequence[int]) -> None:
    pixels = _worker["slots"][slot, start:start + len(seeds)]
    augment_in_place(pixels, seeds, _worker["transform"])


class _SignalSafeProcess(SpawnProcess):
    def start(self) -> None:
        with signals_held():  # until the worker ignores them (_attach)
            super().start()


class _SignalSafeSpawn(SpawnContext):
    Process = _SignalSafeProcess


class AugmentPool:
    """`map(batches)` yields the uint8 (N, 3, H, W) batches of `batches` ((images, seeds)
    pairs) with `transform` (PIL -> PIL) applied to each image by `workers` processes.

    A yielded batch is a view of shared memory, valid until the next one is requested: finish
    (normalise, copy to the device) it before asking for the next."""

    def __init__(self, transform: Callable, workers: int, batch_size: int, size: int):
        self.batch_size, self.workers = batch_size, workers
        self.slots = torch.empty((_SLOTS, batch_size, size, size, 3),
                                 dtype=torch.uint8).share_memory_()
        # spawn: the training process runs FFCV's and torch's threads, which fork would copy
        # mid-flight; torch.multiprocessing's pickler (registered by `import torch`) shares
        # the slots' memory with the workers
        self.executor = ProcessPoolExecutor(workers, mp_context=_SignalSafeSpawn(),
                                            initializer=_attach,
                                            initargs=(self.slots, transform))
        weakref.finalize(self, self.executor.shutdown, cancel_futures=True)

    def map(self, batches: Iterable[tuple[torch.Tensor, Sequence[int]]]
            ) -> Iterator[torch.Tensor]:
        pending: list[tuple[int, int, list[Future]]] = []  # (slot, count, its tasks)
        try:
            for i, (images, seeds) in enumerate(batches):
                pending.append(self._submit(i % _SLOTS, images, seeds))
                if len(pending) == _SLOTS:
                    yield self._collect(*pending.pop(0))
            while pending:
                yield self._collect(*pending.pop(0))
        finally:  # left early: no task may still write a slot the next epoch fills
            for _, _, tasks in pending:
                for task in tasks:
                    task.exception()

    def _submit(self, slot: int, images: torch.Tensor, seeds: Sequence[int]
                ) -> tuple[int, int, list[Future]]:
        n = len(images)
        if n > self.batch_size or images.shape[2:] != self.slots.shape[2:4]:
            raise ValueError(f"batch {tuple(images.shape)} does not fit the pool's slots "
                             f"{tuple(self.slots.shape[1:])}")
        self.slots[slot, :n] = images.permute(0, 2, 3, 1)
        bounds = np.linspace(0, n, self.workers + 1).astype(int)
        tasks = [self.executor.submit(_augment, slot, int(a), list(seeds[a:b]))
                 for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        return slot, n, tasks

    def _collect(self, slot: int, n: int, tasks: list[Future]) -> torch.Tensor:
        try:
            for task in tasks:
                task.result()  # re-raises a worker's error here
        except BrokenProcessPool as err:
            raise RuntimeError(
                "an augmentation worker died (data.augment_workers). Spawned workers import "
                "the main script again: if it starts training outside an `if __name__ == "
                "'__main__':` block, add one; or set data.augment_workers=0") from err
        return self.slots[slot, :n].permute(0, 3, 1, 2)  # NCHW view, channels_last as FFCV's
