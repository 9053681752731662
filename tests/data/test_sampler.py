"""Epoch order: sharded, repeated, seeded per sample, resumable mid-epoch."""

from scalekd.data.sampler import EpochBatches


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
