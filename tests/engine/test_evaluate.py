import json
import math

import pytest
import torch

from scalekd.engine.evaluate import (agreement, classification_metrics, multilabel_top1,
                                     read_label_file)

# 4 images, 3 classes: predictions 0, 1, 2, 0; labels 0, 1, 1, 2
LOGITS = torch.tensor([[3.0, 1, 0], [0, 2, 1], [0, 1, 2], [2, 1, 0]])
TARGETS = torch.tensor([0, 1, 1, 2])


def test_top1_top5_and_per_class_by_hand():
    m = classification_metrics(LOGITS, TARGETS, ["a", "b", "c"])
    assert m["top1"] == 50.0  # images 0 and 1
    assert m["top5"] == 100.0  # 3 classes: every label is within the top 5
    assert m["per_class_top1"] == {"a": 100.0, "b": 50.0, "c": 0.0}


def test_a_class_without_images_has_no_accuracy():
    m = classification_metrics(LOGITS, TARGETS, ["a", "b", "c", "d"])
    assert m["per_class_top1"]["d"] is None


def test_agreement_by_hand():
    teacher = torch.tensor([[3.0, 1, 0], [0, 2, 1], [2, 1, 0], [0, 0, 5]])
    a = agreement(LOGITS, teacher)
    assert a["top1_agreement"] == 50.0  # images 0 and 1 agree
    p, q = teacher.softmax(-1), LOGITS.softmax(-1)
    kl = (p * (p.log() - q.log())).sum(-1).mean().item()
    assert math.isclose(a["mean_kl"], kl, rel_tol=1e-5)
    assert agreement(LOGITS, LOGITS)["mean_kl"] < 1e-7


def test_real_style_top1_leaves_out_images_without_labels():
    # predictions 0, 1, 2, 0
    m = multilabel_top1(LOGITS, [[0, 2], [2], None, []])
    assert m == {"top1": 50.0, "images": 2}
    with pytest.raises(ValueError, match="no labels for any image"):
        multilabel_top1(LOGITS, [None, None, [], None])


def test_label_files_in_the_three_forms(tmp_path):
    names = ["img_3.jpg", "img_1.jpg", "img_2.jpg"]
    # list form: in sorted-name order (img_1, img_2, img_3), as ImageNet-ReaL's real.json
    (tmp_path / "real.json").write_text(json.dumps([[1], [], [3, 4]]))
    assert read_label_file(tmp_path / "real.json", names) == [[3, 4], [1], []]
    (tmp_path / "by_name.json").write_text(json.dumps({"img_1.jpg": [7], "img_3.jpg": [8, 9]}))
    assert read_label_file(tmp_path / "by_name.json", names) == [[8, 9], [7], None]
    (tmp_path / "labels.csv").write_text("image,labels\nimg_2.jpg,5;6\nimg_3.jpg,0\n")
    assert read_label_file(tmp_path / "labels.csv", names) == [[0], None, [5, 6]]


def test_a_list_form_label_file_of_another_length_is_refused(tmp_path):
    (tmp_path / "real.json").write_text(json.dumps([[1], [2]]))
    with pytest.raises(ValueError, match="lists 2 images, the evaluation split has 3"):
        read_label_file(tmp_path / "real.json", ["a", "b", "c"])
