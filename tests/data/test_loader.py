"""Training data: labelled subsets, transfer sets, augmentation tied to position."""

import numpy as np
import pytest
import torch

from scalekd.data import SOURCES, build_train_data
from scalekd.recipe import Recipe, RecipeError, apply_overrides

NORM = ((0.5,) * 3, (0.5,) * 3)


def synthetic(*overrides):
    r = apply_overrides(Recipe(), ["data.source=synthetic", "data.num_samples=200",
                                   "data.batch_size=10", "data.input_size=16",
                                   "data.workers=0", *overrides])
    return r, SOURCES["synthetic"].load(r.data, "train")


def test_labels_per_class_is_balanced_and_fixed():
    r, images = synthetic("data.labels_per_class=5")
    a = build_train_data(r, images, *NORM, 0, 1)
    b = build_train_data(r, images, *NORM, 0, 1)
    labels = torch.cat([y for _, y in a.epoch(0)])
    assert np.bincount(labels.numpy()).tolist() == [5] * 10
    assert a.loader.dataset.images.keep == b.loader.dataset.images.keep


def test_more_labels_per_class_than_a_class_has_is_refused():
    """200 synthetic images are 20 a class: 21 would silently use all of them."""
    r, images = synthetic("data.labels_per_class=21")
    with pytest.raises(RecipeError, match=r"data.labels_per_class=21: class 'class\d' has only "
                                          r"20 training images .* choose at most 20"):
        build_train_data(r, images, *NORM, 0, 1)


def test_augmentation_is_a_function_of_position():
    """Same crops whether resumed mid-epoch or not, with any number of loader workers."""
    r, images = synthetic("data.workers=2", "aug.auto_augment=rand-m7-mstd0.5")
    full = [x for x, _ in build_train_data(r, images, *NORM, 0, 1).epoch(3)]
    r0, _ = synthetic("aug.auto_augment=rand-m7-mstd0.5")
    resumed = [x for x, _ in build_train_data(r0, images, *NORM, 0, 1).epoch(3, start_step=2)]
    assert len(resumed) == len(full) - 2
    assert all(torch.equal(a, b) for a, b in zip(full[2:], resumed))


def test_transfer_set_keeps_every_image_with_the_same_labels_kept():
    r, images = synthetic("data.labels_per_class=5", "data.unlabelled=true")
    kept = build_train_data(r, images, *NORM, 0, 1).loader.dataset.images
    subset = build_train_data(synthetic("data.labels_per_class=5")[0], images, *NORM, 0, 1)
    targets = np.asarray(kept.targets)
    assert len(targets) == 200 and (targets >= 0).sum() == 50
    labelled = np.flatnonzero(targets >= 0).tolist()
    assert labelled == subset.loader.dataset.images.keep
    assert all(targets[i] == images.targets[i] for i in labelled)


def test_uint8_batches_match_the_float_path():
    """data.uint8=true: the same crops and RandAugment, normalised on the batch instead."""
    aug = ("aug.auto_augment=rand-m7-mstd0.5", "data.batch_size=20")
    r, images = synthetic(*aug)
    floats = list(build_train_data(r, images, *NORM, 0, 1).epoch(1, start_step=3))
    r8, _ = synthetic(*aug, "data.uint8=true")
    uint8 = list(build_train_data(r8, images, *NORM, 0, 1).epoch(1, start_step=3))
    assert len(uint8) == len(floats) == 7
    for (a, ya), (b, yb) in zip(floats, uint8):
        assert b.dtype == torch.float32 and torch.allclose(a, b, atol=1e-5)
        assert torch.equal(ya, yb)


def test_random_interpolation_evaluates_with_the_students_own():
    """aug.interpolation=random (timm train.py's default) draws per training crop; evaluation
    resizes with the student's pretrained_cfg interpolation (bilinear for VGG, bicubic for
    most), as timm's train.py does, instead of failing on 'random'."""
    from scalekd.data import build_eval_loader
    from scalekd.data.loader import eval_interpolation

    r, images = synthetic("aug.interpolation=random", "student.name=vgg11")
    assert eval_interpolation("random", "vgg11") == "bilinear"
    assert eval_interpolation("random", "resnet18") == "bicubic"
    assert eval_interpolation("nearest", "vgg11") == "nearest"
    val = SOURCES["synthetic"].load(r.data, "val")
    x, y = next(iter(build_eval_loader(r, val, *NORM, 0, 1)))
    assert x.shape[-2:] == (16, 16) and len(y) == 10
    assert next(iter(build_train_data(r, images, *NORM, 0, 1).epoch(0)))[0].shape[-1] == 16


def test_a_bad_interpolation_is_refused_before_any_compute():
    import pytest

    from scalekd.engine.validation import validate
    from scalekd.recipe import RecipeError

    r, _ = synthetic("aug.interpolation=bicubical", "distill.method=supervised")
    with pytest.raises(RecipeError, match="aug.interpolation='bicubical': timm cannot build"):
        validate(r)
    validate(apply_overrides(r, ["aug.interpolation=random"]))


def test_uint8_random_erasing_is_applied_per_sample_and_resumes_identically():
    """data.uint8=true erases on the batch (scalekd.data.on_batch): erased regions appear, and
    a resumed epoch erases the same pixels as the whole epoch."""
    r, images = synthetic("data.uint8=true", "aug.re_prob=1.0", "data.batch_size=20")
    whole = list(build_train_data(r, images, *NORM, 0, 1).epoch(1))
    resumed = list(build_train_data(r, images, *NORM, 0, 1).epoch(1, start_step=3))
    assert len(resumed) == len(whole) - 3
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(whole[3:], resumed))
    r0, _ = synthetic("data.uint8=true", "data.batch_size=20")
    plain = list(build_train_data(r0, images, *NORM, 0, 1).epoch(1))
    for (erased, _), (unerased, _) in zip(whole, plain):
        changed = (erased != unerased).any(dim=1)  # per pixel
        assert changed.flatten(1).any(dim=1).all()  # every image has an erased region
        assert not changed.flatten(1).all(dim=1).any()  # but not the whole image
