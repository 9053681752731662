"""Probe features (DINOv2's recipe), heads, and the probed teacher built from a probe folder."""

import pytest
import timm
import torch
from safetensors.torch import load_file

from helpers.probes import probe_overrides
from helpers.runs import TINY_VIT
from scalekd.models.probed_teacher import HEAD_FILE, ProbedModel, make_head, probe_features
from scalekd.models.teacher import create_teacher, freeze_teacher
from scalekd.tools.probe_teacher import probe
from scalekd.engine.validation import validate
from scalekd.recipe import Recipe, RecipeError, apply_overrides

VIT = {"img_size": 32, "depth": 4, "embed_dim": 48}


def manual_features(model, x, blocks, patch_mean):
    """DINOv2's create_linear_input, written out on timm's ViT modules."""
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    outputs = []
    for block in model.blocks:
        x = block(x)
        outputs.append(model.norm(x))
    parts = [out[:, 0] for out in outputs[-blocks:]]
    if patch_mean:
        parts.append(outputs[-1][:, model.num_prefix_tokens:].mean(dim=1))
    return torch.cat(parts, dim=-1)


@pytest.mark.parametrize("blocks", [1, 2, 3, 4])
@pytest.mark.parametrize("patch_mean", [False, True])
def test_vit_features_are_last_class_tokens_and_patch_mean(blocks, patch_mean):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=0, **VIT).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        features = probe_features(model, x, blocks, patch_mean)
        want = manual_features(model, x, blocks, patch_mean)
    assert features.shape == (3, 48 * (blocks + patch_mean))
    assert torch.allclose(features, want, atol=1e-6)


def test_registers_are_not_patches():
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_reg4_dinov2", num_classes=0, img_size=28,
                              depth=2, embed_dim=32, num_heads=2).eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.allclose(probe_features(model, x, 2, True),
                              manual_features(model, x, 2, True), atol=1e-6)


def test_cnn_features_are_the_pooled_feature():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=0).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(probe_features(model, x, 4, True), model(x))  # 512 pooled


def test_heads():
    assert isinstance(make_head("linear", 240, 5, 0), torch.nn.Linear)
    mlp = make_head("mlp", 240, 5, 48)
    assert [tuple(p.shape) for p in mlp.parameters()] == [(48, 240), (48,), (5, 48), (5,)]


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory, tiny_teacher):
    out = tmp_path_factory.mktemp("probe")
    probe(apply_overrides(Recipe(), probe_overrides(out, tiny_teacher)))
    return out


def test_probed_teacher_logits_are_head_of_features(probe_dir, tiny_teacher):
    recipe = apply_overrides(Recipe(), probe_overrides("unused", tiny_teacher,
                                                       f"teacher.probe={probe_dir}"))
    mean, std = (0.5,) * 3, (0.25,) * 3
    teacher = create_teacher(recipe.teacher, 10, mean, std, 32)
    encoder = timm.create_model("vit_tiny_patch16_224", num_classes=10, **eval(TINY_VIT))
    encoder.load_state_dict(load_file(tiny_teacher))  # our saved weights, no download
    encoder.reset_classifier(0)
    encoder.eval()
    head = make_head("mlp", 192 * 3, 10, 192)
    head.load_state_dict(load_file(probe_dir / HEAD_FILE))
    x = torch.randn(4, 3, 32, 32)
    t_mean = torch.tensor(encoder.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    t_std = torch.tensor(encoder.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = head(probe_features(encoder, ((x * 0.25 + 0.5) - t_mean) / t_std, 2, True))
    assert torch.allclose(teacher(x).logits, want, atol=1e-5)
    teacher.train()
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not any(m.training for m in teacher.modules())  # the head is frozen as well


def kd_recipe(probe_dir, checkpoint, *extra):
    return apply_overrides(Recipe(), probe_overrides("unused", checkpoint,
                                                     f"teacher.probe={probe_dir}",
                                                     "student.name=resnet18", *extra))


def test_mismatched_probe_folders_are_refused_before_compute(probe_dir, tiny_teacher, tmp_path):
    validate(kd_recipe(probe_dir, tiny_teacher))
    cases = {
        "is not a probe folder (no probe.json or head.safetensors)": [
            f"teacher.probe={tmp_path}"],
        "probed teacher 'vit_tiny_patch16_224', not teacher.name='vit_small_patch16_224'": [
            "teacher.name=vit_small_patch16_224"],
        "predicts 10 classes, the data has 5": ["data.classes=(0,1,2,3,4)"],
        "computed the teacher's features at 32 px, this run feeds it 48 px": [
            "teacher.input_size=48"],
    }
    for message, overrides in cases.items():
        with pytest.raises(RecipeError) as err:
            validate(kd_recipe(probe_dir, tiny_teacher, *overrides))
        assert any(message in p for p in err.value.problems), err.value.problems


def test_class_count_is_checked_on_data_read_at_run_time(probe_dir, tiny_teacher):
    recipe = kd_recipe(probe_dir, tiny_teacher)
    with pytest.raises(ValueError, match="predicts 10 classes, the data has 7"):
        create_teacher(recipe.teacher, 7, (0.5,) * 3, (0.25,) * 3, 32)


# DINOv2's architecture, tiny: patch 14 on 56 px (a 4x4 grid), 4 blocks (the proxy path: the last)
DINOV2_TINY = {"img_size": 56, "depth": 4, "embed_dim": 32, "num_heads": 2}


@pytest.mark.parametrize("name", ["vit_giant_patch14_dinov2", "vit_giant_patch14_reg4_dinov2"])
def test_probed_teacher_serves_feature_methods(name):
    """Encoder + head as a ScaleKD teacher: logits from the head, the final and split maps from
    the encoder's patch tokens (class and register tokens left out), and a proxy path through
    its last block and final norm that rebuilds its final map."""
    torch.manual_seed(0)
    encoder = timm.create_model(name, num_classes=0, **DINOV2_TINY).eval()
    head = make_head("linear", 32 * 3, 10, 0)
    teacher = freeze_teacher(ProbedModel(encoder, head, 2, True), apply_overrides(
        Recipe(), [f"teacher.name={name}", f"teacher.kwargs={DINOV2_TINY}",
                   "teacher.dtype=fp32"]).teacher, (0.5,) * 3,
        (0.25,) * 3, 56)
    shapes = teacher.enable_features(True, torch.device("cpu"))  # checks the proxy path
    assert shapes == {"split": (32, 4, 4), "final": (32, 4, 4)}
    x = torch.randn(2, 3, 56, 56)
    out = teacher(x)
    x_t = teacher.prepare_input(x)
    with torch.no_grad():
        tokens = encoder.forward_features(x_t)
        split = encoder.forward_intermediates(x_t, indices=[2], intermediates_only=True)[0]
        logits = head(probe_features(encoder, x_t, 2, True))
    assert encoder.num_prefix_tokens == (5 if "reg4" in name else 1)
    patches = tokens[:, encoder.num_prefix_tokens:].transpose(1, 2).reshape(2, 32, 4, 4)
    assert torch.allclose(out.features["final"], patches, atol=1e-5)
    assert torch.allclose(out.features["split"], split, atol=1e-5)
    assert torch.allclose(out.logits, logits, atol=1e-5)
    assert torch.allclose(out.proxy(out.features["split"]), out.features["final"], atol=1e-4)


def test_feature_methods_take_a_probed_teacher(probe_dir, tiny_teacher):
    validate(kd_recipe(probe_dir, tiny_teacher, "distill.method=scalekd"))
