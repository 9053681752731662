"""Epoch order: sharded, repeated, seeded per sample, resumable mid-epoch."""

from scalekd.data.sampler import EpochBatches, MixedBatches


def batches(n, batch, rank, world, **kw):
    return EpochBatches(n, batch, rank, world, seed=3, **kw)


def test_two_ranks_cover_what_one_rank_sees_per_step():
    one = list(batches(64, 8, 0, 1))
    two = list(zip(batches(64, 4, 0, 2), batches(64, 4, 1, 2)))
    assert len(one) == len(two) == 8
    for single, (r0, r1) in zip(one, two):
        assert sorted(single) == sorted(r0 + r1)  # same images and the same seeds


def test_every_image_once_per_epoch_and_new_order_next_epoch():
    b = batches(60, 6, 0, 1)
    first = [i for batch in b for i, _ in batch]
    assert sorted(first) == list(range(60))
    b.set_position(1)
    assert [i for batch in b for i, _ in batch] != first


def test_repeats_go_to_different_ranks_with_different_seeds():
    r0, r1 = batches(64, 8, 0, 2, repeats=2), batches(64, 8, 1, 2, repeats=2)
    for a, b in zip(r0, r1):
        assert [i for i, _ in a] == [i for i, _ in b]
        assert all(sa != sb for (_, sa), (_, sb) in zip(a, b))


def test_resume_mid_epoch_continues_the_same_stream():
    full = batches(64, 4, 0, 1)
    full.set_position(2)
    rest = batches(64, 4, 0, 1)
    rest.set_position(2, start_batch=5)
    assert list(rest) == list(full)[5:]
    assert len(rest) == 11


def test_only_whole_optimiser_steps():
    assert len(batches(70, 4, 0, 1, multiple_of=4)) == 16  # 17 micro-batches -> 4 steps of 4


def mixed(rank=0, world=1, **kw):
    return MixedBatches(40, 30, 4, rank, world, seed=3, **kw)


def test_real_and_synthetic_one_to_one_in_every_batch():
    b = mixed()
    epoch = list(b)
    assert len(epoch) == 10  # one pass over the 40 real images, 4 of them a micro-batch
    for batch in epoch:
        assert len(batch) == 8
        assert all(i < 40 for i, _ in batch[:4]) and all(40 <= i < 70 for i, _ in batch[4:])
    real = [i for batch in epoch for i, _ in batch[:4]]
    assert sorted(real) == list(range(40))  # the real order is EpochBatches' own
    assert real == [i for batch in batches(40, 4, 0, 1) for i, _ in batch]
    seeds = [s for batch in epoch for _, s in batch]
    assert len(set(seeds)) == len(seeds)


def test_synthetic_images_each_once_per_cycle_across_epochs_and_ranks():
    stream = []
    for epoch in range(3):  # 3 epochs x 40 synthetic draws = 4 cycles of the 30 images
        per_rank = []
        for rank in (0, 1):
            b = MixedBatches(40, 30, 2, rank, 2, seed=3)
            b.set_position(epoch)
            per_rank.append([[i - 40 for i, _ in batch[2:]] for batch in b])
        for r0, r1 in zip(*per_rank):  # global position q goes to rank q % 2
            stream += [x for pair in zip(r0, r1) for x in pair]
    assert len(stream) == 120
    for cycle in range(4):
        assert sorted(stream[30 * cycle:30 * (cycle + 1)]) == list(range(30))
    assert stream[:30] != stream[30:60]


def test_mixed_resume_mid_epoch_continues_the_same_stream():
    full = mixed()
    full.set_position(2)
    rest = mixed()
    rest.set_position(2, start_batch=3)
    assert list(rest) == list(full)[3:]
    assert len(rest) == 7
