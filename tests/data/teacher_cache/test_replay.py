"""Training on a cache replays, in epoch e, draw (e mod K) of each image: the crop the teacher
saw when the cache was written, pixel for pixel, with the teacher's top-k of that crop."""

import pytest
import torch
import torch.nn.functional as F

from helpers.caches import DRAWS, TOPK, cached
from scalekd.data import SOURCES, build_train_data
from scalekd.data.sampler import EpochBatches
from scalekd.models import create_teacher, data_config
from scalekd.recipe import Recipe, apply_overrides
from scalekd.data.teacher_cache.draws import Augmentation, DrawBatches
from scalekd.data.teacher_cache.replay import ReplayedCrops
from scalekd.data.teacher_cache.store import CacheReader
from scalekd.tools.cache_teacher import DrawnCrops


def setup(tiny_cache, *extra):
    cache, overrides = tiny_cache
    recipe = apply_overrides(Recipe(), [*overrides, *cached(cache), *extra])
    norm = data_config(recipe.student.name)
    images = SOURCES[recipe.data.source].load(recipe.data, recipe.data.train_split)
    return recipe, images, norm["mean"], norm["std"]


def test_replayed_crops_are_the_crops_the_teacher_saw(tiny_cache):
    recipe, images, mean, std = setup(tiny_cache)
    augmentation = Augmentation(recipe, mean, std)
    written = DrawnCrops(images, augmentation, recipe.run.seed)
    replayed = ReplayedCrops(images, range(len(images)), augmentation,
                             CacheReader(recipe.teacher.cache))
    for i in (0, 23, 24, 63):  # both ends of the shards
        crops = [replayed[(i, d)][0] for d in range(DRAWS)]
        for d, crop in enumerate(crops):
            assert torch.equal(crop, written[(i, d)][0]), (i, d)
        assert not torch.equal(crops[0], crops[1])  # K different draws


def teacher_top(recipe, images: torch.Tensor, mean, std):
    with torch.random.fork_rng():
        teacher = create_teacher(recipe.teacher, 10, mean, std, recipe.data.input_size)
    return F.log_softmax(teacher(images).logits, -1).topk(TOPK, -1)


@pytest.mark.parametrize("epoch", [0, 1, 4])
def test_batches_carry_the_teachers_top_k_of_their_crops(tiny_cache, epoch):
    recipe, images, mean, std = setup(tiny_cache)
    data = build_train_data(recipe, images, mean, std, rank=0, world_size=1)
    crops, targets, soft = next(iter(data.epoch(epoch)))
    batch_items = next(iter(data.batches))  # the items of that batch
    assert {draw for _, draw in batch_items} == {epoch % DRAWS}
    assert targets.tolist() == [images.targets[i] for i, _ in batch_items]
    values, classes = teacher_top(recipe, crops, mean, std)  # the teacher, run on the batch
    reader = CacheReader(recipe.teacher.cache)
    stored = [reader.entry(i, d) for i, d in batch_items]
    assert torch.equal(classes, torch.stack([c for _, _, c in stored]).long())
    assert torch.allclose(values, torch.stack([v for _, v, _ in stored]).float(), atol=2e-3)
    assert torch.allclose(soft.gather(1, classes).log(), values, atol=2e-3)
    assert torch.allclose(soft.sum(-1), torch.ones(len(soft)), atol=2e-3)


def test_the_draw_is_a_function_of_epoch_and_position():
    plain = EpochBatches(64, 8, 0, 1, seed=0, repeats=2)
    one = DrawBatches(64, 8, 0, 1, seed=0, repeats=2, draws=3)
    two = [DrawBatches(64, 4, r, 2, seed=0, repeats=2, draws=3) for r in (0, 1)]
    for epoch in range(4):
        for b in [plain, one, *two]:
            b.set_position(epoch)
        items = [x for batch in one for x in batch]
        # the order is the online run's; the repeated copies of an image get draws 2e, 2e+1
        assert [i for i, _ in items] == [i for batch in plain for i, _ in batch]
        assert [d for _, d in items] == [(2 * epoch + p % 2) % 3 for p in range(64)]
        # two processes split the same items (rank r: every 2nd position from r)
        for r, b in enumerate(two):
            assert [x for batch in b for x in batch] == items[r::2]
    one.set_position(4, start_batch=3)  # a resumed epoch continues with the same draws
    resumed = [x for batch in one for x in batch]
    one.set_position(4)
    assert resumed == [x for batch in one for x in batch][3 * 8:]


def test_kept_labels_replay_their_rows_of_the_split(tiny_cache):
    recipe, images, mean, std = setup(tiny_cache, "data.labels_per_class=2",
                                      "data.batch_size=4")
    data = build_train_data(recipe, images, mean, std, rank=0, world_size=1)
    written = DrawnCrops(images, Augmentation(recipe, mean, std), recipe.run.seed)
    kept = data.loader.loader.dataset.rows
    assert len(kept) == 20
    items = next(iter(data.batches))
    crops, targets, _ = next(iter(data.epoch(0)))
    for crop, target, (j, draw) in zip(crops, targets, items):
        assert torch.equal(crop, written[(kept[j], draw)][0])
        assert target == images.targets[kept[j]]


def test_a_cache_of_another_split_is_refused(tiny_cache):
    recipe, _, mean, std = setup(tiny_cache)
    other = SOURCES["synthetic"].load(apply_overrides(recipe, ["data.num_samples=48"]).data,
                                      "train")
    with pytest.raises(ValueError, match="holds 64 images of 10 classes; the training split "
                                         "has 48 of 10"):
        build_train_data(recipe, other, mean, std, rank=0, world_size=1)
