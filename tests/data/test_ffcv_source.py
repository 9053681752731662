"""The ffcv source on real JPEG files: .beton files written with `scalekd make-beton`, read
back sharded over 2 ranks, repeated, resumed, evaluated, and trained on end to end.

The images are numbered (helpers.images.numbered_tree): each one's grey level says which file
it is, so every delivered crop can be traced to its file and checked against its label.
FFCV compiles its pipeline on a loader's first epoch (~5-10 s): the loaders are built once."""

from collections import Counter

import pytest

from helpers.images import index_of, jpeg_tree, need_ffcv, numbered_tree

need_ffcv()

import torch  # noqa: E402

from scalekd.cli import main  # noqa: E402
from scalekd.data import SOURCES, build_eval_loader, build_train_data  # noqa: E402
from scalekd.recipe import Recipe, apply_overrides  # noqa: E402

PER_CLASS = 12  # 4 classes: 48 training images; 3 per class for validation
NORM = ((0.5,) * 3, (0.5,) * 3)
pytestmark = [
    pytest.mark.timeout(300),  # an error inside FFCV's pipeline hangs instead of raising
    # numba's dispatcher finalizers raise KeyError when FFCV's compiled code is collected
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


def recipe(path, *extra):
    return apply_overrides(Recipe(), [
        "data.source=ffcv", f"data.path={path}", "data.batch_size=8", "data.input_size=32",
        "data.workers=2", "aug.repeated_aug=3", *extra])


@pytest.fixture(scope="module")
def betons(tmp_path_factory):
    root = tmp_path_factory.mktemp("ffcv")
    numbered_tree(root / "tree", {"train": PER_CLASS, "val": 3})
    main(["make-beton", "--out", str(root / "beton"), f"data.path={root / 'tree'}",
          "--write-mode", "jpg", "--workers", "2"])
    return root / "beton"


@pytest.fixture(scope="module")
def ranks(betons):
    """The training data of ranks 0 and 1 of 2 (global batch 8: 4 per rank, 6 batches)."""
    r = recipe(betons)
    assert SOURCES["ffcv"].check(r.data) == []
    images = SOURCES["ffcv"].load(r.data, "train")
    return r, images, [build_train_data(r, images, *NORM, rank, 2) for rank in (0, 1)]


def delivered(data, epoch, start_step=0):
    """(file indices read back from the pixels, labels) of each batch of an epoch."""
    return [(index_of(x), y.tolist()) for x, y in data.epoch(epoch, start_step)]


def test_batches_are_normalised_and_labelled_by_their_files(ranks):
    r, images, (rank0, _) = ranks
    assert images.classes == ["c0", "c1", "c2", "c3"] and len(images) == 4 * PER_CLASS
    batches = list(rank0.epoch(0))
    assert len(batches) == rank0.steps_per_epoch == 6
    for x, y in batches:
        assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
        assert -1 <= x.min() and x.max() <= 1  # normalised with mean = std = 0.5
        assert y.tolist() == [i // PER_CLASS for i in index_of(x)]  # the file's own class


def test_two_ranks_share_the_order_and_repeats_land_on_both(ranks):
    _, _, (rank0, rank1) = ranks
    for epoch in (0, 1):
        got = [delivered(d, epoch) for d in (rank0, rank1)]
        order = rank0.batches.global_order(epoch)
        for m, ((i0, _), (i1, _)) in enumerate(zip(*got)):
            span = order[m * 8:(m + 1) * 8].tolist()  # rank r: every 2nd position from r
            assert i0 == span[0::2] and i1 == span[1::2]
        seen = [Counter(i for indices, _ in g for i in indices) for g in got]
        repeated = [i for i, n in (seen[0] + seen[1]).items() if n > 1]
        assert repeated and all(seen[0][i] and seen[1][i] for i in repeated)


def test_resume_mid_epoch_continues_the_order(ranks):
    _, _, (rank0, _) = ranks
    full = delivered(rank0, 2)
    assert delivered(rank0, 2, start_step=2) == full[2:]
    assert delivered(rank0, 3) != full  # a new order every epoch


def test_the_trainers_thread_count_and_rng_are_left_alone(ranks):
    import numpy as np

    _, _, (rank0, _) = ranks
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # FFCV sets its own worker count (2) when an epoch starts
    try:
        np.random.seed(0)
        expected = np.random.rand()
        np.random.seed(0)
        for b, _ in enumerate(rank0.epoch(4)):
            if b == 1:
                break  # and leaving an epoch early stops FFCV's thread
        assert torch.get_num_threads() == 1 and np.random.rand() == expected
    finally:
        torch.set_num_threads(threads)


def test_randaugment_is_applied_after_decoding(betons, ranks):
    from timm.data.auto_augment import RandAugment

    assert ranks[2][0].loader.pool is None  # nothing to do per image without it
    assert ranks[2][0].loader.finish.per_sample is None
    r = recipe(betons, "aug.auto_augment=rand-m7-mstd0.5", "data.augment_workers=0")
    data = build_train_data(r, SOURCES["ffcv"].load(r.data, "train"), *NORM, 0, 1)
    ops = data.loader.finish.per_sample.transforms
    assert [type(op) for op in ops] == [RandAugment]
    assert ops[0].num_layers == 2 and ops[0].ops[0].magnitude == 7
    assert ops[0].ops[0].magnitude_std == 0.5


def test_augment_processes_deliver_the_main_process_batches(betons):
    """RandAugment in 2 processes a batch ahead = in the main process, image for image (a
    crop of the whole square image and no flip make FFCV's decoding deterministic)."""
    fixed = ("aug.auto_augment=rand-m7-mstd0.5", "aug.scale=(1.0,1.0)", "aug.ratio=(1.0,1.0)",
             "aug.hflip=0")
    epochs = {}
    for workers in (0, 2):
        r = recipe(betons, *fixed, f"data.augment_workers={workers}")
        data = build_train_data(r, SOURCES["ffcv"].load(r.data, "train"), *NORM, 0, 1)
        assert (data.loader.pool is None) == (workers == 0)
        epochs[workers] = list(data.epoch(1)) + list(data.epoch(2, 3))  # and resumed mid-epoch
    assert len(epochs[0]) == len(epochs[2]) == 6 + 3  # 48 images, batches of 8
    for (x0, y0), (x2, y2) in zip(epochs[0], epochs[2]):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)


def test_resume_replays_randaugment_and_random_erasing(betons):
    """docs/data.md: on resume RandAugment and random erasing are bit-identical (a crop of the whole
    square image and no flip make FFCV's own decoding deterministic)."""
    r = recipe(betons, "aug.auto_augment=rand-m7-mstd0.5", "aug.re_prob=0.5",
               "aug.scale=(1.0,1.0)", "aug.ratio=(1.0,1.0)", "aug.hflip=0",
               "data.augment_workers=0")
    images = SOURCES["ffcv"].load(r.data, "train")
    plain = build_train_data(r, images, *NORM, 0, 1)
    whole = [(x.clone(), y) for x, y in plain.epoch(2)]
    resumed = list(build_train_data(r, images, *NORM, 0, 1).epoch(2, 3))
    assert len(resumed) == len(whole) - 3
    for (a, ya), (b, yb) in zip(whole[3:], resumed):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_labelled_subsets_read_their_own_rows(betons):
    r = recipe(betons, "data.labels_per_class=2", "data.unlabelled=true")
    train = build_train_data(r, SOURCES["ffcv"].load(r.data, "train"), *NORM, 0, 1).loader
    assert train.rows.tolist() == list(range(4 * PER_CLASS))  # every image, 8 with labels
    assert (train.targets >= 0).sum() == 8 and set(train.targets.tolist()) == {-1, 0, 1, 2, 3}
    r = recipe(betons, "data.labels_per_class=2", "data.batch_size=4")
    train = build_train_data(r, SOURCES["ffcv"].load(r.data, "train"), *NORM, 0, 1).loader
    assert len(train.rows) == 8 and train.targets.tolist() == [i // PER_CLASS for i in train.rows]


def test_evaluation_shards_are_padded_and_labelled(betons):
    r = recipe(betons, "aug.crop_pct=1.0")
    val = SOURCES["ffcv"].load(r.data, "val")
    # 12 images over 5 ranks: rank 4 holds images 4 and 9, then one padding item (-1)
    batches = list(build_eval_loader(r, val, *NORM, rank=4, world_size=5))
    images = torch.cat([x for x, _ in batches])
    targets = torch.cat([y for _, y in batches]).tolist()
    assert index_of(images)[:2] == [4, 9] and targets == [4 // 3, 9 // 3, -1]


def test_val_classes_must_match_train(betons, tmp_path):
    import json
    import shutil

    for name in ("train.beton", "train.json", "val.beton"):
        shutil.copy(betons / name, tmp_path / name)
    meta = json.loads((betons / "val.json").read_text())
    meta["classes"] = ["c0", "c1", "c3", "c4"]
    (tmp_path / "val.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"missing from val: \['c2'\]"):
        SOURCES["ffcv"].load(recipe(tmp_path).data, "val")


def test_missing_beton_is_named_with_the_command(tmp_path):
    problems = SOURCES["ffcv"].check(recipe(tmp_path).data)
    assert any("train.beton" in p and "scalekd make-beton" in p for p in problems)


def test_trains_from_a_beton_end_to_end(tmp_path, tiny_run):
    from helpers.runs import train_in_process

    jpeg_tree(tmp_path / "tree", {"train": 8, "val": 2})  # 10 classes
    main(["make-beton", "--out", str(tmp_path / "beton"), f"data.path={tmp_path / 'tree'}",
          "--max-side", "36"])
    result = train_in_process(tiny_run(
        tmp_path / "run", "data.source=ffcv", f"data.path={tmp_path / 'beton'}",
        "data.workers=2", "run.max_steps=2", "aug.auto_augment=rand-m7-mstd0.5",
        "aug.mixup=0.2", "aug.cutmix=1.0"))
    assert result.steps == 2 and 0 <= result.metrics["eval/top1"] <= 100


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_train_from_a_beton(tmp_path, tiny_run):
    """2 DDP processes over gloo, each with its own FFCV loader on the same file (os_cache),
    repeated augmentation across them; the run ends, evaluates and exits cleanly."""
    from helpers.runs import launch_command, run, scalars

    jpeg_tree(tmp_path / "tree", {"train": 8, "val": 2})  # 10 classes
    main(["make-beton", "--out", str(tmp_path / "beton"), f"data.path={tmp_path / 'tree'}",
          "--max-side", "36"])
    overrides = tiny_run(tmp_path / "run", "data.source=ffcv", f"data.path={tmp_path / 'beton'}",
                         "data.workers=1", "aug.repeated_aug=3", "run.max_steps=3",
                         "run.log_every=1", "aug.auto_augment=rand-m7-mstd0.5")
    run(launch_command(overrides, deepspeed=False), tmp_path / "log", timeout=600)
    assert sorted(scalars(tmp_path / "run")["loss/total"]) == [1, 2, 3]
    assert (tmp_path / "run" / "metrics.json").is_file()
