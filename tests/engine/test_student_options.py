"""Student speed options (`student.channels_last`, `student.compile`): the student with each
gives the eager, contiguous student's losses over optimiser steps; combinations that cannot work
are refused before compute."""

import pytest
import torch

from scalekd.engine.students import build_student
from scalekd.models.teacher import TeacherOutput
from scalekd.engine.validation import validate
from scalekd.recipe import Recipe, RecipeError, apply_overrides

CNN = ["student.name=resnet18"]  # BatchNorm and convolutions: where channels_last pays
VIT = ["student.name=vit_tiny_patch16_224",
       "student.kwargs={'img_size':32,'patch_size':8,'depth':1}"]


def kd_student(*overrides: str, teacher_shapes=None):
    """A student (model, optimizer, distiller) at 32 px, SGD, KD unless overridden."""
    recipe = apply_overrides(Recipe(), ["data.input_size=32", "distill.method=kd",
                                        "distill.hard_loss=ce", "optim.name=sgd",
                                        "optim.lr=0.1", "optim.warmup_epochs=0", *overrides])
    model, optimizer, _, distiller = build_student(recipe, 10, 4, teacher_shapes)
    return model, optimizer, distiller


def step_losses(model, optimizer, distiller, steps: int = 2,
                teacher=None) -> list[dict[str, float]]:
    """Each step's loss terms on a fixed batch and fixed teacher logits (or `teacher`'s
    output on that batch)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 32, 32, generator=g)
    targets = torch.randint(0, 10, (4,), generator=g)
    teacher = teacher(images) if teacher else TeacherOutput(torch.randn(4, 10, generator=g))
    out = []
    for _ in range(steps):
        _, terms = model(images, targets, teacher)
        loss = distiller.total(terms)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        out.append({name: value.item() for name, value in {**terms, "total": loss}.items()})
    return out


def assert_same_losses(got, want, tolerance: float) -> None:
    assert len(got) == len(want) and all(g.keys() == w.keys() for g, w in zip(got, want))
    for g, w in zip(got, want):
        assert g == pytest.approx(w, rel=tolerance, abs=tolerance)
    assert want[0]["total"] != pytest.approx(want[-1]["total"], rel=1e-3)  # the steps trained


def test_channels_last_student_gives_the_eager_losses():
    want = step_losses(*kd_student(*CNN))
    model, optimizer, distiller = kd_student(*CNN, "student.channels_last=true")
    conv = model.student.conv1
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    seen = []
    conv.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    got = step_losses(model, optimizer, distiller)
    assert seen and all(x.is_contiguous(memory_format=torch.channels_last)
                        and not x.is_contiguous() for x in seen)
    assert_same_losses(got, want, 1e-4)


@pytest.mark.slow  # torch.compile of a forward and backward: minutes on 2 busy cores
def test_compiled_student_gives_the_eager_losses():
    want = step_losses(*kd_student(*VIT))
    model, optimizer, distiller = kd_student(*VIT, "student.compile=true")
    got = step_losses(model, optimizer, distiller)
    assert model._compiled_call_impl is not None  # what ran is the compiled forward + loss
    assert_same_losses(got, want, 1e-4)
    assert not any(".orig_mod" in k or "_orig_mod" in k for k in model.state_dict())


@pytest.mark.parametrize("stage", [2, 3])
def test_channels_last_under_zero_is_refused(stage):
    recipe = apply_overrides(Recipe(), [*CNN, "student.channels_last=true", "optim.name=adamw",
                                        f"dist.zero_stage={stage}", "data.path=/nonexistent"])
    with pytest.raises(RecipeError) as err:
        validate(recipe)
    assert any(p.startswith(f"student.channels_last=true under ZeRO-{stage}: DeepSpeed")
               for p in err.value.problems)
    try:  # the same recipe under DDP passes this check
        validate(apply_overrides(recipe, ["dist.zero_stage=0"]))
        problems = []
    except RecipeError as ddp:
        problems = ddp.problems
    assert not any("channels_last" in p for p in problems)
