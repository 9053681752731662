"""ScaleKD on real timm families in tiny configurations: every student family x teacher family
lines up and trains a step; gradients reach student and projectors, never the teacher; the
teacher cannot leave eval mode; the ablation switches build what they say."""

import pytest
import torch

from scalekd.engine.students import build_student
from scalekd.models.teacher import FrozenTeacher
from scalekd.recipe import Recipe, apply_overrides

from helpers.tiny_models import SWIN, TEACHERS, make_teacher

SIZE = 64  # the students' resolution: a 2x2 map at 1/32
STUDENTS = {
    "resnet18d": {},  # ResNet-D, BatchNorm
    "mobilenetv3_small_050": {},
    "convnextv2_atto": {},
    "swin_tiny_patch4_window7_224": SWIN,  # NHWC maps, LayerNorm2d CAPs
    "vit_tiny_patch16_224": {"img_size": 64, "depth": 4},  # tokens with a class token
    "mixer_s16_224": {"img_size": 64},  # tokens without prefix
}


def scalekd_recipe(student: str, *extra: str) -> Recipe:
    return apply_overrides(Recipe(), [
        "distill.method=scalekd", f"student.name={student}",
        f"student.kwargs={STUDENTS[student]}", f"data.input_size={SIZE}", *extra])


def one_step(student: str, teacher: FrozenTeacher, *extra: str):
    shapes = teacher.enable_features(scalekd_recipe(student, *extra).distill.tpp, "cpu")
    model, optimizer, _, distiller = build_student(scalekd_recipe(student, *extra), 10, 1,
                                                   shapes)
    model.train()
    teacher.train()  # what a training loop does every epoch: must not take effect
    images, targets = torch.randn(2, 3, SIZE, SIZE), torch.tensor([1, 2])
    _, terms = model(images, targets, teacher(images))
    loss = distiller.total(terms)
    loss.backward()
    optimizer.step()
    return model, terms


@pytest.mark.parametrize("teacher_name", TEACHERS)
@pytest.mark.parametrize("student_name", STUDENTS)
def test_every_pair_trains_a_step(student_name, teacher_name):
    teacher = make_teacher(teacher_name)
    model, terms = one_step(student_name, teacher)
    assert set(terms) == {"hard", "kd", "spatial.s3", "spatial.s4", "frequency.s3",
                          "frequency.s4"}
    assert all(torch.isfinite(v) for v in terms.values())
    assert not teacher.model.training and not any(m.training for m in teacher.modules())
    assert all(p.grad is None for p in teacher.parameters())
    projector_grads = [p.grad for p in model.distiller.parameters()]
    assert projector_grads and all(g is not None and torch.isfinite(g).all()
                                   for g in projector_grads)
    assert all(p.grad is not None for p in model.student.parameters())


def test_student_gradient_flows_through_the_proxy_path():
    """With TPP the stage-3 terms reach the student only through the teacher's last stages."""
    teacher = make_teacher("swin_tiny_patch4_window7_224")
    shapes = teacher.enable_features(True, "cpu")
    model, *_ = build_student(scalekd_recipe("resnet18d"), 10, 1, shapes)
    images = torch.randn(2, 3, SIZE, SIZE)
    _, terms = model(images, torch.tensor([0, 1]), teacher(images))
    terms["spatial.s3"].backward()
    assert sum(p.grad.abs().sum() for p in model.student.layer3.parameters()) > 0
    assert all(p.grad is None for p in model.student.layer4.parameters())  # stage 4 not in it
    assert model.distiller.caps["spatial_s3"].embed[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("teacher_name", TEACHERS)
def test_proxy_rebuilds_the_teachers_output(teacher_name):
    teacher = make_teacher(teacher_name)
    teacher.enable_features(True, "cpu")
    images = torch.randn(2, 3, SIZE, SIZE)
    out = teacher(images)
    with torch.no_grad():
        rebuilt = out.proxy(out.features["split"])
    torch.testing.assert_close(rebuilt, out.features["final"], rtol=1e-4, atol=1e-4)
    # and the logits come from the same pass as the features
    torch.testing.assert_close(out.logits, teacher.model(teacher.prepare_input(images)))


def test_ablation_switches():
    teacher = make_teacher("vit_tiny_patch16_224")
    _, cap_only = one_step("resnet18d", teacher, "distill.dfm_beta=1", "distill.tpp=false")
    assert set(cap_only) == {"hard", "kd", "spatial.s3", "spatial.s4"}
    model, with_dfm = one_step("resnet18d", teacher, "distill.tpp=false")
    assert {"frequency.s3", "frequency.s4"} < set(with_dfm)
    # without TPP every CAP queries with a learned table; with TPP stage 4 has none
    assert all(cap.queries is not None for cap in model.distiller.caps.values())
    tpp_model, _ = one_step("resnet18d", teacher)
    assert tpp_model.distiller.caps["spatial_s4"].queries is None


def test_weights_are_the_authors():
    teacher = make_teacher("vit_tiny_patch16_224")
    _, _, _, distiller = build_student(scalekd_recipe("resnet18d"), 10, 1,
                                       teacher.enable_features(True, "cpu"))
    w = distiller.weights
    assert (w["hard"], w["kd"]) == (0.5, 0.5)
    assert w["spatial"] == pytest.approx(0.08) and w["frequency"] == pytest.approx(0.06)
    terms = {"hard": torch.tensor(1.0), "kd": torch.tensor(2.0), "spatial.s3": torch.tensor(3.0),
             "spatial.s4": torch.tensor(4.0), "frequency.s3": torch.tensor(5.0)}
    assert distiller.total(terms).item() == pytest.approx(0.5 + 1.0 + 0.08 * 7 + 0.06 * 5)


def test_heads_follow_the_authors_and_fit_the_width():
    teacher = make_teacher("swin_tiny_patch4_window7_224")  # widths 96 (split), 192 (final)
    _, _, _, distiller = build_student(scalekd_recipe("resnet18d"), 10, 1,
                                       teacher.enable_features(True, "cpu"))
    assert distiller.caps["spatial_s3"].heads == 16  # ResNet: 16 / 24 as the authors
    assert distiller.caps["spatial_s4"].heads == 24
    _, _, _, convnext = build_student(scalekd_recipe("convnextv2_atto"), 10, 1,
                                      teacher.enable_features(True, "cpu"))
    assert (convnext.caps["spatial_s3"].heads, convnext.caps["spatial_s4"].heads) == (8, 16)


def test_cap_norm_is_the_authors_per_student_and_a_choice():
    """BatchNorm for ConvNeXt (and every non-Swin student), LayerNorm2d for Swin students."""
    teacher = make_teacher("vit_tiny_patch16_224")
    shapes = teacher.enable_features(True, "cpu")

    def norm_of(student, *extra):
        *_, distiller = build_student(scalekd_recipe(student, *extra), 10, 1, shapes)
        return type(distiller.caps["spatial_s3"].embed[1]).__name__

    assert norm_of("convnextv2_atto") == "BatchNorm2d"
    assert norm_of("vit_tiny_patch16_224") == "BatchNorm2d"
    assert norm_of("swin_tiny_patch4_window7_224") == "LayerNorm2d"
    assert norm_of("convnextv2_atto", "distill.cap_norm=layernorm") == "LayerNorm2d"


def test_bf16_teacher_gives_finite_gradients():
    teacher = make_teacher("vit_small_patch14_reg4_dinov2", dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model, terms = one_step("convnextv2_atto", teacher)
    assert all(torch.isfinite(v) for v in terms.values())
    assert all(torch.isfinite(p.grad).all() for p in model.distiller.parameters())


def test_proxy_depth_is_a_choice_in_teacher_blocks():
    """distill.tpp_blocks=2: the proxy runs an isotropic teacher's last 2 blocks (the authors'
    EVA-L proxy) and still rebuilds its output; a hierarchical teacher's proxy is its last stage,
    and a depth that stage does not have is refused."""
    import timm

    from scalekd.models.teacher import FrozenTeacher

    torch.manual_seed(1)
    eva = timm.create_model("eva_large_patch14_196", num_classes=10, img_size=56, depth=8,
                            embed_dim=64, num_heads=2)
    teacher = FrozenTeacher(eva, eva.pretrained_cfg["mean"], eva.pretrained_cfg["std"],
                            eva.pretrained_cfg["mean"], eva.pretrained_cfg["std"], 56,
                            torch.float32)
    teacher.enable_features(True, "cpu", proxy_blocks=2)  # checks the proxy rebuilds the output
    assert [n for n, _ in teacher.stages.remaining] == ["blocks.6", "blocks.7"]
    teacher.enable_features(True, "cpu")  # 0: the last quarter
    assert [n for n, _ in teacher.stages.remaining] == ["blocks.6", "blocks.7"]
    teacher.enable_features(True, "cpu", proxy_blocks=3)
    assert [n for n, _ in teacher.stages.remaining] == ["blocks.5", "blocks.6", "blocks.7"]
    swin = make_teacher("swin_tiny_patch4_window7_224")  # last stage: 1 block here
    swin.enable_features(True, "cpu", proxy_blocks=1)
    with pytest.raises(ValueError, match="distill.tpp_blocks=2: the proxy path of a hier"):
        swin.enable_features(True, "cpu", proxy_blocks=2)
