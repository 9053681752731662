"""`scalekd probe`: cached features, the lr grid, the held-out split, the output folder, and a
distillation run with the probed teacher."""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.probes import probe_overrides
from helpers.runs import REPO, scalars, subprocess_env, train_in_process
from scalekd.data import build_eval_loader
from scalekd.data.classes import load_split
from scalekd.data.loader import keep_labelled
from scalekd.engine.validation import validate
from scalekd.models import data_config
from scalekd.recipe import Recipe, apply_overrides
from scalekd.tools.probe_teacher import (cached_features, compute_features, feature_teacher,
                                         new_head, probe, stratified_split, top1, train_head)

CPU = torch.device("cpu")


def probe_recipe(out, checkpoint, *extra) -> Recipe:
    return apply_overrides(Recipe(), probe_overrides(out, checkpoint, *extra))


class Recomputed:
    """Features computed from the images of each batch, every time a batch is drawn."""

    def __init__(self, teacher, pixels):
        self.teacher, self.pixels = teacher, pixels

    def __getitem__(self, batch):
        return self.teacher(self.pixels[batch]).logits


def test_cached_features_train_the_head_that_recomputed_ones_do(tmp_path, tiny_teacher):
    recipe = probe_recipe(tmp_path, tiny_teacher, "probe.batch_size=16")
    teacher = feature_teacher(recipe)
    (cached, labels), _ = cached_features(recipe, teacher, "train", CPU)
    (again, _), _ = cached_features(recipe, teacher, "train", CPU)  # read from the file
    images = keep_labelled(load_split(recipe.data, "train"), 0)
    assert torch.equal(again, cached)
    assert torch.equal(compute_features(recipe, teacher, images, CPU)[0], cached)

    norm = data_config(recipe.student.name)
    pixels = torch.cat([x for x, _ in build_eval_loader(recipe, images, norm["mean"],
                                                        norm["std"], 0, 1)])
    heads = []
    for features in (cached, Recomputed(teacher, pixels)):
        head = new_head(recipe, cached.shape[1], 10, 32)
        train_head(head, features, labels, 1e-2, recipe)
        heads.append(head)
    for a, b in zip(*(h.parameters() for h in heads)):
        assert torch.allclose(a, b, atol=1e-5)
    assert top1(heads[0], cached, labels) == top1(heads[1], cached, labels)


def test_the_grid_picks_the_best_held_out_rate_and_the_folder_says_so(tmp_path, tiny_teacher):
    results = [probe(probe_recipe(tmp_path, tiny_teacher, f"probe.lrs={lrs}"))
               for lrs in ("(1e-7,1e-2)", "(1e-2,1e-7)")]  # the second reuses the cache
    for result in results:
        assert result.lr == 1e-2 and result.grid[1e-2] > result.grid[1e-7]
    spec = json.loads((tmp_path / "probe.json").read_text())
    assert spec["lr"] == 1e-2 and spec["val_top1"] == max(g["val_top1"] for g in spec["grid"])
    assert spec["features"] == {"kind": "cls x2 + patch mean", "blocks": 2, "patch_mean": True,
                                "width": 3 * 192}
    assert spec["head"]["hidden"] == 192 and spec["refit"] and spec["num_classes"] == 10
    assert spec["eval_top1"] == results[1].eval_top1
    assert sorted(p.name for p in (tmp_path / "features").iterdir()) == ["train.safetensors",
                                                                         "val.safetensors"]


def test_held_out_split_is_stratified_and_seeded():
    labels = torch.arange(5).repeat_interleave(20)
    held = stratified_split(labels, 0.1, seed=0)
    assert torch.bincount(labels[held]).tolist() == [2] * 5
    assert torch.equal(held, stratified_split(labels, 0.1, seed=0))
    assert not torch.equal(held, stratified_split(labels, 0.1, seed=1))


def test_bad_probe_settings_exit_before_compute(tmp_path, tiny_teacher):
    run = subprocess.run(
        [sys.executable, "-m", "scalekd.cli", "probe",
         *probe_overrides(tmp_path, tiny_teacher, "probe.blocks=5", "probe.head=deep")],
        capture_output=True, text=True, cwd=REPO, timeout=300, env=subprocess_env())
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "probe.blocks=5 must be 1 to 4" in run.stderr
    assert "probe.head='deep' must be linear or mlp" in run.stderr
    assert not (tmp_path / "features").exists()


def test_distillation_from_the_probed_teacher(tmp_path, tiny_teacher, tiny_run):
    probed = probe(probe_recipe(tmp_path / "probe", tiny_teacher))
    result = train_in_process(tiny_run(tmp_path / "kd", f"teacher.probe={probed.folder}",
                                       "teacher.dtype=fp32", "distill.temperature=1",
                                       "distill.hard_loss=ce", "run.log_every=1"))
    assert result.steps == 8 and result.export.is_file()
    logged = scalars(tmp_path / "kd")
    # the trainer's teacher is the probe's: same top-1 on the same evaluation images
    assert logged["teacher/top1"][0] == pytest.approx(probed.eval_top1, abs=1e-4)
    assert set(logged) >= {"loss/kd", "loss/hard"}


def test_probed_kd_recipe_is_the_papers_and_validates(tmp_path, tiny_teacher):
    recipes = runpy.run_path(str(Path(REPO) / "recipes" / "probed_kd.py"))
    distilled = recipes["recipe"]()
    assert distilled.distill.weights == {"hard": 0.5, "kd": 0.5}  # alpha = 0.5
    assert (distilled.distill.method, distilled.distill.temperature) == ("kd", 1.0)
    probed = probe(probe_recipe(tmp_path / "probe", tiny_teacher))
    tiny = apply_overrides(distilled, [
        *probe_overrides(tmp_path / "run", tiny_teacher), "data.batch_size=16",
        f"teacher.probe={probed.folder}", "teacher.pretrained=false", "student.name=resnet18"])
    validate(tiny)
    probing = recipes["probe_recipe"](tiny)
    assert probing.run.path == probed.folder and not probing.teacher.probe
