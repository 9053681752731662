"""Top-1/top-5 over a sharded evaluation set, summed over processes."""

from __future__ import annotations

from typing import Callable

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader


@torch.no_grad()
def evaluate(forward: Callable[[torch.Tensor], torch.Tensor], loader: DataLoader,
             accelerator: Accelerator) -> dict[str, float]:
    counts = torch.zeros(3, device=accelerator.device)  # top1, top5, images
    for images, targets in loader:
        images, targets = images.to(accelerator.device), targets.to(accelerator.device)
        logits = forward(images).float()
        valid = targets >= 0  # -1: padding that evens out the shards
        top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        hits = top5 == targets[:, None]
        counts += torch.stack([(hits[:, 0] & valid).sum(), (hits.any(-1) & valid).sum(),
                               valid.sum()]).float()
    counts = accelerator.reduce(counts, reduction="sum")
    return {"top1": 100 * counts[0].item() / counts[2].item(),
            "top5": 100 * counts[1].item() / counts[2].item()}
