"""Bad data in an image-folder tree, made on purpose: each case is an error naming the file or
folder, or with data.bad_files=skip left out, warned about and counted; labels never shift."""

import shutil

import pytest

from helpers.images import index_of, numbered_tree
from scalekd.data import SOURCES, build_train_data
from scalekd.data.imagefolder import ImageFolderSource
from scalekd.data.source import UnreadableImage
from scalekd.recipe import DataCfg, Recipe, apply_overrides

NORM = ((0.5,) * 3, (0.5,) * 3)


@pytest.fixture
def tree(tmp_path):
    """3 classes of 4 numbered JPEGs in train/ and val/ (helpers.images.numbered_tree)."""
    return numbered_tree(tmp_path / "tree", {"train": 4, "val": 4}, classes=3)


def cfg(tree, bad_files="error"):
    return DataCfg(source="imagefolder", path=str(tree), bad_files=bad_files)


def corrupt(path):
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG" * 10)


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_empty_class_folder_is_named_even_when_skipping(tree):
    shutil.rmtree(tree / "train" / "c1")
    (tree / "train" / "c1").mkdir()
    for mode in ("error", "skip"):
        with pytest.raises(ValueError, match=r"hold no image: .*train/c1;.*shift the labels"):
            SOURCES["imagefolder"].load(cfg(tree, mode), "train")


def test_non_image_file_is_named_or_left_out_and_counted(tree):
    (tree / "train" / "c0" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"not images \(.*c0/notes.txt\).*data.bad_files=skip"):
        SOURCES["imagefolder"].load(cfg(tree), "train")
    with pytest.warns(UserWarning, match="left out 1 non-image file"):
        images = SOURCES["imagefolder"].load(cfg(tree, "skip"), "train")
    assert len(images) == 12 and images.skipped.count == 1
    assert images.targets == [0] * 4 + [1] * 4 + [2] * 4


def test_class_missing_from_validation_is_named(tree):
    shutil.rmtree(tree / "val" / "c2")
    with pytest.raises(ValueError, match=r"missing from val: \['c2'\]"):
        SOURCES["imagefolder"].load(cfg(tree, "skip"), "val")


@pytest.mark.parametrize("damage", [corrupt, truncate])
def test_unreadable_image_is_named_when_read(tree, damage):
    bad = tree / "train" / "c1" / "0002.jpg"  # item 6
    damage(bad)
    images = SOURCES["imagefolder"].load(cfg(tree), "train")  # a scan decodes nothing
    with pytest.raises(UnreadableImage, match=f"cannot read image {bad}"):
        images[6]
    r = apply_overrides(Recipe(), [f"data.path={tree}", "data.batch_size=12",
                                   "data.input_size=16", "data.workers=0"])
    with pytest.raises(UnreadableImage, match=str(bad)):
        list(build_train_data(r, images, *NORM, 0, 1).epoch(0))


@pytest.mark.parametrize("damage", [corrupt, truncate])
def test_skipping_replaces_an_unreadable_image_with_its_neighbour_and_label(tree, damage):
    damage(tree / "train" / "c1" / "0003.jpg")  # item 7, the last of class 1
    images = SOURCES["imagefolder"].load(cfg(tree, "skip"), "train")
    with pytest.warns(UserWarning, match="0003.jpg.*replaced by the next readable one"):
        image, label = images[7]
    assert label == 2 and images.skipped.count == 1  # item 8's image with item 8's label
    r = apply_overrides(Recipe(), [f"data.path={tree}", "data.batch_size=12", "aug.hflip=0",
                                   "data.input_size=16", "data.workers=0", "aug.scale=(1,1)",
                                   "aug.ratio=(1,1)", "data.bad_files=skip"])
    data = build_train_data(r, images, *NORM, 0, 1)
    with pytest.warns(UserWarning):
        (x, y), = list(data.epoch(0))
    assert data.skipped.count == 2
    assert y.tolist() == [i // 4 for i in index_of(x)]  # every label its image's
    assert 7 not in index_of(x) and sorted(index_of(x)).count(8) == 2


def test_skip_count_reaches_tensorboard(tree, tmp_path, tiny_run):
    from helpers.runs import scalars, train_in_process

    numbered_tree(tree, {"train": 8, "val": 2}, classes=10)  # the tiny teacher's 10 classes
    for c in range(10):
        corrupt(tree / "train" / f"c{c}" / "0001.jpg")  # 10 of 80: the first steps meet some
    train_in_process(tiny_run(tmp_path / "run", "data.source=imagefolder", f"data.path={tree}",
                              "data.bad_files=skip", "run.max_steps=2", "run.log_every=1"))
    counts = scalars(tmp_path / "run")["data/skipped"]
    assert sorted(counts) == [1, 2] and 1 <= counts[1] <= counts[2] <= 10


def test_without_labels_reads_every_image_flat_or_nested_and_drops_the_classes(tree, tmp_path):
    """data.labels=false: class folders are not labels, flat files count too, val/ is not
    needed; the training set has no classes (a headless student) and every target is -1."""
    shutil.rmtree(tree / "val")
    shutil.copy(tree / "train" / "c0" / "0000.jpg", tree / "train" / "loose.jpg")
    unlabelled = DataCfg(source="imagefolder", path=str(tree), labels=False)
    assert ImageFolderSource.check(unlabelled) == []
    images = ImageFolderSource.load(unlabelled, "train")
    assert len(images) == 13 and set(images.targets) == {-1} and images.classes == []
    recipe = apply_overrides(Recipe(), [f"data.path={tree}", "data.labels=false",
                                        "data.input_size=32", "data.batch_size=4",
                                        "data.workers=0"])
    data = build_train_data(recipe, images, *NORM, 0, 1)
    assert data.num_classes == 0
    assert ImageFolderSource.check(DataCfg(source="imagefolder", path=str(tree))) != []  # no val/
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no image"):
        ImageFolderSource.load(DataCfg(source="imagefolder", path=str(tmp_path / "empty"),
                                       labels=False), "train")
