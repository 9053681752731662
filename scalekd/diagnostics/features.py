"""What the diagnostics read from a network over an evaluation set: every stage's (or block's)
output as a map, its final map, and its pre-logit embedding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn as nn

from scalekd.models.taps import Layout, capture, feature_entries


@dataclass
class Features:
    layer_names: list[str]
    layers: list[torch.Tensor]  # per layer, (n, C): the map averaged over positions
    final_maps: torch.Tensor  # (n, C, H, W) of the last layer (kept for `max_maps` images)
    embeddings: torch.Tensor  # (n, D): timm's pre-logits
    labels: torch.Tensor


@torch.no_grad()
def collect(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
            prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
            max_images: int = 512, max_maps: int = 128) -> Features:
    """Run `model` (a timm model, eval mode) over `batches` of (images, labels) until
    `max_images`, with `prepare` mapping the images first (a teacher's own normalisation
    and resolution). Labels < 0 (padding) are dropped."""
    entries = feature_entries(model)
    names = [e["module"] for e in entries]
    pooled: list[list[torch.Tensor]] = [[] for _ in entries]
    final_maps, embeddings, labels, seen_images = [], [], [], 0
    for images, targets in batches:
        keep = targets >= 0
        x = prepare(images)
        with capture(model, outputs_of=names) as seen:
            pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
        hw = tuple(x.shape[-2:])
        for i, entry in enumerate(entries):
            native = seen.outputs[entry["module"]]
            fmap = Layout.of(native, model, hw, entry["reduction"]).to_map(native).float()[keep]
            pooled[i].append(fmap.mean(dim=(2, 3)))
            if i == len(entries) - 1 and sum(len(m) for m in final_maps) < max_maps:
                final_maps.append(fmap)
        embeddings.append(pre_logits.float()[keep])
        labels.append(targets[keep])
        seen_images += int(keep.sum())
        if seen_images >= max_images:
            break
    return Features(names, [torch.cat(p)[:max_images] for p in pooled],
                    torch.cat(final_maps)[:max_maps], torch.cat(embeddings)[:max_images],
                    torch.cat(labels)[:max_images])
