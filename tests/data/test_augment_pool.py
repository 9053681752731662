"""Per-sample augmentation in worker processes: the same pixels as in the main process for any
worker count, a batch ahead, through shared memory; errors surface in the training process."""

import subprocess
import time

import pytest
import torch
from timm.data.auto_augment import rand_augment_transform

from scalekd.data.augment_pool import AugmentPool
from scalekd.data.on_batch import augment_in_place

RA = rand_augment_transform("rand-m7-mstd0.5", {"translate_const": 14})
SIZE, BATCH = 24, 5


def batches(count=4, last=3):
    """`count` uint8 NCHW batches (the last one short) with one seed per image."""
    g = torch.Generator().manual_seed(0)
    sizes = [BATCH] * (count - 1) + [last]
    return [(torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=g, dtype=torch.uint8),
             list(range(100 * b, 100 * b + n))) for b, n in enumerate(sizes)]


def in_main_process(images, seeds):
    pixels = images.permute(0, 2, 3, 1).numpy().copy()
    augment_in_place(pixels, seeds, RA)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2)


@pytest.fixture(scope="module", params=[1, 2])
def pool(request):
    return AugmentPool(RA, request.param, BATCH, SIZE)


def test_pool_output_is_the_main_process_output(pool):
    data = batches()
    got = [x.clone() for x in pool.map(data)]  # a view is valid until the next batch: copy
    assert [len(x) for x in got] == [BATCH] * 3 + [3]
    for x, (images, seeds) in zip(got, data):
        expected = in_main_process(images, seeds)
        assert torch.equal(x, expected)
        assert not torch.equal(x, images)  # RandAugment did change the images


def test_a_loop_left_early_leaves_the_pool_usable(pool):
    data = batches()
    stream = pool.map(data)
    next(stream)  # the second batch is in flight now
    stream.close()
    again = [x.clone() for x in pool.map(data[2:])]
    assert all(torch.equal(x, in_main_process(*b)) for x, b in zip(again, data[2:]))


def fails(image):
    raise RuntimeError("bad transform")


def test_a_worker_error_is_raised_in_the_loop():
    pool = AugmentPool(fails, 1, BATCH, SIZE)
    with pytest.raises(RuntimeError, match="bad transform"):
        list(pool.map(batches(2)))


def test_a_batch_larger_than_the_slots_is_refused(pool):
    images = torch.zeros((BATCH + 1, 3, SIZE, SIZE), dtype=torch.uint8)
    with pytest.raises(ValueError, match="does not fit"):
        list(pool.map([(images, list(range(BATCH + 1)))]))


def test_workers_leave_stop_signals_to_the_trainer():
    """SIGTERM or SIGUSR1 sent to the whole process group (Slurm, systemd, `kill -- -PGID`)
    reaches the pool's workers: they ignore it (the trainer checkpoints and shuts them down)."""
    pool = AugmentPool(RA, 2, BATCH, SIZE)
    data = batches()
    assert len([x.clone() for x in pool.map(data)]) == len(data)  # the workers are up
    for pid in pool.executor._processes:  # sent by another process, as a group kill is (a
        for sig in ("TERM", "USR1", "INT"):  # SIGTERM from the parent ends a worker on purpose)
            subprocess.run(["kill", "-s", sig, str(pid)], check=True)
    time.sleep(0.5)  # a killed worker would be noticed by the pool meanwhile
    again = [x.clone() for x in pool.map(data)]
    assert all(torch.equal(x, in_main_process(*b)) for x, b in zip(again, data))
