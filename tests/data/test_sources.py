"""Data sources: Fashion-MNIST from disk, image folders whose labels cannot shift."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scalekd.data import SOURCES
from scalekd.data.fashion_mnist import DEBIAN_DIR
from scalekd.recipe import DataCfg


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is absent")
def test_fashion_mnist_from_debian_files():
    train = SOURCES["fashion_mnist"].load(DataCfg(source="fashion_mnist"), "train")
    test = SOURCES["fashion_mnist"].load(DataCfg(source="fashion_mnist"), "test")
    assert len(train) == 60_000 and len(test) == 10_000
    image, label = train[0]
    assert image.size == (28, 28) and image.mode == "RGB" and label == 9  # an ankle boot
    assert np.bincount(test.targets).tolist() == [1000] * 10


def make_tree(root: Path, split: str, classes: list[str]):
    for c in classes:
        (root / split / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / split / c / "a.png")


def test_image_folder_class_mismatch_is_refused(tmp_path):
    make_tree(tmp_path, "train", ["cat", "dog", "eel"])
    make_tree(tmp_path, "val", ["cat", "eel"])
    cfg = DataCfg(source="imagefolder", path=str(tmp_path))
    assert SOURCES["imagefolder"].check(cfg) == []
    assert len(SOURCES["imagefolder"].load(cfg, "train")) == 3
    with pytest.raises(ValueError, match="missing from val: \\['dog'\\]"):
        SOURCES["imagefolder"].load(cfg, "val")
