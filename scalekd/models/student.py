"""The student: a timm model, optionally initialised from a weights file."""

from __future__ import annotations

import timm
import torch.nn as nn

from scalekd.models.weights import create_with_weights
from scalekd.recipe import StudentCfg


def create_student(cfg: StudentCfg, num_classes: int) -> nn.Module:
    kwargs = dict(cfg.kwargs)
    if cfg.drop_path:
        kwargs["drop_path_rate"] = cfg.drop_path
    if cfg.checkpoint:
        # timm's pretrained path: weights_only loading, its key filters for upstream formats
        return create_with_weights("student.checkpoint", cfg.checkpoint, cfg.name, num_classes,
                                   kwargs)
    return timm.create_model(cfg.name, pretrained=cfg.pretrained, num_classes=num_classes,
                             **kwargs)


def data_config(name: str) -> dict:
    """Mean, std and interpolation a timm model expects, without building it."""
    cfg = timm.models.get_pretrained_cfg(name.split("hf-hub:")[-1])
    if cfg is None:
        return {"mean": timm.data.IMAGENET_DEFAULT_MEAN, "std": timm.data.IMAGENET_DEFAULT_STD}
    return {"mean": tuple(cfg.mean), "std": tuple(cfg.std)}
