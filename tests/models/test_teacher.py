"""The frozen teacher: weights from files, frozen for good, its own normalisation/resolution."""

import pytest
import timm
import torch
from safetensors.torch import save_file

from scalekd.models.teacher import create_teacher
from scalekd.recipe import RecipeError, TeacherCfg

KW = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 2}
STUDENT_MEAN, STUDENT_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=10, **KW)
    path = tmp_path_factory.mktemp("teacher") / "vit.safetensors"
    save_file(model.state_dict(), path)
    return model.eval(), path


def make(path, **cfg):
    cfg = TeacherCfg(name="vit_tiny_patch16_224", checkpoint=str(path), kwargs=KW,
                     **{"dtype": "fp32", **cfg})
    return create_teacher(cfg, 10, STUDENT_MEAN, STUDENT_STD, student_size=32)


def test_loads_weights_and_renormalises(vit_file):
    reference, path = vit_file
    teacher = make(path)
    pixels = torch.rand(4, 3, 32, 32)  # what augmentation produced, before normalisation
    student_view = (pixels - 0.5) / 0.25
    mean = torch.tensor(reference.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(reference.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = reference((pixels - mean) / std)
    assert torch.allclose(teacher(student_view).logits, want, atol=1e-5)


def test_the_students_pixels_pass_as_they_are_when_the_normalisations_match(vit_file):
    reference, path = vit_file
    cfg = reference.pretrained_cfg
    teacher = create_teacher(TeacherCfg(name="vit_tiny_patch16_224", checkpoint=str(path),
                                        kwargs=KW, dtype="fp32"), 10, cfg["mean"], cfg["std"],
                             student_size=32)
    pixels = torch.randn(2, 3, 32, 32)
    assert teacher.prepare_input(pixels) is pixels  # no arithmetic, no copy
    with torch.no_grad():
        assert torch.equal(teacher(pixels).logits, reference(pixels))


def test_frozen_and_eval_for_good(vit_file):
    teacher = make(vit_file[1])
    container = torch.nn.ModuleDict({"teacher": teacher})
    container.train()
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = teacher(x).logits
    assert not out.requires_grad  # no autograd graph through the teacher


def test_own_resolution(vit_file, tmp_path):
    big = timm.create_model("vit_tiny_patch16_224", num_classes=10, **{**KW, "img_size": 48})
    path = tmp_path / "big.safetensors"
    save_file(big.state_dict(), path)
    cfg = TeacherCfg(name="vit_tiny_patch16_224", checkpoint=str(path),
                     kwargs={**KW, "img_size": 48}, input_size=48, dtype="fp32")
    teacher = create_teacher(cfg, 10, STUDENT_MEAN, STUDENT_STD, student_size=32)
    assert teacher.prepare_input(torch.randn(2, 3, 32, 32)).shape[-1] == 48
    assert teacher(torch.randn(2, 3, 32, 32)).logits.shape == (2, 10)


@pytest.mark.parametrize("case", ["other classes", "other depth", "garbled", "not weights"])
def test_a_weights_file_that_does_not_fit_names_what_differs(tmp_path, case):
    """Raw load_state_dict / SafetensorError tracebacks become a RecipeError naming the field,
    the tensors and the class counts."""
    path = tmp_path / "teacher.safetensors"
    if case in ("other classes", "other depth"):
        kwargs = {**KW, "depth": 3} if case == "other depth" else KW
        model = timm.create_model("vit_tiny_patch16_224", num_classes=7 if case == "other classes"
                                  else 10, **kwargs)
        save_file(model.state_dict(), path)
    else:
        path.write_bytes(b"\x00" * 64 if case == "garbled" else b"not a weights file at all")
    expected = {
        "other classes": r"its classifier head.weight \(7, 48\) predicts 7 classes, the data "
                         r"has 10",
        "other depth": r"12 tensors the model does not have: blocks.2.",
        "garbled": r"neither a safetensors file nor a torch checkpoint \(damaged\?\); "
                   r"SafetensorError",
        "not weights": r"neither a safetensors file nor a torch checkpoint",
    }[case]
    with pytest.raises(RecipeError, match=r"teacher.checkpoint='.*teacher.safetensors' .*"
                                          + expected):
        make(path)


def test_bf16_forward_close_to_fp32(vit_file):
    """bf16 rounding moves these logits (|max| about 0.2) by about 1.6e-3; a teacher that
    skipped its re-normalisation would be 2.7e-2 off (both measured), so 5e-3 tells them apart."""
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fp32 = make(vit_file[1])(x).logits
    bf16 = make(vit_file[1], dtype="bf16")(x)
    assert bf16.logits.dtype == torch.float32
    assert (bf16.logits - fp32).abs().max() < 5e-3


def test_torch_checkpoint_loaded_weights_only(vit_file, tmp_path):
    reference, _ = vit_file
    path = tmp_path / "teacher.pth"
    torch.save({"state_dict": reference.state_dict(), "epoch": 3}, path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(make(path)(x).logits, make(vit_file[1])(x).logits)
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": reference.state_dict(), "obj": object()}, evil)
    with pytest.raises(RecipeError, match="teacher.checkpoint=.*weights_only=True blocked"):
        make(evil)


def test_hub_teacher_with_other_classes_is_refused():
    cfg = TeacherCfg(name="vit_tiny_patch16_224", pretrained=True)
    with pytest.raises(ValueError, match="predicts 1000 classes, the data has 10"):
        create_teacher(cfg, 10, STUDENT_MEAN, STUDENT_STD, 32)


def offline_hub(monkeypatch, cache) -> None:
    """The hub as on a compute node without internet: offline, with `cache` as its cache (no
    network time-outs, and no weights from this machine's own cache)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))


def test_hub_teacher_loads_weights_from_the_hub_cache(monkeypatch, tmp_path):
    """The hub path end to end, with weights we save ourselves where the hub client keeps
    downloads (a user's machine after its first download)."""
    name = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    repo = timm.models.get_pretrained_cfg(name).hf_hub_id
    snapshot = tmp_path / f"models--{repo.replace('/', '--')}" / "snapshots" / "local"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("local")
    torch.manual_seed(0)
    saved = timm.create_model("vit_tiny_patch16_224", num_classes=1000, **KW)
    save_file(saved.state_dict(), snapshot / "model.safetensors")
    offline_hub(monkeypatch, tmp_path)
    cfg = TeacherCfg(name=name, pretrained=True, kwargs=KW, dtype="fp32")
    teacher = create_teacher(cfg, 1000, STUDENT_MEAN, STUDENT_STD, 32)
    for key, value in saved.state_dict().items():
        assert torch.equal(teacher.model.state_dict()[key], value), key


def test_hub_failure_names_the_fix(monkeypatch, tmp_path):
    offline_hub(monkeypatch, tmp_path)  # an empty cache: nothing to load
    cfg = TeacherCfg(name="vit_tiny_patch16_224.augreg_in21k_ft_in1k", pretrained=True)
    with pytest.raises(RuntimeError, match="pass teacher.checkpoint="):
        create_teacher(cfg, 1000, STUDENT_MEAN, STUDENT_STD, 32)
