"""The student: a timm model, optionally initialised from a weights file."""

from __future__ import annotations

import difflib

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


def model_known(name: str) -> bool:
    return timm.is_model(name) or name.startswith("hf-hub:")


def unknown_model(key: str, name: str) -> str:
    """The problem of a recipe field `key` naming `name`, which timm does not know."""
    hint = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=3)
    return (
        f"{key}={name!r} is not a timm model"
        + (f"; close names: {', '.join(hint)}" if hint else "; see timm.list_models()")
    )


def student_name_problems(cfg: StudentCfg) -> list[str]:
    return [] if model_known(cfg.name) else [unknown_model("student.name", cfg.name)]


def student_value_problems(cfg: StudentCfg) -> list[str]:
    return [] if 0 <= cfg.drop_path < 1 else [
        f"student.drop_path={cfg.drop_path} must be in [0, 1)"]


def student_zero_problems(cfg: StudentCfg, stage: int) -> list[str]:
    """The student under ZeRO-`stage` (DeepSpeed's engine)."""
    if stage > 0 and cfg.channels_last:
        return [
            f"student.channels_last=true under ZeRO-{stage}: DeepSpeed broadcasts and flattens "
            "the student's weights through contiguous views, which NHWC weights are not (its "
            "engine fails at start-up); use dist.zero_stage=0 (DDP) or student.channels_last=false"
        ]
    return []
