"""The label-free method (distill.method=features, data.labels=false) on the spine: a tiny
DINOv2-style teacher with registers (random weights saved to a file) and a flat folder of PNGs
without class folders. A CNN student with drop path and a loader worker (helpers.runs.STOCHASTIC)
stopped after 3 steps and resumed ends bit for bit as the uninterrupted run; two processes give
one process's losses (a ViT student: no BatchNorm); `scalekd report` draws the run without a
top-1 curve; a ViT student's export passes `scalekd probe`."""

import json

import pytest
import torch

from helpers.figures import assert_sane_png
from helpers.label_free import RESNET, VIT, label_free, teacher_file, write_flat_folder
from helpers.runs import STOCHASTIC, exported, launch_command, run, scalars, train_in_process
from scalekd.cli import main, run_probe
from scalekd.recipe import Recipe

TEACHER = "vit_small_patch14_reg4_dinov2"  # class token + 4 registers


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("label_free")
    root = write_flat_folder(folder / "images")
    checkpoint = teacher_file(folder / "teacher.safetensors", TEACHER)

    def overrides(run_dir, student, *extra):
        return label_free(root, run_dir, TEACHER, checkpoint, student, *extra)

    return folder, overrides


@pytest.fixture(scope="module")
def whole(setup):
    """The uninterrupted CNN run: 6 steps, as users run it (drop path, a loader worker)."""
    folder, overrides = setup
    return train_in_process(overrides(folder / "whole", RESNET, *STOCHASTIC))


def test_a_stopped_label_free_run_resumes_bit_exactly(setup, whole):
    folder, overrides = setup
    cut = folder / "cut"
    # step 3 lies inside epoch 2 (2 steps an epoch): the resumed loader starts mid-epoch
    first = train_in_process(overrides(cut, RESNET, *STOCHASTIC, "run.steps_per_job=3"))
    assert not first.finished and first.steps == 3
    resumed = train_in_process(overrides(cut, RESNET, *STOCHASTIC))
    assert resumed.finished and resumed.steps == whole.steps == 6
    got, want = exported(cut), exported(whole.run_dir)
    assert got.keys() == want.keys()
    differ = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"
    after, before = scalars(cut), scalars(whole.run_dir)
    for tag in ("loss/total", "loss/cls_cos", "loss/patch_cos", "loss/patch_smooth_l1"):
        assert after[tag] == before[tag], tag  # every step, the resumed ones included


def test_report_draws_a_run_without_labels(whole, tmp_path, capsys, monkeypatch):
    import scalekd.diagnostics.report as report

    figures, save = {}, report.save

    def keep(fig, path, title):
        figures[path.name] = fig
        return save(fig, path, title)

    monkeypatch.setattr(report, "save", keep)
    main(["report", str(whole.run_dir), "--out", str(tmp_path / "png")])
    written = capsys.readouterr().out.split()
    # no final_top1.png: nothing evaluates top-1
    assert [p.rsplit("/", 1)[-1] for p in written] == ["training.png", "loss_terms.png"]
    for path in written:
        assert_sane_png(path)
    loss, top1 = figures["training.png"].axes[:2]
    assert len(loss.get_lines()) == 1 and not top1.get_lines()  # an empty top-1 panel
    terms = {ax.get_title() for ax in figures["loss_terms.png"].axes}
    assert {"loss/cls_cos", "loss/patch_cos", "loss/patch_smooth_l1"} <= terms


@pytest.mark.multiprocess
def test_two_processes_train_as_one_and_the_vit_export_probes(setup, tmp_path, capsys):
    """One launch of 2 processes (DDP over gloo) against one process, with a ViT student
    (LayerNorm: losses do not depend on how a batch is split); then the one-process export,
    a headless ViT, is what `scalekd probe` evaluates."""
    folder, overrides = setup
    one, two = tmp_path / "one", tmp_path / "two"
    result = train_in_process(overrides(one, VIT))
    run(launch_command(overrides(two, VIT), deepspeed=False), tmp_path / "two.log", timeout=300)
    ref, got = scalars(one), scalars(two)
    assert len(ref["loss/total"]) == 6
    for tag in ("loss/total", "loss/cls_cos", "loss/patch_cos", "loss/patch_smooth_l1"):
        assert got[tag] == pytest.approx(ref[tag], rel=1e-5, abs=1e-6), tag

    name, kwargs = VIT
    probe_args = [f"teacher.name={name}", f"teacher.kwargs={kwargs}",
                  f"teacher.checkpoint={result.export}", f"student.name={name}",
                  f"student.kwargs={kwargs}",
                  "data.source=synthetic", "data.num_samples=40", "data.input_size=32",
                  "data.workers=0", "probe.head=linear", "probe.epochs=2", "probe.lrs=(1e-2,)"]
    # probe.blocks defaults to 4 (DINOv2's recipe); the student has 2 blocks
    with pytest.raises(SystemExit):
        run_probe(Recipe(), [*probe_args, f"run.dir={tmp_path / 'too_deep'}"])
    assert ("probe.blocks=4 exceeds the 2 blocks of teacher 'vit_tiny_patch16_224': set "
            "probe.blocks=2 or fewer") in capsys.readouterr().err
    out = run_probe(Recipe(), [*probe_args, "probe.blocks=2", f"run.dir={tmp_path / 'probe'}"])
    spec = json.loads((out.folder / "probe.json").read_text())
    # the class tokens of its 2 blocks and its patch mean, 192 wide each
    assert spec["features"]["blocks"] == 2 and spec["features"]["width"] == 3 * 192
    assert 0 <= out.eval_top1 <= 100
