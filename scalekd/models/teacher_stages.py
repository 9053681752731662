"""The teacher's features for feature distillation, and its last stages as a proxy path.

ScaleKD's teacher parameter perception (TPP) runs a projected student map through the teacher's
own remaining stages. Where they start is read from the model's structure, never from indices:
- hierarchical teachers (Swin, ConvNeXt, ResNet): the last stage of timm's feature_info, with
  the down-sampling it opens with; the split point is the output of the stage before it;
- isotropic teachers (ViT, DeiT, BEiT, DINOv2 with or without registers, EVA): the last
  `proxy_blocks` blocks (`distill.tpp_blocks`; the authors ran the last 2 of EVA-L's 24, as
  many as Swin-L's last stage holds), or by default (0) the last quarter, the part a
  hierarchical model's last stage would hold. A hierarchical teacher's proxy is its whole last
  stage: a `proxy_blocks` other than that stage's block count is refused.
After the remaining stages comes the final norm timm applies in `forward_features` (`norm` or
`norm_pre`; none on ResNets). The proxy replays each remaining module with the arguments the
teacher's own pass gave it (BEiT's relative position bias, EVA's rotary embedding, attention
masks) and with the teacher's own class/register tokens in front of the projected patches.
`TeacherStages.check` verifies all this on the real model: the proxy fed the teacher's split
map must give back the teacher's final features.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn

from scalekd.models.taps import Layout, capture, feature_entries, is_isotropic, tapped_model

FINAL_NORMS = ("norm", "norm_pre")  # what timm calls the norm after the last stage

Proxy = Callable[[torch.Tensor], torch.Tensor]  # split-space map -> final-space map


class TeacherStages:
    """The stages of the timm model `tapped_model(model)` names: the teacher itself, or the
    encoder of a probed teacher. The hooks keep a module's last output of the pass: a probed
    encoder also runs its final norm on earlier blocks' tokens, but each right after its block
    (timm's forward_intermediates), so the norm's last call is on the last block's."""

    def __init__(self, model: nn.Module, proxy_blocks: int = 0):
        name, body = tapped_model(model)
        prefix = f"{name}." if name else ""  # module names are the whole teacher's
        entries = feature_entries(body)
        depth = len(entries)
        if is_isotropic(entries):
            split = depth - (proxy_blocks or max(depth // 4, 1)) - 1
        else:
            split = depth - 2
            _check_last_stage(body, entries[-1]["module"], proxy_blocks)
        if split < 0:
            raise ValueError(f"{type(body).__name__} has {depth} stages or blocks: too few for a "
                             f"proxy path of {proxy_blocks or 'its last quarter'} "
                             "(distill.tpp_blocks)")
        self.split, self.last = entries[split], entries[-1]
        self.split_name = prefix + self.split["module"]
        self.remaining = [(prefix + child, module) for child, module in
                          _siblings_between(body, self.split["module"], self.last["module"])]
        norm = next((n for n in FINAL_NORMS if isinstance(getattr(body, n, None), nn.Module)),
                    None)
        self.norm_name = prefix + norm if norm else None
        self.final_name = self.norm_name or prefix + self.last["module"]

    def forward(self, model: nn.Module, runner: Callable, images: torch.Tensor,
                with_proxy: bool, summary: bool = False
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor], Optional[Proxy]]:
        """The teacher's logits, its split and final maps (float32, NCHW), with `summary` the
        final features' summary vector (`summary_of`), and the proxy."""
        hw = tuple(images.shape[-2:])
        with capture(model, outputs_of=[self.split_name, self.final_name],
                     inputs_of=[name for name, _ in self.remaining] if with_proxy else []) as seen:
            logits = runner(images)
        split_native = seen.outputs[self.split_name]
        final_native = seen.outputs[self.final_name]
        body = tapped_model(model)[1]  # its layout: prefix tokens, NHWC or NCHW
        split_layout = Layout.of(split_native, body, hw, self.split["reduction"])
        final_layout = Layout.of(final_native, body, hw, self.last["reduction"])
        features = {"split": split_layout.to_map(split_native).float(),
                    "final": final_layout.to_map(final_native).float()}
        if summary:
            features["summary"] = summary_of(body, final_layout, final_native).float()
        if not with_proxy:
            return logits, features, None
        norm = model.get_submodule(self.norm_name) if self.norm_name else None

        def proxy(fmap: torch.Tensor) -> torch.Tensor:
            # teacher weights are frozen (requires_grad False); gradients flow through the
            # activations back to the projector and the student
            x = split_layout.from_map(fmap.to(split_native.dtype), split_native)
            for name, module in self.remaining:
                args, kwargs = seen.inputs[name]
                x = module(x, *args[1:], **kwargs)
            if norm is not None:
                x = norm(x)
            return final_layout.to_map(x).float()

        return logits, features, proxy

    @torch.no_grad()
    def check(self, model: nn.Module, runner: Callable, images: torch.Tensor) -> None:
        """Refuse a teacher whose remaining stages do not rebuild its own final features."""
        _, features, proxy = self.forward(model, runner, images, with_proxy=True)
        rebuilt = proxy(features["split"])
        if rebuilt.shape != features["final"].shape or not torch.allclose(
                rebuilt, features["final"], rtol=1e-2, atol=1e-2):
            raise ValueError(
                f"teacher {type(model).__name__}: running its modules "
                f"{[n for n, _ in self.remaining]} (+ final norm {self.norm_name}) on its own "
                f"'{self.split_name}' output does not reproduce its final features, so the "
                "proxy path (TPP) would be wrong for it. Set distill.tpp=false for this teacher")


def summary_of(body: nn.Module, layout: Layout, final: torch.Tensor) -> torch.Tensor:
    """(B, C): the class token of the final tokens (after the norm: DINOv2's and DINOv3's
    image embedding), or for a model without one (CNN, Swin, Mixer, a ViT without class
    token) the mean of the final map over its grid. Register tokens are never the summary."""
    if layout.fmt == "NLC" and layout.prefix and getattr(body, "cls_token", None) is not None:
        return final[:, 0]  # timm puts the class token first, registers after it
    return layout.to_map(final).mean(dim=(2, 3))


def _check_last_stage(model: nn.Module, name: str, proxy_blocks: int) -> None:
    stage = model.get_submodule(name)
    blocks = len(getattr(stage, "blocks", stage))  # Swin, ConvNeXt: .blocks; ResNet: the stage
    if proxy_blocks and proxy_blocks != blocks:
        raise ValueError(
            f"distill.tpp_blocks={proxy_blocks}: the proxy path of a hierarchical teacher "
            f"({type(model).__name__}) is its whole last stage '{name}', of {blocks} blocks; "
            f"set distill.tpp_blocks={blocks} or 0")


def _siblings_between(model: nn.Module, first: str, last: str) -> list[tuple[str, nn.Module]]:
    """The modules after `first` up to and including `last`, children of one container."""
    parent, _, first_child = first.rpartition(".")
    last_parent, _, last_child = last.rpartition(".")
    if parent != last_parent:
        raise ValueError(f"stages {first!r} and {last!r} are not in one container; "
                         "the proxy path cannot follow this model")
    container = model.get_submodule(parent) if parent else model
    names = [n for n, _ in container.named_children()]
    chosen = names[names.index(first_child) + 1: names.index(last_child) + 1]
    prefix = f"{parent}." if parent else ""
    return [(prefix + n, container.get_submodule(n)) for n in chosen]
