"""Attention backends and teacher speed options: each gives the reference's outputs on real timm
families; xformers falls back on CPU with one warning, and its route (layout, biases) is checked
against a stand-in kernel; invalid combinations are refused before any compute."""

import sys
import types
import warnings

import pytest
import torch

from scalekd.distill.cap import CrossAttentionProjector
from scalekd.models import attention
from scalekd.engine.validation import validate
from scalekd.recipe import Recipe, RecipeError, apply_overrides

from helpers.tiny_models import TEACHERS, make_teacher

REDIRECTED = ["vit_tiny_patch16_224",  # plain ViT / DINOv2's attention
              "beitv2_base_patch16_224",  # relative position bias as a float mask
              "eva02_tiny_patch14_224"]  # rotary embedding
ATTENTION_TEACHERS = [*REDIRECTED, "swin_tiny_patch4_window7_224"]  # timm leaves Swin unfused


def images_for(name: str) -> torch.Tensor:
    size = TEACHERS[name][1]
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ATTENTION_TEACHERS)
def test_sdpa_teacher_equals_eager(name):
    x = images_for(name)
    eager = make_teacher(name, attention="eager")
    sdpa = make_teacher(name, attention="sdpa")
    assert all(m.fused_attn for m in sdpa.modules() if hasattr(m, "fused_attn"))
    assert not any(m.fused_attn for m in eager.modules() if hasattr(m, "fused_attn"))
    torch.testing.assert_close(sdpa(x).logits, eager(x).logits, rtol=1e-4, atol=1e-4)


def xformers_bias_problems(bias: torch.Tensor) -> list[str]:
    """Why xformers' memory-efficient kernel would refuse a tensor `attn_bias` (xformers 0.0.35):
    fmha's `_check_bias_alignment` wants every stride but the last a multiple of 128 bits'
    worth of elements and the last stride 0 or 1; the CUTLASS kernel's CHECK_ALIGNED_PTR wants
    the data 16-byte aligned."""
    alignment = 128 // torch.finfo(bias.dtype).bits
    problems = [f"attn_bias.stride({d}) % {alignment} != 0 ({bias.stride()})"
                for d in range(bias.ndim - 1) if bias.stride(d) % alignment]
    if bias.stride(-1) > 1:
        problems.append(f"attn_bias.stride(-1) > 1 ({bias.stride()})")
    if bias.data_ptr() % 16:
        problems.append(f"attn_bias data at {bias.data_ptr()} is not 16-byte aligned")
    return problems


@pytest.fixture
def stand_in_xformers(monkeypatch):
    """An `xformers.ops` whose kernel is torch's math attention on xformers' (B, N, H, D)
    layout, refusing what real xformers refuses, and a device check that lets it run on CPU:
    records every call."""
    calls = []

    def memory_efficient_attention(q, k, v, attn_bias=None, p=0.0, scale=None):
        assert q.dim() == 4 and q.shape[2] == k.shape[2]  # (B, N, H, D): heads third
        if attn_bias is not None:
            assert attn_bias.shape == (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
            assert attn_bias.dtype == q.dtype
            assert not xformers_bias_problems(attn_bias)
        calls.append(tuple(q.shape))
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias, p, scale=scale)
        return out.transpose(1, 2)

    ops = types.SimpleNamespace(memory_efficient_attention=memory_efficient_attention,
                                LowerTriangularMask=None)
    monkeypatch.setitem(sys.modules, "xformers", types.SimpleNamespace(ops=ops))
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    monkeypatch.setattr(attention, "usable_backend", lambda backend, device: backend)
    return calls


@pytest.mark.parametrize("name", REDIRECTED)
def test_xformers_route_reaches_every_attention(name, stand_in_xformers):
    x = images_for(name)
    reference = make_teacher(name, attention="sdpa")(x).logits
    teacher = make_teacher(name, attention="xformers")
    torch.testing.assert_close(teacher(x).logits, reference, rtol=1e-4, atol=1e-4)
    attention_modules = sum(hasattr(m, "fused_attn") for m in teacher.modules())
    assert len(stand_in_xformers) == attention_modules > 0
    assert torch.nn.functional.scaled_dot_product_attention  # torch itself untouched
    module = sys.modules[type(next(m for m in teacher.modules()
                                   if hasattr(m, "fused_attn"))).__module__]
    assert module.F is torch.nn.functional  # the redirect ends with the forward


def test_xformers_route_names_what_it_cannot_reach(stand_in_xformers, monkeypatch):
    monkeypatch.setattr(attention, "_WARNED", set())
    x = images_for("swin_tiny_patch4_window7_224")
    reference = make_teacher("swin_tiny_patch4_window7_224", attention="sdpa")(x).logits
    teacher = make_teacher("swin_tiny_patch4_window7_224", attention="xformers")
    with pytest.warns(UserWarning, match="timm's WindowAttention calls torch's SDPA by its full "
                                         "name and stays on it"):
        logits = teacher(x).logits
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)
    assert not stand_in_xformers


def test_xformers_on_cpu_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(attention, "_WARNED", set())
    x = images_for("vit_tiny_patch16_224")
    reference = make_teacher("vit_tiny_patch16_224", attention="sdpa")(x).logits
    teacher = make_teacher("vit_tiny_patch16_224", attention="xformers")
    cap = CrossAttentionProjector(8, (4, 4), 16, (2, 2), 2, attention="xformers")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logits = teacher(x).logits
        teacher(x)
        cap(torch.randn(2, 8, 4, 4))
    assert [str(w.message) for w in caught] == [
        "teacher.attention=xformers: xformers has no cpu kernels; attention runs through "
        "torch SDPA"]
    torch.testing.assert_close(logits, reference)


def test_cap_attention_backends_agree(stand_in_xformers):
    torch.manual_seed(0)
    student_map, queries = torch.randn(2, 8, 4, 4), torch.randn(2, 4, 16)
    outputs = {}
    for backend in ("sdpa", "eager", "xformers"):
        torch.manual_seed(1)
        cap = CrossAttentionProjector(8, (4, 4), 16, (2, 2), 2, attention=backend)
        outputs[backend] = cap(student_map, queries)
    torch.testing.assert_close(outputs["eager"], outputs["sdpa"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs["xformers"], outputs["sdpa"], rtol=1e-5, atol=1e-5)
    assert stand_in_xformers


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("batch", [1, 2])  # a bias shared by the batch, and one per image
def test_xformers_bias_of_197_tokens_is_laid_out_as_xformers_demands(stand_in_xformers, dtype,
                                                                     batch):
    # BEiT at 224 px: 197 tokens, a relative position bias per head, shared by the batch
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 197, 16, generator=g).to(dtype) for _ in range(3))
    rel_pos = torch.randn(batch, 4, 197, 197, generator=g).to(dtype)
    assert xformers_bias_problems(rel_pos.expand(2, 4, 197, 197))  # what timm hands over
    bias = attention.xformers_bias(rel_pos, q, k)
    assert not xformers_bias_problems(bias)
    assert torch.equal(bias, rel_pos.expand(2, 4, 197, 197))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, rel_pos)
    torch.testing.assert_close(attention.attend(q, k, v, rel_pos, backend="xformers"), want,
                               rtol=2e-2 if dtype == torch.bfloat16 else 1e-5,
                               atol=2e-2 if dtype == torch.bfloat16 else 1e-5)
    assert stand_in_xformers == [(2, 197, 4, 16)]


def test_xformers_turns_a_boolean_mask_into_a_bias(stand_in_xformers):
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    keep = torch.rand(5, 5) > 0.3
    keep[:, 0] = True  # every query sees one key at least
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, keep)
    torch.testing.assert_close(attention.attend(q, k, v, keep, backend="xformers"), want)


def test_channels_last_cnn_teacher_matches():
    x = images_for("resnet18")
    reference = make_teacher("resnet18")(x).logits
    teacher = make_teacher("resnet18", channels_last=True)
    conv = teacher.model.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert teacher.prepare_input(x).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(teacher(x).logits, reference, rtol=1e-4, atol=1e-4)


def test_bf16_teacher_matches_within_bf16_tolerance():
    x = images_for("vit_tiny_patch16_224")
    reference = make_teacher("vit_tiny_patch16_224")(x).logits
    bf16 = make_teacher("vit_tiny_patch16_224", torch.bfloat16)(x).logits
    assert bf16.dtype == torch.float32  # logits handed over in fp32
    torch.testing.assert_close(bf16, reference, rtol=0.05, atol=0.05)


def test_compiled_teacher_matches():
    x = images_for("resnet18")
    reference = make_teacher("resnet18")(x).logits
    teacher = make_teacher("resnet18", compile=True)
    torch.testing.assert_close(teacher(x).logits, reference, rtol=1e-4, atol=1e-4)
    assert teacher._compiled is not None  # the compiled module is what ran
    assert all(not k.startswith("_orig_mod") for k in teacher.state_dict())


@pytest.mark.parametrize("overrides, problem", [
    (["teacher.attention=flash"], "teacher.attention='flash' must be sdpa, eager or xformers"),
    (["teacher.compile=true", "distill.method=scalekd"], "teacher.compile=true: distill.method"),
    (["teacher.compile=true", "teacher.placement=zero3"], "teacher.compile=true needs"),
])
def test_bad_teacher_options_refused(overrides, problem):
    recipe = apply_overrides(Recipe(), ["teacher.name=resnet18", "teacher.pretrained=true",
                                        "data.path=/nonexistent", *overrides])
    with pytest.raises(RecipeError) as err:
        validate(recipe)
    assert any(p.startswith(problem) for p in err.value.problems)
