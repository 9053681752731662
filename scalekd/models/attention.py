"""Which kernel runs the teacher's and the CAP projectors' attention (`teacher.attention`).

  sdpa      torch's scaled_dot_product_attention: flash / memory-efficient kernels on GPU, a
            flash kernel on CPU (the default)
  eager     the explicit softmax(q k^T) v: timm's own non-fused path in the teacher, torch's
            math kernel in CAP (the reference to compare against)
  xformers  xformers.ops.memory_efficient_attention, on CUDA with xformers installed; anywhere
            else it falls back to sdpa with one warning, never an error

timm has no attention-backend hook: its attention modules call `F.scaled_dot_product_attention`
through the `F` name of the file that defines them, when their `fused_attn` flag is set (which
timm leaves off for Swin). `timm_attention` sets that flag on every module of a model and, for
xformers, points those files' `F` at a stand-in for the duration of one forward.
"""

from __future__ import annotations

import functools
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

@functools.cache
def xformers_installed() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except ImportError:
        return False
    return True


def usable_backend(backend: str, device: torch.device) -> str:
    """`backend`, or sdpa where xformers cannot run (one warning per process)."""
    if backend != "xformers":
        return backend
    reason = (f"xformers has no {device.type} kernels" if device.type != "cuda" else
              None if xformers_installed() else "xformers is not installed (pip install xformers)")
    if reason is None:
        return backend
    _warn_once(f"teacher.attention=xformers: {reason}; attention runs through torch SDPA")
    return "sdpa"


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message)


_WARNED: set[str] = set()


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
           is_causal: bool = False, scale: Optional[float] = None, *,
           backend: str = "sdpa") -> torch.Tensor:
    """F.scaled_dot_product_attention's arguments ((B, H, N, D) tensors) on `backend`."""
    backend = usable_backend(backend, q.device)
    if backend == "xformers":
        return _xformers_attention(q, k, v, attn_mask, dropout_p, is_causal, scale)
    if backend == "eager":
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal,
                                                  scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale=scale)


def _xformers_attention(q, k, v, attn_mask, dropout_p, is_causal, scale):
    import xformers.ops as xops

    bias = None
    if is_causal:
        bias = xops.LowerTriangularMask()
    elif attn_mask is not None:
        bias = xformers_bias(attn_mask, q, k)
    # xformers lays tensors out as (B, N, H, D)
    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2),
                                          v.transpose(1, 2), attn_bias=bias, p=dropout_p,
                                          scale=scale)
    return out.transpose(1, 2)


# xformers' kernel reads a bias in 16-byte vectors: each of its strides but the last must be a
# multiple of 16 bytes' worth of elements and its data 16-byte aligned (fmha's
# `_check_bias_alignment`, the kernel's CHECK_ALIGNED_PTR); otherwise no operator accepts it.
# 197 tokens (ViT/BEiT at 224 px) are not such a multiple.
BIAS_ALIGNMENT_BYTES = 16


def xformers_bias(attn_mask: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """SDPA's `attn_mask` (additive, or boolean: True = attend) as the additive (B, H, N, M)
    bias xformers takes: written into rows padded to a multiple of the alignment and sliced back
    to M keys, the layout xformers documents; a mask shared by the batch stays shared."""
    heads, queries, keys = q.shape[1], q.shape[2], k.shape[2]
    batch = attn_mask.shape[0] if attn_mask.ndim == 4 else 1
    step = BIAS_ALIGNMENT_BYTES // q.element_size()
    padded = torch.empty(batch, heads, queries, -(-keys // step) * step, dtype=q.dtype,
                         device=q.device)
    bias = padded[..., :keys]
    if attn_mask.dtype == torch.bool:
        bias.zero_().masked_fill_(~attn_mask.expand(bias.shape), float("-inf"))
    else:
        bias.copy_(attn_mask.expand(bias.shape))
    return bias.expand(q.shape[0], heads, queries, keys)


class _FunctionalWithAttention:
    """torch.nn.functional with scaled_dot_product_attention replaced."""

    def __init__(self, backend: str):
        self.scaled_dot_product_attention = functools.partial(attend, backend=backend)

    def __getattr__(self, name: str):
        return getattr(F, name)


def set_fused_attention(model: nn.Module, backend: str) -> int:
    """Turn timm's fused (SDPA) path on for sdpa / xformers, off for eager, in every attention
    module of `model`; returns how many modules have the switch."""
    modules = [m for m in model.modules() if hasattr(m, "fused_attn")]
    for m in modules:
        m.fused_attn = backend != "eager"
    return len(modules)


@contextmanager
def timm_attention(model: nn.Module, backend: str, device: torch.device) -> Iterator[None]:
    """Within the block, `model`'s timm attention modules run on `backend`."""
    if usable_backend(backend, device) != "xformers":
        yield
        return
    classes = {type(m) for m in model.modules() if hasattr(m, "fused_attn")}
    files = {sys.modules[c.__module__] for c in classes}
    files = [f for f in files if getattr(f, "F", None) is F]
    for c in sorted(classes, key=lambda c: c.__qualname__):
        if sys.modules[c.__module__] not in files:  # calls torch.nn.functional by full name
            _warn_once(f"teacher.attention=xformers: timm's {c.__qualname__} calls torch's SDPA "
                       "by its full name and stays on it")
    for f in files:
        f.F = _FunctionalWithAttention(backend)
    try:
        yield
    finally:
        for f in files:
            f.F = F
