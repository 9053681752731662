"""The optimiser and its schedule (timm's), and the checks of optim.* they own."""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler

from scalekd.recipe import Recipe

# optimisers whose update depends on whole-tensor norms (so not on a ZeRO partition)
LAYERWISE_OPTIMIZERS = {"lamb", "lambc", "lars", "larc", "nlars", "nlarc", "adafactor"}


def build_optimiser(model: nn.Module, recipe: Recipe,
                    steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Scheduler]:
    """optim.*'s optimiser over `model`'s parameters and its per-step schedule."""
    o = recipe.optim
    optimizer = create_optimizer_v2(model, opt=o.name, lr=o.lr, weight_decay=o.weight_decay,
                                    momentum=o.momentum)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=o.sched, num_epochs=recipe.run.epochs, warmup_epochs=o.warmup_epochs,
        warmup_lr=o.warmup_lr, min_lr=o.min_lr, decay_epochs=o.decay_epochs,
        decay_rate=o.decay_rate, step_on_epochs=False,
        updates_per_epoch=steps_per_epoch,
    )
    return optimizer, scheduler


def optim_range_problems(recipe: Recipe) -> list[str]:
    o = recipe.optim
    checks = [
        (o.lr > 0, f"optim.lr={o.lr} must be positive"),
        (o.weight_decay >= 0, "optim.weight_decay must be >= 0"),
        (o.warmup_epochs >= 0, "optim.warmup_epochs must be >= 0"),
    ]
    return [msg for ok, msg in checks if not ok]


def optim_value_problems(recipe: Recipe) -> list[str]:
    o = recipe.optim
    checks = [
        (o.warmup_lr >= 0 and o.min_lr >= 0, "optim.warmup_lr and optim.min_lr must be >= 0"),
        (o.clip_grad >= 0, f"optim.clip_grad={o.clip_grad} must be >= 0 (0: off)"),
        (0 <= o.momentum < 1, f"optim.momentum={o.momentum} must be in [0, 1)"),
        (o.decay_epochs > 0 and 0 < o.decay_rate <= 1,
         "optim.decay_epochs must be > 0 and optim.decay_rate in (0, 1]"),
    ]
    return [msg for ok, msg in checks if not ok]


def optimisation_problems(recipe: Recipe) -> list[str]:
    """timm's own checks of optim.* (names, hyperparameters), from building the optimiser and
    the schedule of `build_optimiser` for one parameter, before any model is built."""
    o = recipe.optim
    if not (o.lr > 0 and recipe.run.epochs > 0):  # reported by the range checks
        return []
    try:
        optimizer = create_optimizer_v2(nn.Linear(1, 1), opt=o.name, lr=o.lr,
                                        weight_decay=o.weight_decay, momentum=o.momentum)
    except Exception as err:  # timm and torch raise several kinds
        return [f"optim.name={o.name!r} with optim.lr/momentum/weight_decay: {err}"]
    try:
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=o.sched, num_epochs=recipe.run.epochs,
            warmup_epochs=o.warmup_epochs, warmup_lr=o.warmup_lr, min_lr=o.min_lr,
            decay_epochs=o.decay_epochs, decay_rate=o.decay_rate, step_on_epochs=False,
            updates_per_epoch=1)
    except Exception as err:
        return [f"optim.sched={o.sched!r}: {err}"]
    return [] if scheduler is not None else [f"optim.sched={o.sched!r} is not a timm scheduler"]


def zero_optimiser_problems(recipe: Recipe, stage: int) -> list[str]:
    """The optimiser under ZeRO-`stage`, which hands it flattened partitions."""
    if stage > 0 and recipe.optim.name.lower() in LAYERWISE_OPTIMIZERS:
        return [
            f"optim.name={recipe.optim.name!r} scales each update by a per-tensor trust ratio, "
            f"but ZeRO-{stage} hands the optimiser flattened partitions, which silently changes "
            "the method: use dist.zero_stage=0 (DDP) or an element-wise optimiser such as adamw"
        ]
    return []
