"""The recipe files: A1 fails clearly without data/weights and runs for real on tiny overrides."""

import importlib.util
import json
import os
import re
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from helpers.runs import exported, kill_group, scalars, subprocess_env
from scalekd.engine.trainer import train
from scalekd.engine.validation import validate
from scalekd.recipe import apply_overrides

ROOT = Path(__file__).resolve().parents[1]
A1 = runpy.run_path(str(ROOT / "recipes" / "in1k_a1.py"))["recipe"]
BEIT_TINY = {"img_size": 32, "depth": 1, "embed_dim": 32, "num_heads": 2}


def test_a1_is_table_2():
    r = A1()
    assert (r.optim.name, r.optim.lr, r.data.batch_size, r.optim.sched) == ("lamb", 5e-3, 2048,
                                                                           "cosine")
    assert (r.optim.warmup_epochs, r.optim.weight_decay, r.aug.smoothing) == (5, 0.01, 0.1)
    assert (r.student.drop_path, r.aug.repeated_aug, r.aug.auto_augment) == (0.05, 3,
                                                                              "rand-m7-mstd0.5")
    assert (r.aug.mixup, r.aug.cutmix, r.distill.hard_loss, r.run.epochs) == (0.2, 1.0, "bce",
                                                                              1200)
    assert (r.teacher.name.split(".")[0], r.student.name) == ("beitv2_large_patch16_224",
                                                              "resnet50")


def test_a1_without_imagenet_or_weights_says_what_is_missing():
    run = subprocess.run([sys.executable, str(ROOT / "recipes" / "in1k_a1.py"),
                          "teacher.pretrained=false"], capture_output=True, text=True, cwd=ROOT,
                         timeout=300, env=subprocess_env())
    assert run.returncode == 2
    assert "data.path is not set: pass data.path=/path/to/imagenet" in run.stderr
    assert "has no weights: pass teacher.checkpoint=" in run.stderr
    assert "Traceback" not in run.stderr


def test_a1_runs_on_tiny_overrides(tmp_path):
    teacher = timm.create_model("beitv2_large_patch16_224", num_classes=10, **BEIT_TINY)
    save_file(teacher.state_dict(), tmp_path / "beit.safetensors")
    recipe = apply_overrides(A1(), [
        "data.source=synthetic", "data.num_samples=48", "data.input_size=32", "data.batch_size=8",
        "data.workers=0", f"teacher.kwargs={BEIT_TINY}", "teacher.pretrained=false",
        f"teacher.checkpoint={tmp_path / 'beit.safetensors'}", f"run.dir={tmp_path / 'run'}",
        "run.max_steps=2", "run.log_every=1",
    ])
    result = train(recipe)
    assert result.steps == 2 and (tmp_path / "run" / "export" / "student.safetensors").is_file()
    assert 0 <= result.metrics["eval/top1"] <= 100


def test_scalekd_train_runs_a_recipe_file_with_overrides(tmp_path, monkeypatch):
    """`scalekd train RECIPE.py key=value ...` does what running the file does."""
    from scalekd.cli import main

    teacher = timm.create_model("beitv2_large_patch16_224", num_classes=10, **BEIT_TINY)
    save_file(teacher.state_dict(), tmp_path / "beit.safetensors")
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # `train` sets it for the recipe file
    main(["train", str(ROOT / "recipes" / "in1k_a1.py"), "data.source=synthetic",
          "data.num_samples=48", "data.input_size=32", "data.batch_size=8", "data.workers=0",
          f"teacher.kwargs={BEIT_TINY}", "teacher.pretrained=false",
          f"teacher.checkpoint={tmp_path / 'beit.safetensors'}", f"run.dir={tmp_path / 'run'}",
          "run.max_steps=2", "optim.lr=1e-3"])
    recorded = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert recorded["optim"]["lr"] == 1e-3 and recorded["optim"]["name"] == "lamb"  # A1's
    assert (tmp_path / "run" / "FINISHED").read_text() == "2\n"
    assert (tmp_path / "run" / "export" / "student.safetensors").is_file()


def test_quickstart_recipes_validate(tmp_path):
    quickstart = runpy.run_path(str(ROOT / "recipes" / "quickstart.py"))
    distilled = quickstart["recipe"]()
    # the teacher's weights exist once the quickstart has trained it; stand in for them here
    weights = tmp_path / "teacher.safetensors"
    weights.touch()
    for r in (quickstart["teacher_recipe"](distilled), quickstart["alone_recipe"](distilled),
              quickstart["transfer_recipe"](distilled)):
        validate(apply_overrides(r, [f"teacher.checkpoint={weights}"]))
    assert distilled.student.name != distilled.teacher.name


def test_quickstart_teacher_uses_half_of_fashion_mnist_and_every_label_elsewhere():
    quickstart = runpy.run_path(str(ROOT / "recipes" / "quickstart.py"))
    teacher = quickstart["teacher_recipe"]
    distilled = quickstart["recipe"]()
    assert teacher(distilled).data.labels_per_class == 3000  # 30,000 of its 60,000 images
    for other in ("data.source=synthetic", "data.classes=(5,6,7,8,9)"):
        assert teacher(apply_overrides(distilled, [other])).data.labels_per_class == 0


def quickstart_started(monkeypatch, capsys) -> tuple[str, str]:
    """The first run the quickstart starts, and what it printed before: run_recipe stops it."""
    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "recipes" / "quickstart.py")
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    started = []

    def first_run(recipe, argv):
        started.append((recipe.run.name, capsys.readouterr().out))
        raise SystemExit(0)

    monkeypatch.setattr(quickstart, "run_recipe", first_run)
    with pytest.raises(SystemExit):
        quickstart.main([])
    return started[0]


def test_quickstart_prints_its_expected_time_before_it_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a fresh runs/: the teacher trains first
    name, printed = quickstart_started(monkeypatch, capsys)
    assert name == "teacher"
    expected = re.search(r"expected time: about (\d+) minutes on 2 cores .* with nothing else "
                         r"running \(teacher, alone, KD, KD\+transfer;", printed)
    assert expected and 2 <= int(expected[1]) <= 4, printed
    teacher = tmp_path / "runs" / "quickstart" / "teacher" / "export" / "student.safetensors"
    teacher.parent.mkdir(parents=True)
    teacher.touch()
    name, printed = quickstart_started(monkeypatch, capsys)
    assert name == "student_alone" and "(alone, KD, KD+transfer;" in printed, printed
    assert int(re.search(r"about (\d+) minutes", printed)[1]) < int(expected[1])


SCALEKD = runpy.run_path(str(ROOT / "recipes" / "scalekd_in1k.py"))


def test_scalekd_pairs_validate_and_name_what_is_missing():
    from scalekd.recipe import RecipeError

    for pair in SCALEKD["PAIRS"]:
        r = SCALEKD["recipe"](pair)
        assert r.distill.method == "scalekd" and r.run.name == f"scalekd_{pair}"
        synthetic = apply_overrides(r, ["data.source=synthetic", "data.num_samples=8"])
        if pair == "dinov2g_r50":  # no ImageNet head on the hub: a probed teacher
            with pytest.raises(RecipeError, match="teacher.probe='runs/dinov2g_probe' is not a "
                                                  "probe folder"):
                validate(synthetic)
        else:
            validate(synthetic)
    advanced = SCALEKD["recipe"]("swinl_r50")
    traditional = SCALEKD["recipe"]("swinl_r50_traditional")
    assert (advanced.optim.name, advanced.optim.lr, advanced.optim.weight_decay,
            advanced.optim.clip_grad, advanced.aug.re_prob) == ("lamb", 5e-3, 0.02, 5.0, 0.25)
    assert (advanced.distill.dfm_weight * advanced.distill.dfm_beta) == pytest.approx(0.08)
    assert (traditional.optim.name, traditional.optim.sched, traditional.run.epochs,
            traditional.data.batch_size) == ("sgd", "step", 100, 256)


def test_scalekd_recipe_runs_on_tiny_overrides(tmp_path):
    """Swin teacher -> ResNet-50-D student, the paper's main pair, shrunk."""
    swin = {"img_size": 64, "depths": (1, 1, 1, 2), "window_size": 2, "embed_dim": 24,
            "num_heads": (1, 1, 1, 1)}
    teacher = timm.create_model("swin_large_patch4_window7_224", num_classes=10, **swin)
    save_file(teacher.state_dict(), tmp_path / "swin.safetensors")
    recipe = apply_overrides(SCALEKD["recipe"]("swinl_r50"), [
        "data.source=synthetic", "data.num_samples=16", "data.input_size=64",
        "data.batch_size=8", "data.workers=0", f"teacher.kwargs={swin}",
        "teacher.pretrained=false", f"teacher.checkpoint={tmp_path / 'swin.safetensors'}",
        f"run.dir={tmp_path / 'run'}", "run.max_steps=2", "run.log_every=1",
        "run.precision=no", "teacher.dtype=fp32",
    ])
    result = train(recipe)
    assert result.steps == 2 and 0 <= result.metrics["eval/top1"] <= 100


@pytest.mark.slow  # about 90 s of CPU: three short ScaleKD runs and a probe
def test_dinov2_pair_probes_distils_stops_resumes_and_exports(tmp_path, monkeypatch, capsys):
    """DINOv2 ViT-g -> ResNet-50-D from the recipe's commands, shrunk: a tiny DINOv2 with
    registers (patch 14, 4 blocks) from a weights file, a ResNet-18-D. One process probes, then
    distils with ScaleKD (KD on the head's logits; CAP/DFM/TPP on the encoder's patch tokens and
    last block); the job stops after 2 steps (run.steps_per_job), the next resumes and exports
    what an uninterrupted run exports."""
    dinov2 = {"img_size": 56, "depth": 4, "embed_dim": 32, "num_heads": 2}
    encoder = timm.create_model("vit_giant_patch14_reg4_dinov2", num_classes=0, **dinov2)
    save_file(encoder.state_dict(), tmp_path / "dinov2.safetensors")  # as the hub's: no head
    tiny = [
        "--pair", "dinov2g_r50", "data.source=synthetic", "data.num_samples=32",
        "data.input_size=56", "data.batch_size=8", "data.workers=0", "student.name=resnet18d",
        f"teacher.kwargs={dinov2}", f"teacher.checkpoint={tmp_path / 'dinov2.safetensors'}",
        "teacher.pretrained=false", "teacher.dtype=fp32", "run.precision=no",
        f"teacher.probe={tmp_path / 'probe'}", "probe.epochs=2", "probe.batch_size=16",
        "probe.lrs=(1e-2,)", "run.epochs=2", "run.log_every=1",
    ]
    main = SCALEKD["main"]
    monkeypatch.setenv("WORLD_SIZE", "2")  # a multi-process launch does not probe: it says how
    with pytest.raises(SystemExit):
        main([*tiny, f"run.dir={tmp_path / 'cut'}"])
    assert ("python recipes/scalekd_in1k.py --probe-only --pair dinov2g_r50"
            in capsys.readouterr().err)
    monkeypatch.delenv("WORLD_SIZE")

    with pytest.raises(SystemExit) as stopped:  # a stop ends the script once checkpointed
        main([*tiny, f"run.dir={tmp_path / 'cut'}", "run.steps_per_job=2"])
    assert stopped.value.code == 0
    probed = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert probed["teacher"]["name"] == "vit_giant_patch14_reg4_dinov2.lvd142m"
    assert probed["features"]["kind"] == "cls x4 + patch mean" and probed["head"]["kind"] == "linear"
    assert [p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()] == ["step_000000002"]
    second = main([*tiny, f"run.dir={tmp_path / 'cut'}"])
    assert "reusing the probe" in capsys.readouterr().out
    assert second.finished and second.steps == 8
    whole = main([*tiny, f"run.dir={tmp_path / 'whole'}"])
    logged = scalars(tmp_path / "cut")
    assert {"loss/kd", "loss/spatial.s3", "loss/frequency.s4"} <= set(logged)
    assert logged["loss/total"] == scalars(tmp_path / "whole")["loss/total"]
    cut, ref = exported(tmp_path / "cut"), exported(whole.run_dir)
    student = timm.create_model("resnet18d", num_classes=10).state_dict()
    assert cut.keys() == ref.keys() == student.keys()  # the projectors are not exported
    assert all(torch.equal(cut[k], ref[k]) for k in cut)


LABEL_FREE = runpy.run_path(str(ROOT / "recipes" / "label_free.py"))


@pytest.fixture
def image_folder(tmp_path):
    """8 PNGs straight in train/: no class folders, no labels."""
    (tmp_path / "images" / "train").mkdir(parents=True)
    for i in range(8):
        pixels = torch.randint(0, 256, (36, 36, 3), dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(tmp_path / "images" / "train" / f"{i}.png")
    return tmp_path / "images"


def test_label_free_objectives_validate_and_name_what_is_missing(image_folder):
    from scalekd.distill import DISTILLERS
    from scalekd.recipe import RecipeError

    for objective in LABEL_FREE["OBJECTIVES"]:
        r = LABEL_FREE["recipe"](objective)
        assert (r.data.labels, r.run.name) == (False, f"label_free_{objective}")
        assert not DISTILLERS[r.distill.method].needs_classes(r)  # reads no label or logit
        with pytest.raises(RecipeError, match="data.path='' has no train/ folder"):
            validate(r)
        validate(apply_overrides(r, [f"data.path={image_folder}"]))
    assert LABEL_FREE["recipe"]("scalekd").distill.weights == {"kd": 0.0}


def test_label_free_recipe_runs_both_objectives_on_tiny_overrides(tmp_path, image_folder):
    """The recipe file's main, shrunk: a tiny DINOv2 with registers (4 blocks) from a weights
    file, a ResNet-18 student; 2 steps of each objective, a headless export."""
    dinov2 = {"img_size": 28, "depth": 4, "embed_dim": 32, "num_heads": 2}  # TPP: last 2
    encoder = timm.create_model("vit_giant_patch14_reg4_dinov2", num_classes=0, **dinov2)
    save_file(encoder.state_dict(), tmp_path / "dinov2.safetensors")
    for objective in LABEL_FREE["OBJECTIVES"]:
        result = LABEL_FREE["main"]([
            "--objective", objective, f"data.path={image_folder}", "data.input_size=32",
            "data.batch_size=4", "data.workers=0", "student.name=resnet18",
            f"teacher.kwargs={dinov2}", f"teacher.checkpoint={tmp_path / 'dinov2.safetensors'}",
            "teacher.pretrained=false", "teacher.dtype=fp32", "run.precision=no",
            f"run.dir={tmp_path / objective}", "run.max_steps=2", "run.log_every=1"])
        assert result.steps == 2, objective
        logged = scalars(tmp_path / objective)
        assert ({"loss/cls_cos", "loss/patch_cos"} if objective == "features"
                else {"loss/spatial.s3", "loss/frequency.s4"}) <= set(logged), logged
        assert "loss/kd" not in logged
        export = exported(tmp_path / objective)
        assert not any(k.startswith("fc.") for k in export)  # headless: no classifier


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_quickstart_stopped_by_sigterm_ends_and_its_rerun_resumes(tmp_path):
    """SIGTERM to the quickstart's process group while the teacher trains: the teacher (and its
    2 loader workers) checkpoint and the whole script ends, status 0, without going on to the
    students; the same command again resumes the teacher where it stopped and finishes."""
    tiny = ["data.source=synthetic", "data.num_samples=256", "data.labels_per_class=4",
            "data.batch_size=16", "data.eval_batch_size=64", "run.epochs=1"]
    command = [sys.executable, str(ROOT / "recipes" / "quickstart.py"), *tiny]
    runs, log = tmp_path / "runs" / "quickstart", tmp_path / "first.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=tmp_path, env=subprocess_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not read_scalars_or_empty(runs / "teacher").get("loss/total"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()
    finally:
        kill_group(proc)
    first = log.read_text()
    stop = re.search(r"stopping at step (\d+) of 16 \(received SIGTERM\)", first)
    assert stop and "run the same command again to resume" in first, first
    assert not (runs / "teacher" / "FINISHED").exists()
    assert not (runs / "student_alone").exists(), "the script went on after the stop"

    again = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True,
                           text=True, timeout=1500)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"at step {stop.group(1)}" in again.stdout + again.stderr  # "resumed from ... at step"
    for name in ("teacher", "student_alone", "student_kd", "student_kd_transfer"):
        assert (runs / name / "FINISHED").is_file(), name
    assert "Fashion-MNIST test top-1" in again.stdout


def read_scalars_or_empty(run_dir: Path) -> dict:
    try:
        return scalars(run_dir)
    except Exception:  # no event file yet, or one being written
        return {}
