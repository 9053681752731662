"""`scalekd probe`: train a head on a frozen teacher's features, the first step of task-specific
distillation (the task-specific distillation paper, section 3.1); `teacher.probe=DIR` then makes
encoder + head the teacher of any logit-distillation recipe.

The teacher's features (scalekd/models/probe.py) are computed once, without random
augmentation (the evaluation transform: resize and centre crop), through the very FrozenTeacher
path distillation uses (its normalisation, resolution, dtype and attention), and cached in
`run.dir/features/<split>.safetensors`, so each head epoch costs a matrix product over the cache.
A grid of learning rates (`probe.lrs`, AdamW, cosine, `probe.epochs`) is searched on a held-out
`probe.val_fraction` of the training images (stratified per class, seeded by run.seed), or on
data.val_split with `probe.val_fraction=0`; the winner is retrained on every training image
(`probe.refit`), evaluated on data.val_split, and saved:

  run.dir/head.safetensors    the head's weights
  run.dir/probe.json          the encoder it belongs to, the feature recipe, the head, the grid's
                              accuracies, the chosen lr, held-out and evaluation top-1
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from scalekd.data import build_eval_loader
from scalekd.data.classes import load_split
from scalekd.data.loader import eval_interpolation, keep_labelled
from scalekd.engine.validation import validate
from scalekd.files import write_atomically, write_text_atomically
from scalekd.models import FrozenTeacher, data_config
from scalekd.models.probed_teacher import (HEAD_FILE, PROBE_FILE, ProbedModel, create_encoder,
                                           has_class_token, make_head, teacher_record)
from scalekd.models.teacher import freeze_teacher, teacher_input_size
from scalekd.recipe import Recipe, RecipeError


@dataclass
class ProbeResult:
    folder: Path
    lr: float
    val_top1: float  # on the split the lr was chosen on
    eval_top1: float  # the final head on data.val_split
    grid: dict[float, float]  # lr -> held-out top-1


def probe(recipe: Recipe) -> ProbeResult:
    check_probe_recipe(recipe)
    p, out = recipe.probe, recipe.run.path
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher = feature_teacher(recipe).to(device)
    train, classes = cached_features(recipe, teacher, "train", device)
    evaluation, _ = cached_features(recipe, teacher, "val", device)
    features, labels = train

    if p.val_fraction > 0:
        held_out = stratified_split(labels, p.val_fraction, recipe.run.seed)
        fit = torch.ones(len(labels), dtype=torch.bool)
        fit[held_out] = False
        fit_set, select_set = (features[fit], labels[fit]), (features[held_out], labels[held_out])
        selected_on = f"{p.val_fraction:.0%} of the training images, held out"
    else:
        fit_set, select_set = train, evaluation
        selected_on = f"data.val_split={recipe.data.val_split}"
    width, num_classes = features.shape[1], len(classes)
    hidden = p.hidden or teacher.model.encoder.num_features
    kind = feature_kind(teacher.model.encoder, recipe)
    print(f"probe: {p.head} head on {width} features ({kind}), {len(fit_set[1])} images to fit, "
          f"lr chosen on {selected_on} ({len(select_set[1])} images)")

    grid: dict[float, float] = {}
    heads: dict[float, nn.Module] = {}
    for lr in p.lrs:
        start = time.perf_counter()
        head = new_head(recipe, width, num_classes, hidden)
        loss = train_head(head, *fit_set, lr, recipe)
        grid[lr] = top1(head, *select_set)
        heads[lr] = head
        print(f"probe: lr {lr:.1e}: held-out top-1 {grid[lr]:.2f} (last loss {loss:.3f}, "
              f"{time.perf_counter() - start:.1f} s)")
    best = max(p.lrs, key=lambda lr: (grid[lr], -lr))  # ties: the smaller rate
    head = heads[best]
    if p.refit and p.val_fraction > 0:
        head = new_head(recipe, width, num_classes, hidden)
        train_head(head, features, labels, best, recipe)
    eval_top1 = top1(head, *evaluation)
    print(f"probe: chose lr {best:.1e} (held-out top-1 {grid[best]:.2f}); "
          f"{'refit on every training image, ' if p.refit and p.val_fraction > 0 else ''}"
          f"top-1 on {recipe.data.val_split}: {eval_top1:.2f}")

    spec = {
        "teacher": teacher_record(recipe.teacher, teacher_size(recipe)),
        "features": {"kind": kind, "blocks": p.blocks,
                     "patch_mean": p.patch_mean, "width": width},
        "head": {"kind": p.head, "hidden": hidden if p.head == "mlp" else 0, "file": HEAD_FILE},
        "num_classes": num_classes, "classes": classes,
        "grid": [{"lr": lr, "val_top1": acc} for lr, acc in grid.items()],
        "lr": best, "val_top1": grid[best], "selected_on": selected_on,
        "refit": p.refit and p.val_fraction > 0,
        "eval_top1": eval_top1, "eval_split": recipe.data.val_split,
        "training": {"epochs": p.epochs, "batch_size": p.batch_size,
                     "weight_decay": p.weight_decay, "optimizer": "adamw", "sched": "cosine",
                     "seed": recipe.run.seed, "images": len(labels)},
        "recipe": recipe.to_dict(),
    }
    write_atomically(out / HEAD_FILE, lambda tmp: save_file(
        {k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp)))
    # last: marks the folder complete
    write_text_atomically(out / PROBE_FILE, json.dumps(spec, indent=2))
    print(f"probe: wrote {out / HEAD_FILE} and {out / PROBE_FILE}")
    return ProbeResult(out, best, grid[best], eval_top1, grid)


def probe_recipe(distilled: Recipe) -> Recipe:
    """The probe of a distillation's teacher, on its data, written to its teacher.probe."""
    return replace(distilled, teacher=replace(distilled.teacher, probe=""),
                   run=replace(distilled.run, name="probe", dir=distilled.teacher.probe))


def check_probe_recipe(recipe: Recipe) -> None:
    """Everything `validate` checks of the teacher and data, and the probe's own fields."""
    p = recipe.probe
    try:
        validate(recipe)
        problems = []
    except RecipeError as err:
        problems = err.problems
    checks = [
        (bool(recipe.teacher.name), "scalekd probe needs teacher.name=<timm model>"),
        (not recipe.teacher.probe, "teacher.probe is the output of a probe, not its input: "
                                   "drop it (the probe writes to run.dir)"),
        (p.head in ("linear", "mlp"), f"probe.head={p.head!r} must be linear or mlp"),
        (1 <= p.blocks <= 4, f"probe.blocks={p.blocks} must be 1 to 4 (DINOv2's recipe)"),
        (p.hidden >= 0, "probe.hidden must be >= 0 (0: the teacher's embedding width)"),
        (bool(p.lrs) and min(p.lrs, default=0) > 0, "probe.lrs must hold positive rates"),
        (p.epochs > 0 and p.batch_size > 0, "probe.epochs and probe.batch_size must be positive"),
        (0 <= p.val_fraction < 1, "probe.val_fraction must be in [0, 1)"),
        (p.weight_decay >= 0, "probe.weight_decay must be >= 0"),
    ]
    problems += [msg for ok, msg in checks if not ok]
    if problems:
        raise RecipeError(problems)


def teacher_size(recipe: Recipe) -> int:
    return teacher_input_size(recipe.teacher, recipe.data.input_size)


def feature_teacher(recipe: Recipe) -> FrozenTeacher:
    """The frozen encoder whose "logits" are the probe's features: the path distillation runs,
    with an identity head."""
    t = recipe.teacher
    encoder = create_encoder(t)
    depth = len(getattr(encoder, "blocks", ()))
    if has_class_token(encoder) and recipe.probe.blocks > depth:
        # the default (4, DINOv2's recipe) exceeds a small ViT's depth: name the fix
        raise RecipeError([f"probe.blocks={recipe.probe.blocks} exceeds the {depth} blocks of "
                           f"teacher {t.name!r}: set probe.blocks={depth} or fewer"])
    model = ProbedModel(encoder, nn.Identity(), recipe.probe.blocks, recipe.probe.patch_mean)
    # the pixels distillation hands the teacher
    norm = data_config(recipe.student.name, recipe.student.kwargs)
    return freeze_teacher(model, t, norm["mean"], norm["std"], recipe.data.input_size)


def feature_kind(encoder: nn.Module, recipe: Recipe) -> str:
    p = recipe.probe
    if not has_class_token(encoder):
        return "pooled"
    return f"cls x{p.blocks}" + (" + patch mean" if p.patch_mean else "")


def cached_features(recipe: Recipe, teacher: FrozenTeacher, which: str,
                    device: torch.device) -> tuple[tuple[torch.Tensor, torch.Tensor], list[str]]:
    """((features, labels), class names) of the labelled training images (`which`="train") or
    of data.val_split, from the cache when it was written for the same teacher, features and
    data, else computed and cached."""
    d = recipe.data
    split = d.train_split if which == "train" else d.val_split
    images = load_split(d, split)
    if which == "train":
        images = keep_labelled(images, d.labels_per_class)
    key = json.dumps({"teacher": {k: v for k, v in vars(recipe.teacher).items() if k != "probe"},
                      "blocks": recipe.probe.blocks, "patch_mean": recipe.probe.patch_mean,
                      "student_norm": data_config(recipe.student.name, recipe.student.kwargs),
                      "data": {k: getattr(d, k) for k in ("source", "path", "input_size",
                                                          "labels_per_class", "classes",
                                                          "num_samples")},
                      "split": split, "which": which, "images": len(images),
                      "eval_transform": [eval_interpolation(recipe.aug.interpolation,
                                                            recipe.student.name,
                                                            recipe.student.kwargs),
                                         recipe.aug.crop_pct]},
                     sort_keys=True, default=str)
    file = recipe.run.path / "features" / f"{which}.safetensors"
    if file.is_file():
        from safetensors import safe_open

        with safe_open(str(file), "pt") as f:
            same = (f.metadata() or {}).get("key") == key
        if same:
            cached = load_file(str(file))
            print(f"probe: {which} features from the cache {file}")
            return (cached["features"], cached["labels"]), list(images.classes)
    features, labels = compute_features(recipe, teacher, images, device)
    file.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(file, lambda tmp: save_file({"features": features, "labels": labels},
                                                 str(tmp), metadata={"key": key}))
    return (features, labels), list(images.classes)


@torch.no_grad()
def compute_features(recipe: Recipe, teacher: FrozenTeacher, images,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, width) fp32 features and (N,) labels of `images`, in order, without augmentation."""
    norm = data_config(recipe.student.name, recipe.student.kwargs)
    loader = build_eval_loader(recipe, images, norm["mean"], norm["std"], 0, 1)
    features, labels = [], []
    bar = tqdm(loader, desc=f"probe: teacher features ({len(images)} images)", unit="batch",
               dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 60)
    for x, y in bar:
        features.append(teacher(x.to(device)).logits.cpu())
        labels.append(y)
    bar.close()
    return torch.cat(features).contiguous(), torch.cat(labels).contiguous()


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices of a held-out `fraction` of every class (at least one image of each class that
    has two or more), seeded."""
    rng = np.random.default_rng(seed)
    held = []
    for c in labels.unique().tolist():
        members = np.flatnonzero(labels.numpy() == c)
        count = min(max(1, round(fraction * len(members))), len(members) - 1)
        held.append(rng.permutation(members)[:count])
    return torch.from_numpy(np.sort(np.concatenate(held)))


def new_head(recipe: Recipe, width: int, num_classes: int, hidden: int) -> nn.Module:
    """The same initial head for every learning rate of the grid."""
    with torch.random.fork_rng():
        torch.manual_seed(recipe.run.seed)
        return make_head(recipe.probe.head, width, num_classes, hidden)


def train_head(head: nn.Module, features: Any, labels: torch.Tensor, lr: float,
               recipe: Recipe) -> float:
    """AdamW with a cosine schedule over `probe.epochs`; the batch order is seeded by run.seed.
    `features` is a (N, width) tensor, or anything that indexes like one with a batch of indices
    (the tests recompute them from images). Returns the last batch's loss."""
    p = recipe.probe
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=p.weight_decay)
    steps = p.epochs * math.ceil(len(labels) / p.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    order = torch.Generator().manual_seed(recipe.run.seed)
    head.train()
    loss = torch.zeros(())
    for _ in range(p.epochs):
        for batch in torch.randperm(len(labels), generator=order).split(p.batch_size):
            loss = F.cross_entropy(head(features[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return loss.item()


@torch.no_grad()
def top1(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    head.eval()
    return 100 * (head(features).argmax(-1) == labels).float().mean().item()
