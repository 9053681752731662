"""Feature taps: where the stages are, token grids <-> maps, hooks that leave nothing behind."""

import timm
import torch

from scalekd.models.taps import Layout, StudentTaps, capture, feature_entries, late_entries
from scalekd.models.teacher_stages import TeacherStages


def test_late_stages_of_hierarchical_and_isotropic_models():
    resnet = timm.create_model("resnet18d")
    assert StudentTaps(resnet).names == ["layer3", "layer4"]
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=8)
    assert StudentTaps(vit).names == ["blocks.5", "blocks.7"]
    assert late_entries(feature_entries(vit)) == (5, 7)


def test_teacher_split_points_come_from_structure():
    swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=64, window_size=2,
                             depths=(1, 1, 1, 1), embed_dim=24, num_heads=(1, 1, 1, 1))
    stages = TeacherStages(swin)
    assert stages.split["module"] == "layers.2"
    assert [n for n, _ in stages.remaining] == ["layers.3"] and stages.norm_name == "norm"
    beit = timm.create_model("beitv2_base_patch16_224", img_size=32, depth=8, embed_dim=32,
                             num_heads=2)
    stages = TeacherStages(beit)  # the last quarter of the blocks
    assert [n for n, _ in stages.remaining] == ["blocks.6", "blocks.7"]
    resnet = TeacherStages(timm.create_model("resnet18"))
    assert [n for n, _ in resnet.remaining] == ["layer4"] and resnet.norm_name is None


def test_token_layout_round_trip_with_registers():
    model = timm.create_model("vit_small_patch14_reg4_dinov2", img_size=56, depth=2,
                              embed_dim=32, num_heads=2)
    tokens = torch.randn(2, 5 + 16, 32)  # class + 4 registers + a 4x4 grid of patch 14
    layout = Layout.of(tokens, model, (56, 56), 14)
    assert (layout.fmt, layout.grid, layout.prefix) == ("NLC", (4, 4), 5)
    fmap = layout.to_map(tokens)
    assert fmap.shape == (2, 32, 4, 4)
    torch.testing.assert_close(fmap[:, :, 0, 1], tokens[:, 5 + 1])  # row-major patches
    torch.testing.assert_close(layout.from_map(fmap, tokens), tokens)


def test_nhwc_layout():
    swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=64, window_size=2,
                             depths=(1, 1, 1, 1), embed_dim=24, num_heads=(1, 1, 1, 1))
    x = torch.randn(2, 4, 4, 96)
    layout = Layout.of(x, swin, (64, 64), 16)
    assert layout.fmt == "NHWC" and layout.to_map(x).shape == (2, 96, 4, 4)
    torch.testing.assert_close(layout.from_map(layout.to_map(x)), x)


def test_a_grid_that_does_not_fit_is_named():
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2)
    try:
        Layout.of(torch.randn(1, 7, 192), vit, (32, 32), 16)
    except ValueError as err:
        assert "1 prefix tokens + a (2, 2) grid" in str(err)
    else:
        raise AssertionError("expected a ValueError")


def test_hooks_are_removed_after_the_forward():
    model = timm.create_model("resnet18")
    with capture(model, outputs_of=["layer3"], inputs_of=["layer4"]) as seen:
        model(torch.randn(1, 3, 64, 64))
    assert seen.outputs["layer3"].shape == (1, 256, 4, 4)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
