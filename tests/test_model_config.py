"""A model's preprocessing comes from timm's data config of that model, for hub and folder
names as for registry names (issue 20, item 4): no ImageNet mean/std where the model's
pretrained_cfg says otherwise, its own resolution, and the recipe's explicit settings first."""

import pytest
import timm
import torch

from helpers.timm_sources import add_to_hub_cache, offline_hub, write_timm_folder
from scalekd.data.loader import eval_interpolation
from scalekd.engine.validation import validate
from scalekd.model_config import data_config
from scalekd.models import create_student
from scalekd.recipe import Recipe, RecipeError, StudentCfg, apply_overrides

STUDENT_MEAN, STUDENT_STD = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def hub_student(tmp_path_factory):
    """An `hf-hub:` name whose config.json (in an offline cache) says 48 px, bilinear and
    non-ImageNet statistics; returns (cache, name)."""
    base = tmp_path_factory.mktemp("hub")
    write_timm_folder(base / "folder", 48, STUDENT_MEAN, STUDENT_STD, "bilinear")
    return base / "cache", add_to_hub_cache(base / "cache", "scalekd-test/tiny-vit",
                                            base / "folder")


def test_a_hub_model_gets_its_own_statistics_and_resolution(hub_student, monkeypatch):
    cache, name = hub_student
    offline_hub(monkeypatch, cache)
    own = data_config(name)
    assert own["mean"] == STUDENT_MEAN and own["std"] == STUDENT_STD
    assert own["input_size"] == (3, 48, 48) and own["fixed_input_size"]
    assert own["interpolation"] == "bilinear"
    # what the student built from that name says of itself, as timm resolves it
    student = create_student(StudentCfg(name=name), 10)
    built = timm.data.resolve_model_data_config(student)
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in built.items()} == {
        k: v for k, v in own.items() if k != "fixed_input_size"}
    # a registry name is unchanged: its pretrained_cfg's (VGG: bilinear, 224 px, not fixed)
    vgg = data_config("vgg11")
    assert vgg["interpolation"] == "bilinear" and not vgg["fixed_input_size"]
    assert vgg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN


def test_the_kwargs_resolution_is_the_models(hub_student, monkeypatch):
    offline_hub(monkeypatch, hub_student[0])
    assert data_config(hub_student[1], {"img_size": 32})["input_size"] == (3, 32, 32)
    assert data_config("vit_tiny_patch16_224", {"img_size": (32, 40)})["input_size"] == (3, 32, 40)
    assert not data_config("vit_tiny_patch16_224", {"dynamic_img_size": True})["fixed_input_size"]


def test_evaluation_interpolation_is_the_students_unless_the_recipe_sets_one(hub_student,
                                                                               monkeypatch):
    offline_hub(monkeypatch, hub_student[0])
    assert eval_interpolation("random", hub_student[1]) == "bilinear"
    assert eval_interpolation("nearest", hub_student[1]) == "nearest"


def test_the_teachers_resolution_is_its_own_unless_the_recipe_sets_one(tmp_path):
    from scalekd.models.teacher import teacher_input_size
    from scalekd.recipe import TeacherCfg

    write_timm_folder(tmp_path / "vit", 40, (0.5,) * 3, (0.5,) * 3)
    vit = TeacherCfg(name=f"local-dir:{tmp_path / 'vit'}")
    assert teacher_input_size(vit, student_size=48) == 40  # fixed: its own
    assert teacher_input_size(TeacherCfg(name=vit.name, input_size=32), 48) == 32
    assert teacher_input_size(TeacherCfg(name=vit.name, kwargs={"img_size": 24}), 48) == 24
    assert teacher_input_size(TeacherCfg(name="resnet18"), 48) == 48  # a CNN: the student's


def test_the_students_resolution_and_an_unreadable_hub_name_are_checked_first(hub_student,
                                                                              monkeypatch):
    cache, name = hub_student
    offline_hub(monkeypatch, cache)
    base = ["data.source=synthetic", "data.num_samples=8", "data.batch_size=4",
            "distill.method=supervised", f"student.name={name}"]
    validate(apply_overrides(Recipe(), [*base, "data.input_size=48"]))
    validate(apply_overrides(Recipe(), [*base, "data.input_size=32",
                                        "student.kwargs={'img_size':32}"]))
    with pytest.raises(RecipeError) as err:
        validate(apply_overrides(Recipe(), [*base, "data.input_size=32"]))
    assert err.value.problems == [
        f"data.input_size=32: student {name!r} takes 48 px inputs only (timm's data config of "
        "the model); set data.input_size=48, or build it for 32 px with "
        "student.kwargs.img_size=32"]
    with pytest.raises(RecipeError, match=r"student.name='hf-hub:scalekd-test/absent': timm "
                                          r"cannot build this model's config .*local-dir:"):
        validate(apply_overrides(Recipe(), [*base, "student.name=hf-hub:scalekd-test/absent"]))


def test_the_trainer_normalises_for_the_student_and_renormalises_for_the_teacher(
        hub_student, tmp_path, monkeypatch):
    """One training step with a hub student (48 px, its statistics) and a local-dir teacher
    (40 px, others): the training batches are normalised with the student's statistics, the
    teacher gets its own statistics and resolution."""
    from scalekd.engine import teachers, trainer

    cache, student = hub_student
    offline_hub(monkeypatch, cache)
    teacher_mean, teacher_std = (0.6, 0.5, 0.4), (0.3, 0.3, 0.3)
    write_timm_folder(tmp_path / "teacher", 40, teacher_mean, teacher_std, seed=1)
    seen = {}

    def build_train_data(recipe, images, mean, std, *args, **kwargs):
        seen["mean"], seen["std"] = tuple(mean), tuple(std)
        return real_data(recipe, images, mean, std, *args, **kwargs)

    def create_teacher(*args, **kwargs):
        seen["teacher"] = real_teacher(*args, **kwargs)
        return seen["teacher"]

    real_data, real_teacher = trainer.build_train_data, teachers.recipe_teacher
    monkeypatch.setattr(trainer, "build_train_data", build_train_data)
    monkeypatch.setattr(teachers, "recipe_teacher", create_teacher)
    trainer.train(apply_overrides(Recipe(), [
        "data.source=synthetic", "data.num_samples=8", "data.batch_size=4", "data.workers=0",
        "data.input_size=48", f"student.name={student}",
        f"teacher.name=local-dir:{tmp_path / 'teacher'}", "teacher.pretrained=true",
        "teacher.dtype=fp32", "distill.method=kd", "run.max_steps=1", "run.epochs=1",
        f"run.dir={tmp_path / 'run'}", "optim.name=adamw", "optim.warmup_epochs=0"]))
    assert seen["mean"] == STUDENT_MEAN and seen["std"] == STUDENT_STD
    teacher = seen["teacher"]
    assert teacher.input_size == 40
    pixels = torch.rand(2, 3, 48, 48)
    as_student = (pixels - torch.tensor(STUDENT_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        STUDENT_STD).view(1, 3, 1, 1)
    as_teacher = (pixels - torch.tensor(teacher_mean).view(1, 3, 1, 1)) / torch.tensor(
        teacher_std).view(1, 3, 1, 1)
    want = torch.nn.functional.interpolate(as_teacher, size=(40, 40), mode="bicubic",
                                           align_corners=False)
    assert torch.allclose(teacher.prepare_input(as_student.to(teacher.scale.device)).cpu(), want,
                          atol=1e-5)
