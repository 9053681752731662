"""Recipe A2: Table 2's values, and a real 2-step run of each logit method under its Mixup 0.1 /
CutMix 1.0 (soft targets), with a tiny BEiTv2 teacher."""

import math
import runpy
from pathlib import Path

import pytest
import timm
from helpers.runs import scalars
from safetensors.torch import save_file

from scalekd.distill import DISTILLERS
from scalekd.engine.trainer import train
from scalekd.recipe import apply_overrides

ROOT = Path(__file__).resolve().parents[1]
A1 = runpy.run_path(str(ROOT / "recipes" / "in1k_a1.py"))["recipe"]
A2 = runpy.run_path(str(ROOT / "recipes" / "in1k_a2.py"))["recipe"]
BEIT_TINY = {"img_size": 32, "depth": 1, "embed_dim": 32, "num_heads": 2}


def test_a2_is_table_2():
    r = A2()
    # A2's own settings
    assert (r.optim.weight_decay, r.aug.smoothing, r.aug.mixup, r.aug.cutmix) == (0.03, 0.0, 0.1,
                                                                                  1.0)
    assert (r.run.name, r.run.epochs) == ("in1k_a2", 300)
    # the settings A1 and A2 share
    assert (r.optim.name, r.optim.lr, r.data.batch_size, r.optim.sched) == ("lamb", 5e-3, 2048,
                                                                           "cosine")
    assert (r.optim.warmup_epochs, r.distill.hard_loss, r.student.drop_path) == (5, "bce", 0.05)
    assert (r.aug.repeated_aug, r.aug.auto_augment) == (3, "rand-m7-mstd0.5")
    assert (r.teacher.name.split(".")[0], r.student.name) == ("beitv2_large_patch16_224",
                                                              "resnet50")
    assert (r.distill.method, r.distill.temperature) == ("kd", 1.0)
    a1 = A1()  # building A2 leaves A1 as it was
    assert (a1.optim.weight_decay, a1.aug.smoothing, a1.aug.mixup, a1.run.epochs) == (
        0.01, 0.1, 0.2, 1200)


@pytest.fixture(scope="module")
def beit(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("beit") / "beit.safetensors"
    save_file(timm.create_model("beitv2_large_patch16_224", num_classes=10,
                                **BEIT_TINY).state_dict(), path)
    return path


@pytest.mark.parametrize("method", ["kd", "dkd", "dist", "bkd"])
def test_a2_runs_each_method_on_tiny_overrides(method, beit, tmp_path):
    recipe = apply_overrides(A2(), [
        "data.source=synthetic", "data.num_samples=16", "data.input_size=32", "data.batch_size=8",
        "data.workers=0", f"teacher.kwargs={BEIT_TINY}", "teacher.pretrained=false",
        f"teacher.checkpoint={beit}", f"run.dir={tmp_path / 'run'}", "eval.teacher=false",
        "run.max_steps=2", "run.log_every=1", f"distill.method={method}",
    ])
    result = train(recipe)
    assert result.steps == 2 and (tmp_path / "run" / "export" / "student.safetensors").is_file()
    logged = scalars(tmp_path / "run")
    for term in DISTILLERS[method].loss_terms:  # every term, Mixup's soft targets included
        assert math.isfinite(logged[f"loss/{term}"][2])
