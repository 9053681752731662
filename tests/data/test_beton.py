"""`scalekd make-beton` on real JPEG files, including ones damaged on purpose."""

import json

import pytest

from helpers.images import jpeg_tree, need_ffcv

need_ffcv()

from scalekd.cli import main  # noqa: E402
from scalekd.data import SOURCES  # noqa: E402
from scalekd.recipe import DataCfg  # noqa: E402

pytestmark = pytest.mark.timeout(300)  # FFCV's writer waits forever on a worker that died


@pytest.fixture
def tree(tmp_path):
    return jpeg_tree(tmp_path / "tree", {"train": 3, "val": 1})  # 10 classes


def make(tree, out, *args):
    main(["make-beton", "--out", str(out), f"data.path={tree}", *args])


def test_writes_every_split_with_its_classes_and_labels(tree, tmp_path):
    make(tree, tmp_path / "b", "--write-mode", "proportion", "--max-side", "32")
    folder = SOURCES["imagefolder"].load(DataCfg(path=str(tree)), "train")
    beton = SOURCES["ffcv"].load(DataCfg(source="ffcv", path=str(tmp_path / "b")), "train")
    assert beton.classes == folder.classes and beton.targets == folder.targets
    assert [beton.name(i) for i in range(30)] == [folder.name(i) for i in range(30)]
    meta = json.loads((tmp_path / "b" / "val.json").read_text())
    assert meta["num_images"] == 10 and meta["skipped"] == 0 and meta["max_side"] == 32


def test_an_unreadable_image_stops_the_write_naming_it(tree, tmp_path, capsys):
    bad = tree / "train" / "coat" / "0001.jpg"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    with pytest.raises(SystemExit) as stop:
        make(tree, tmp_path / "b")
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"cannot read image {bad}" in err and "data.bad_files=skip" in err
    assert not list((tmp_path / "b").glob("train.*"))  # nothing half-written is left


def test_skipping_writes_the_neighbour_and_records_the_count(tree, tmp_path):
    (tree / "train" / "coat" / "0001.jpg").write_bytes(b"garbage")
    (tree / "val" / "bag" / "Thumbs.db").write_bytes(b"not an image")
    with pytest.warns(UserWarning):
        make(tree, tmp_path / "b", "data.bad_files=skip")
    for split in ("train", "val"):
        meta = json.loads((tmp_path / "b" / f"{split}.json").read_text())
        assert meta["skipped"] == 1 and meta["num_images"] == (30 if split == "train" else 10)
