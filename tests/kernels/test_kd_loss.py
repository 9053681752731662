"""The Triton KD kernel, run by Triton's interpreter on CPU, against the torch reference.

Triton chooses the interpreter for its own language functions when it is imported, and this
test session imported it long before (DeepSpeed and our kernels module do); so the kernel
checks run in a child pytest started with TRITON_INTERPRET=1, and are skipped here in the
parent, whose `test_kernel_checks_under_the_interpreter` fails if any of them fails.
"""

import os
import subprocess
import sys

import pytest
import torch
import triton  # noqa: F401  (torch's Linux wheels ship it: no skip, its absence fails)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from helpers.runs import subprocess_env
from scalekd.kernels import kd_loss as module
from scalekd.kernels.kd_loss import FusedKDLoss, bytes_per_row, kd_loss, kd_loss_reference

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def interpreted_only(test):
    """Run in the interpreted child only (the parent's launcher fails if any of them fails)."""
    skip = pytest.mark.skipif(not INTERPRETED, reason="run in the interpreted child")
    return pytest.mark.ci_may_skip(skip(test))


@pytest.mark.skipif(INTERPRETED, reason="the parent's launcher")
@pytest.mark.ci_may_skip
def test_kernel_checks_under_the_interpreter():
    env = {**subprocess_env(), "TRITON_INTERPRET": "1"}
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            __file__], env=env, capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stdout[-6000:] + child.stderr[-3000:]
    # everything ran but this launcher
    assert " passed, 1 skipped" in child.stdout and "failed" not in child.stdout, child.stdout


def both(rows: int, classes: int, temperature: float, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    s = (4 * torch.randn(rows, classes, generator=g)).to(dtype)
    t = (4 * torch.randn(rows, classes, generator=g)).to(dtype)
    fused_in, ref_in = s.clone().requires_grad_(), s.clone().requires_grad_()
    fused = FusedKDLoss.apply(fused_in, t, temperature)
    ref = kd_loss_reference(ref_in, t, temperature)
    (2.5 * fused).backward()  # a grad_output other than 1
    (2.5 * ref).backward()
    return fused, ref, fused_in.grad, ref_in.grad


@interpreted_only
@pytest.mark.parametrize("rows, classes, temperature", [
    (70, 1000, 4.0),  # ImageNet's classes; rows past one program's 64
    (3, 21841, 1.0),  # ImageNet-21k teachers: many column chunks
    (129, 10, 0.5),  # fewer classes than a chunk; three programs
    (1, 1, 2.0),
])
def test_fp32_matches_the_reference(rows, classes, temperature):
    fused, ref, g_fused, g_ref = both(rows, classes, temperature, torch.float32, rows)
    assert torch.allclose(fused, ref, rtol=1e-5, atol=1e-6)
    assert torch.allclose(g_fused, g_ref, rtol=1e-4, atol=1e-8)


@interpreted_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_accumulate_in_fp32(dtype):
    fused, ref, g_fused, g_ref = both(40, 1000, 2.0, dtype, 7)
    assert fused.dtype == torch.float32 and g_fused.dtype == dtype
    # the reference upcasts the same half-precision inputs: only fp32 summation order differs
    assert torch.allclose(fused, ref, rtol=1e-5)
    assert torch.allclose(g_fused.float(), g_ref.float(), rtol=2e-2, atol=1e-6)


@interpreted_only
def test_random_shapes():
    g = torch.Generator().manual_seed(123)
    for _ in range(5):
        rows = int(torch.randint(1, 100, (1,), generator=g))
        classes = int(torch.randint(2, 3000, (1,), generator=g))
        temperature = float(torch.empty(1).uniform_(0.5, 8.0, generator=g))
        fused, ref, g_fused, g_ref = both(rows, classes, temperature, torch.float32, rows)
        assert torch.allclose(fused, ref, rtol=1e-5, atol=1e-6), (rows, classes)
        assert torch.allclose(g_fused, g_ref, rtol=1e-4, atol=1e-8), (rows, classes)


def test_dispatch(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    calls = []
    monkeypatch.setattr(FusedKDLoss, "apply", lambda *a: calls.append(a) or torch.tensor(0.0))
    kd_loss(s, t, 2.0)  # a CPU tensor without the interpreter: the reference
    assert calls == []
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    kd_loss(s, t, 2.0)
    assert len(calls) == 1
    monkeypatch.setattr(module, "triton", None)  # no triton installed: the reference
    kd_loss(s, t, 2.0)
    assert len(calls) == 1


class _Traffic(TorchDispatchMode):
    """Bytes each aten op reads and writes (views move none): what eager torch moves."""

    VIEWS = ("aten.detach.", "aten.expand.", "aten.view.", "aten.t.", "aten.alias.")

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not str(func).startswith(self.VIEWS):
            tensors = [t for t in tree_flatten((args, kwargs or {}, out))[0]
                       if isinstance(t, torch.Tensor) and t.numel() > 1]
            self.bytes += sum(t.numel() * t.element_size() for t in tensors)
        return out


def test_fused_moves_fewer_bytes():
    """The eager figure of bytes_per_row (what the benchmark prints) against the traffic of the
    ops eager torch really runs (forward + backward, bf16 logits): the formula must not
    overstate it, and the fused kernel's (its loads and stores: s and t read twice, the fp32
    gradient written and read once more) must stay under half of it."""
    rows = 4
    for classes in (1000, 21841):
        s = torch.randn(rows, classes, dtype=torch.bfloat16, requires_grad=True)
        t = torch.randn(rows, classes, dtype=torch.bfloat16)
        with _Traffic() as traffic:
            kd_loss_reference(s, t, 4.0).backward()
        measured = traffic.bytes / rows
        moved = bytes_per_row(classes)
        assert moved["eager"] <= measured <= 1.5 * moved["eager"], (measured, moved)
        assert moved["fused"] < measured / 2
