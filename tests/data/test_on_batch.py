"""Augmentation on a uint8 batch in the main process: seeded per sample, RNGs left as found."""

import random

import numpy as np
import pytest
import torch
from timm.data.auto_augment import rand_augment_transform

from scalekd.data.on_batch import BatchFinish

RA = rand_augment_transform("rand-m7-mstd0.5", {"translate_const": 14})


def batch():
    return torch.randint(0, 256, (6, 3, 32, 32), generator=torch.Generator().manual_seed(0),
                         dtype=torch.uint8).contiguous(memory_format=torch.channels_last)


def test_normalises_to_the_mean_and_std():
    x = BatchFinish((0.5, 0.25, 0.0), (0.5, 0.25, 1.0), torch.device("cpu"))(batch())
    ref = batch().float() / 255
    ref = (ref - torch.tensor([0.5, 0.25, 0.0]).view(3, 1, 1)) / torch.tensor(
        [0.5, 0.25, 1.0]).view(3, 1, 1)
    assert x.dtype == torch.float32 and torch.allclose(x, ref, atol=1e-5)


def test_randaugment_and_erasing_are_per_sample_and_seeded():
    finish = BatchFinish((0.5,) * 3, (0.5,) * 3, torch.device("cpu"), RA, erase_prob=0.5)
    plain = BatchFinish((0.5,) * 3, (0.5,) * 3, torch.device("cpu"))(batch())
    seeds = [11, 12, 13, 14, 15, 16]
    a, b = finish(batch(), seeds), finish(batch(), seeds)
    assert torch.equal(a, b)  # a function of the seeds
    changed = [not torch.equal(a[i], plain[i]) for i in range(6)]
    assert sum(changed) >= 4  # RandAugment (2 ops at p=0.5) and erasing touch most images
    c = finish(batch(), [s + 100 for s in seeds])
    assert not torch.equal(a, c)


def test_the_global_rngs_are_left_as_found():
    finish = BatchFinish((0.5,) * 3, (0.5,) * 3, torch.device("cpu"), RA, erase_prob=0.5)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = random.random(), np.random.rand(), torch.rand(1).item()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    finish(batch(), list(range(6)))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_per_sample_seeds_give_torch_manual_seeds_streams_without_touching_cuda(monkeypatch):
    """Loader workers seed every sample: torch's CPU generator gives the stream
    torch.manual_seed gives (so caches and resumed runs see the same crops), without the
    lazy CUDA seeding (a stack trace per call) torch.manual_seed queues."""
    from scalekd.data.on_batch import seed_all

    torch.manual_seed(7)
    want = torch.rand(5), torch.randint(0, 100, (5,))
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: pytest.fail("CUDA seeded"))
    seed_all(7)
    got = torch.rand(5), torch.randint(0, 100, (5,))
    assert all(torch.equal(a, b) for a, b in zip(got, want))
