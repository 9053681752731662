"""What runs in the main process on a whole batch of uint8 crops (the ffcv source, and the
imagefolder source with data.uint8=true): the per-sample augmentations the decoder could not
apply, normalisation to the student's mean/std on the device, random erasing.

Per-sample randomness is seeded by the sample's position in the run (scalekd.data.sampler), as
in the loader workers, so RandAugment and random erasing repeat exactly on resume. The global
RNGs are seeded per sample and restored after each batch: the trainer's own draws (Mixup) do
not depend on how many samples were augmented here.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Iterator, Optional

import numpy as np
import torch
from PIL import Image
from timm.data.random_erasing import RandomErasing


def seed_all(seed: int) -> None:
    random.seed(seed)  # timm's and torchvision's transforms draw from these three
    np.random.seed(seed)
    # torch's CPU generator alone: torch.manual_seed also queues a seed for every CUDA device,
    # recording a stack trace each time where CUDA is not initialised (loader workers), about
    # 1 ms a sample, more than a small crop costs. The CPU stream it gives is the same.
    torch.random.default_generator.manual_seed(seed)


@contextmanager
def rng_restored() -> Iterator[None]:
    state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])


def augment_in_place(pixels: np.ndarray, seeds: Sequence[int], transform: Callable) -> None:
    """Apply `transform` (PIL -> PIL) to each uint8 HWC image of `pixels`, its RNGs seeded by
    its seed; the global RNGs are left as found."""
    with rng_restored():
        for i, seed in enumerate(seeds):
            seed_all(seed)
            pixels[i] = np.asarray(transform(Image.fromarray(pixels[i])))


class BatchFinish:
    """uint8 (N, 3, H, W) batch + the samples' seeds -> normalised float batch on `device`.

    `per_sample` (PIL -> PIL, e.g. timm's RandAugment) runs on each image before normalising;
    random erasing (`erase_prob`: aug.re_prob, timm's) on each normalised image, from its own seed stream."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device,
                 per_sample: Optional[Callable] = None, erase_prob: float = 0.0):
        self.device = device
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.per_sample = per_sample
        self.erase = (RandomErasing(erase_prob, mode="const", device=str(device))
                      if erase_prob > 0 else None)

    def __call__(self, images: torch.Tensor, seeds: Optional[Sequence[int]] = None
                 ) -> torch.Tensor:
        if self.per_sample is not None or self.erase is not None:
            assert seeds is not None and len(seeds) == len(images), "one seed per image"
        if self.per_sample is not None:
            # an NHWC view of the same memory
            augment_in_place(images.permute(0, 2, 3, 1).numpy(), seeds, self.per_sample)
        # FFCV's buffers are pinned when CUDA is there; a slot is rewritten only batches later
        x = images.to(self.device, non_blocking=True).float().sub_(self.mean).div_(self.std)
        if self.erase is not None:
            with rng_restored():
                for i, seed in enumerate(seeds):
                    seed_all((seed + 1) % 2**32)  # not the stream RandAugment drew from
                    x[i] = self.erase(x[i])
        return x
