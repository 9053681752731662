"""Feature taps on timm models without touching their code.

Where a model's stages are comes from timm's `feature_info` (module name, width, reduction per
stage or block), the same table `forward_intermediates` and `features_only` use. The tensors are
caught with forward hooks on those modules during the model's ordinary forward: that works the
same for a plain module, a DDP replica and a DeepSpeed ZeRO-3 engine, whose parameter gathering
runs only when a module is called (`forward_intermediates` would bypass the top module's call and
find its class token and position embedding still sharded).

What a tap returns differs by family: NCHW maps (ResNet, MobileNet, ConvNeXt), NHWC maps (Swin)
and token sequences with class and register tokens in front (ViT, DeiT, BEiT, DINOv2, EVA) or
without (MLP-Mixer). `Layout` turns each of them into an NCHW map and back, in this one place.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.nn as nn


def feature_entries(model: nn.Module) -> list[dict]:
    """timm's per-stage (or per-block) table: dicts with module, num_chs, reduction."""
    info = getattr(model, "feature_info", None)
    if info is None:
        raise ValueError(f"{type(model).__name__} has no timm feature_info: feature distillation "
                         "needs a timm model whose stages timm knows (features_only support)")
    return list(info) if isinstance(info, list) else list(info.info)


def tapped_model(model: nn.Module) -> tuple[str, nn.Module]:
    """The timm model whose stages are tapped, and its name inside `model` ("" for `model`
    itself): a wrapper around a timm model, such as the probed teacher (encoder + head), names
    that model in its `tapped_module` attribute."""
    name = getattr(model, "tapped_module", "")
    return name, (model.get_submodule(name) if name else model)


def is_isotropic(entries: list[dict]) -> bool:
    """ViT-like: the last entries keep one resolution (blocks), rather than halving (stages)."""
    return len(entries) > 1 and entries[-1]["reduction"] == entries[-2]["reduction"]


def late_entries(entries: list[dict]) -> tuple[int, int]:
    """The 'stage 3' and 'stage 4' taps: the last two stages of a hierarchical model (1/16 and
    1/32 maps); for an isotropic one, the blocks ending its third and fourth quarter, the
    same depths as a hierarchical model's last two stages."""
    if not is_isotropic(entries):
        return len(entries) - 2, len(entries) - 1
    depth = len(entries)
    return depth * 3 // 4 - 1, depth - 1


@dataclass(frozen=True)
class Layout:
    """How one tapped tensor is laid out, and the map <-> native conversions."""

    fmt: str  # "NCHW" | "NHWC" | "NLC"
    grid: tuple[int, int]
    prefix: int = 0  # class/register tokens in front of the patch tokens (NLC only)

    @classmethod
    def of(cls, tensor: torch.Tensor, model: nn.Module, image_hw: tuple[int, int],
           reduction: int) -> "Layout":
        if tensor.ndim == 4:
            nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"
            return cls("NHWC", tuple(tensor.shape[1:3])) if nhwc else cls(
                "NCHW", tuple(tensor.shape[2:]))
        grid = (image_hw[0] // reduction, image_hw[1] // reduction)
        prefix = tensor.shape[1] - grid[0] * grid[1]
        if tensor.ndim != 3 or prefix < 0 or prefix != getattr(model, "num_prefix_tokens", 0):
            raise ValueError(
                f"cannot read a {tuple(tensor.shape)} output of {type(model).__name__} as "
                f"{getattr(model, 'num_prefix_tokens', 0)} prefix tokens + a {grid} grid of "
                f"patches (image {image_hw}, reduction {reduction})")
        return cls("NLC", grid, prefix)

    def to_map(self, tensor: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W), class/register tokens dropped."""
        if self.fmt == "NCHW":
            return tensor
        if self.fmt == "NHWC":
            return tensor.permute(0, 3, 1, 2)
        patches = tensor[:, self.prefix:]
        return patches.transpose(1, 2).reshape(tensor.shape[0], -1, *self.grid)

    def from_map(self, fmap: torch.Tensor,
                 prefix_tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The inverse of `to_map`; token layouts take their class/register tokens from
        `prefix_tokens` (the same layout's native tensor, whose prefix is reused)."""
        if self.fmt == "NCHW":
            return fmap
        if self.fmt == "NHWC":
            return fmap.permute(0, 2, 3, 1)
        tokens = fmap.flatten(2).transpose(1, 2)
        if self.prefix:
            tokens = torch.cat([prefix_tokens[:, :self.prefix].to(tokens.dtype), tokens], dim=1)
        return tokens


def map_to_tokens(fmap: torch.Tensor) -> torch.Tensor:
    return fmap.flatten(2).transpose(1, 2)


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)


class Captured:
    """What the hooks saw during one forward: outputs by module name, and the positional and
    keyword arguments each `inputs_of` module was called with."""

    def __init__(self):
        self.outputs: dict[str, torch.Tensor] = {}
        self.inputs: dict[str, tuple[tuple, dict]] = {}


@contextlib.contextmanager
def capture(model: nn.Module, outputs_of: list[str] = (),
            inputs_of: list[str] = ()) -> Iterator[Captured]:
    """Hooks on the named submodules for the duration of the block, then removed (so copies
    of the model, such as an EMA, carry no hooks)."""
    seen, handles = Captured(), []
    modules = dict(model.named_modules())

    def keep_output(name):
        def hook(_module, _args, output):
            seen.outputs[name] = output
        return hook

    def keep_inputs(name):
        def hook(_module, args, kwargs):
            seen.inputs[name] = (args, kwargs)
        return hook

    try:
        for name in outputs_of:
            handles.append(modules[name].register_forward_hook(keep_output(name)))
        for name in inputs_of:
            handles.append(modules[name].register_forward_pre_hook(keep_inputs(name),
                                                                   with_kwargs=True))
        yield seen
    finally:
        for handle in handles:
            handle.remove()


class StudentTaps:
    """The student's stage-3 and stage-4 features as NCHW maps, caught during its forward."""

    def __init__(self, model: nn.Module):
        entries = feature_entries(model)
        self.entries = [entries[i] for i in late_entries(entries)]
        self.names = [e["module"] for e in self.entries]

    def forward(self, model: nn.Module,
                images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with capture(model, outputs_of=self.names) as seen:
            logits = model(images)
        hw = tuple(images.shape[-2:])
        maps = [Layout.of(seen.outputs[e["module"]], model, hw, e["reduction"]).to_map(
            seen.outputs[e["module"]]) for e in self.entries]
        return logits, maps

    def shapes(self, model: nn.Module, input_size: int) -> list[tuple[int, int, int]]:
        """(C, H, W) of each tap, from one forward of a blank image in eval mode."""
        _, maps = on_blank_image(model, input_size, self.forward)
        return [tuple(m.shape[1:]) for m in maps]


@torch.no_grad()
def on_blank_image(model: nn.Module, input_size: int, forward):
    """`forward(model, images)` on one blank image, the model in eval mode meanwhile."""
    was_training = model.training
    model.eval()
    try:
        images = torch.zeros(1, 3, input_size, input_size,
                             device=next(model.parameters()).device)
        return forward(model, images)
    finally:
        model.train(was_training)


class EmbeddingTap:
    """A timm model's pre-logits features: the input of its classifier (`get_classifier()`),
    caught by a hook during the model's ordinary forward, so that the logits are those of that
    forward and a ZeRO-3 engine or a DDP replica gathers its parameters as usual (calling
    `forward_head(pre_logits=True)` would bypass the top module's call, and timm places the
    head's dropout before or after that point depending on the family)."""

    def __init__(self, model: nn.Module):
        classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
        names = [name for name, m in model.named_modules() if m is classifier and name]
        if not isinstance(classifier, nn.Module) or not names:
            raise ValueError(f"{type(model).__name__} has no classifier module that timm's "
                             "get_classifier() names: its pre-logits features cannot be read")
        self.name = names[0]

    def forward(self, model: nn.Module, images: torch.Tensor,
                runner: Optional[nn.Module] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, pre-logits features) of one forward of `runner` (default `model`: a
        wrapper that calls it, such as a DeepSpeed engine, may stand in)."""
        with capture(model, inputs_of=[self.name]) as seen:
            logits = (runner or model)(images)
        args, _ = seen.inputs[self.name]
        return logits, args[0].flatten(1)

    def width(self, model: nn.Module, input_size: int) -> int:
        """The pre-logits width, from one forward of a blank image in eval mode."""
        _, embedding = on_blank_image(model, input_size, self.forward)
        return embedding.shape[1]
