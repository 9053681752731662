"""Label-free feature distillation (distill.method=features, data.labels=false): tiny runs on a
flat folder of PNGs with no class folders, for a CNN and a ViT student and DINOv2 teachers with
and without registers; the loss goes down, the export is headless and `scalekd probe` takes it;
the teacher's patch tokens never hold its class or register tokens; bad settings are refused
before compute."""

import json

import pytest
import timm
import torch
from safetensors.torch import load_file

from scalekd.distill.features import LinearPatchHead
from scalekd.engine.saved_run import SavedRun
from scalekd.engine.validation import validate
from scalekd.models.teacher_stages import TeacherStages
from scalekd.recipe import Recipe, RecipeError, apply_overrides
from scalekd.tools.probe_teacher import probe

from helpers.label_free import DINOV2, RESNET, VIT, label_free, teacher_file, write_flat_folder
from helpers.runs import scalars, train_in_process

@pytest.fixture(scope="module")
def flat_folder(tmp_path_factory):
    return write_flat_folder(tmp_path_factory.mktemp("flat"))


@pytest.mark.parametrize("teacher, student, extra, drop", [
    ("vit_small_patch14_reg4_dinov2", RESNET, (), 0.8),  # registers, CNN student, linear heads
    ("vit_small_patch14_dinov2", VIT, ("distill.options.head=cap",), 0.8),
    # ScaleKD without its KD and label terms: CAP + DFM (+ TPP) alone; its CAPs learn slower
    ("vit_small_patch14_reg4_dinov2", VIT,
     ("distill.method=scalekd", "distill.weights={'kd':0}", "distill.hard_loss=none"), 0.95),
])
def test_trains_without_labels_and_the_loss_goes_down(tmp_path, flat_folder, teacher, student,
                                                      extra, drop):
    checkpoint = teacher_file(tmp_path / "teacher.safetensors", teacher)
    result = train_in_process(label_free(flat_folder, tmp_path / "run", teacher, checkpoint,
                                         student, *extra))
    total = scalars(tmp_path / "run")["loss/total"]
    assert len(total) == 6
    assert total[6] < drop * total[1]  # last vs first step
    assert result.metrics == {}  # no labels: nothing evaluates top-1
    weights = load_file(str(result.export))
    assert not any(k.startswith(("fc.", "head.")) for k in weights)  # no classifier
    if extra == ():
        saved = SavedRun(tmp_path / "run")  # what scalekd eval / export / diagnose read
        assert saved.num_classes == 0
        with pytest.raises(ValueError, match="trained without labels"):
            saved.images
        # the export is what `scalekd probe` evaluates: a CNN's pooled features
        out = probe(apply_overrides(Recipe(), [
            f"teacher.name={student[0]}", f"teacher.kwargs={student[1]}",
            f"teacher.checkpoint={result.export}", f"student.name={student[0]}",
            "data.source=synthetic", "data.num_samples=40", "data.input_size=32",
            "data.workers=0", "probe.head=linear", "probe.epochs=2", "probe.lrs=(1e-2,)",
            f"run.dir={tmp_path / 'probe'}"]))
        spec = json.loads((out.folder / "probe.json").read_text())
        assert spec["features"] == {"kind": "pooled", "blocks": 4, "patch_mean": True,
                                    "width": 64}
        assert 0 <= out.eval_top1 <= 100


@pytest.mark.parametrize("name, kwargs, prefix", [
    ("vit_small_patch14_dinov2", DINOV2, 1),
    ("vit_small_patch14_reg4_dinov2", DINOV2, 5),  # class token + 4 registers
    ("vit_small_patch16_dinov3", {"img_size": 32, "depth": 2, "embed_dim": 32, "num_heads": 2},
     5),  # timm's Eva: class token + 4 registers, rotary embedding
])
def test_patch_tokens_hold_no_class_or_register_token(name, kwargs, prefix):
    """The targets are the final norm's tokens: summary = token 0, patches = tokens after every
    prefix token, in grid order; a register slipped in would shift every patch by one."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
    assert model.num_prefix_tokens == prefix
    with torch.no_grad():
        # distinct prefix tokens, so that one taken for a patch shows
        model.cls_token.normal_(std=10)
        if getattr(model, "reg_token", None) is not None:
            model.reg_token.normal_(std=10)
        x = torch.randn(2, 3, kwargs["img_size"], kwargs["img_size"])
        _, features, _ = TeacherStages(model).forward(model, model, x, False, summary=True)
        tokens = model.forward_features(x)
    grid = kwargs["img_size"] // model.patch_embed.patch_size[0]
    patches = tokens[:, prefix:].transpose(1, 2).reshape(2, -1, grid, grid)
    torch.testing.assert_close(features["final"], patches)
    torch.testing.assert_close(features["summary"], tokens[:, 0])


def test_cnn_teacher_summary_is_its_pooled_final_map():
    model = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        _, features, _ = TeacherStages(model).forward(model, model, x, False, summary=True)
        pooled = model(x)
    torch.testing.assert_close(features["summary"], pooled)
    assert features["final"].shape == (2, 512, 2, 2)


def problems(*overrides) -> list[str]:
    base = ["data.source=synthetic", "data.num_samples=16", "data.input_size=32",
            "data.batch_size=8", "student.name=resnet18", "teacher.name=resnet18",
            "teacher.pretrained=true", "distill.method=features", "data.labels=false"]
    try:
        validate(apply_overrides(Recipe(), base + list(overrides)))
    except RecipeError as err:
        return err.problems
    return []


def test_validation_refuses_what_needs_labels_before_compute(tmp_path):
    assert problems() == []
    assert problems("distill.method=scalekd", "distill.weights={'kd':0}",
                    "distill.hard_loss=none") == []
    for bad, expected in [
        (["distill.method=kd"], "data.labels=false: the images have no labels"),
        (["distill.method=scalekd"], "data.labels=false: the images have no labels"),
        (["distill.method=scalekd", "distill.weights={'kd':0}"],  # its label term remains
         "data.labels=false: the images have no labels"),
        (["data.labels_per_class=10"], "data.labels=false drops every label"),
        (["aug.mixup=0.2"], "Mixup/CutMix mix labels"),
        (["distill.options.head=mlp"], "head='mlp' must be one of linear, cap"),
        (["distill.weights={'hard':1}"], "not terms of 'features'"),
        (["distill.options.head=cap", "distill.cap_norm=groupnorm"], "distill.cap_norm"),
        (["data.source=imagefolder", f"data.path={tmp_path}"], "has no train/ folder"),
    ]:
        found = problems(*bad)
        assert any(expected in p for p in found), (bad, found)


@pytest.mark.parametrize("student_grid", [(2, 2), (4, 4), (7, 7)])
def test_linear_head_puts_the_student_map_on_the_teacher_grid(student_grid):
    """Coarser, equal and finer student maps all land on the teacher's 4x4 grid; the 1x1 conv
    before the resize gives what resizing first would (bilinear weights sum to 1)."""
    head = LinearPatchHead(6, 5, (4, 4))
    x = torch.randn(2, 6, *student_grid)
    out = head(x)
    assert out.shape == (2, 5, 4, 4)
    resized = torch.nn.functional.interpolate(x, size=(4, 4), mode="bilinear",
                                              align_corners=False, antialias=True)
    torch.testing.assert_close(out, head.proj(resized), rtol=1e-4, atol=1e-5)
