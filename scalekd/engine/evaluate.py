"""Evaluation: top-1/top-5 over a sharded set during training (summed over processes), and the
fuller metrics of `scalekd eval` on one process."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Callable, Optional

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


# ---------------------------------------------------------------------------------------------
# `scalekd eval`: whole-set logits on one process, then every metric from them


@torch.no_grad()
def predict(forward: Callable[[torch.Tensor], torch.Tensor],
            loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 logits (N, classes) and targets (N,) of a one-process evaluation loader, in order."""
    logits, targets = [], []
    for images, target in loader:
        logits.append(forward(images).float().cpu())
        targets.append(target)
    return torch.cat(logits), torch.cat(targets)


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor,
                           classes: list[str]) -> dict:
    """top-1 / top-5 (%) and top-1 of every class (None for a class with no image)."""
    top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
    hits = top5 == targets[:, None]
    top1 = hits[:, 0].float()
    per_class = {}
    for c, name in enumerate(classes):
        mine = targets == c
        per_class[name] = 100 * top1[mine].mean().item() if mine.any() else None
    return {"top1": 100 * top1.mean().item(), "top5": 100 * hits.any(-1).float().mean().item(),
            "per_class_top1": per_class}


def agreement(student: torch.Tensor, teacher: torch.Tensor) -> dict[str, float]:
    """How closely the student follows the teacher: top-1 match rate (%) and the mean
    KL(teacher || student) of their softmaxes at T=1, in nats."""
    kl = torch.nn.functional.kl_div(student.log_softmax(-1), teacher.log_softmax(-1),
                                    log_target=True, reduction="none").sum(-1)
    match = (student.argmax(-1) == teacher.argmax(-1)).float()
    return {"top1_agreement": 100 * match.mean().item(), "mean_kl": kl.mean().item()}


def multilabel_top1(logits: torch.Tensor,
                    label_sets: list[Optional[list[int]]]) -> dict[str, float]:
    """ImageNet-ReaL-style top-1: a prediction is right when it is any of the image's labels;
    images with no label set (None or []) are left out, as ReaL leaves them out."""
    pred = logits.argmax(-1).tolist()
    scored = [(p in labels) for p, labels in zip(pred, label_sets) if labels]
    if not scored:
        raise ValueError("the label file gives no labels for any image of the evaluation set: "
                         "check that its keys are the images' file names")
    return {"top1": 100 * sum(scored) / len(scored), "images": len(scored)}


def read_label_file(path: Path, names: list[str]) -> list[Optional[list[int]]]:
    """Label sets of the images named `names` (the evaluation split's file names, in its order)
    from a re-labelled set's file:

    - JSON list (ImageNet-ReaL's real.json): item i holds the labels of the i-th image in the
      order of sorted file names;
    - JSON object: {file name: [labels]};
    - CSV: `file name,labels` per line, the labels separated by spaces or ';' (a header line
      whose second field is not numeric is skipped).
    """
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".json":
        spec = json.loads(text)
        if isinstance(spec, list):
            if len(spec) != len(names):
                raise ValueError(f"{path} lists {len(spec)} images, the evaluation split has "
                                 f"{len(names)}: a list-form label file must cover every image")
            by_name = dict(zip(sorted(names), spec))
        else:
            by_name = spec
    else:
        by_name = {}
        for line in csv.reader(io.StringIO(text)):
            if len(line) < 2:
                continue
            labels = line[1].replace(";", " ").split()
            if not all(label.lstrip("-").isdigit() for label in labels):
                continue  # a header
            by_name[line[0]] = [int(label) for label in labels]
    return [([int(v) for v in by_name[n]] if n in by_name else None) for n in names]
