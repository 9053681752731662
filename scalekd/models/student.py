"""The student: a timm model, optionally initialised from a weights file."""

from __future__ import annotations

import difflib

import timm
import torch.nn as nn

from scalekd.model_config import config_problem, data_config
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


# timm's sources of a model's config.json besides its registry
_SOURCES = ("hf-hub:", "local-dir:")


def model_known(name: str) -> bool:
    return timm.is_model(name) or name.startswith(_SOURCES)


def model_problems(key: str, name: str, kwargs: dict) -> list[str]:
    """A model name timm does not know, or whose config (a hub repo's, a folder's) it cannot
    read or build with these kwargs: the resolution and normalisation come from there."""
    if not model_known(name):
        return [unknown_model(key, name)]
    return config_problem(key, name, kwargs)


def unknown_model(key: str, name: str) -> str:
    """The problem of a recipe field `key` naming `name`, which timm does not know."""
    hint = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=3)
    return (
        f"{key}={name!r} is not a timm model"
        + (f"; close names: {', '.join(hint)}" if hint else "; see timm.list_models()")
    )


def student_name_problems(cfg: StudentCfg) -> list[str]:
    return model_problems("student.name", cfg.name, cfg.kwargs)


def student_size_problems(cfg: StudentCfg, input_size: int) -> list[str]:
    """data.input_size for a student that takes one resolution only (its timm data config's
    fixed_input_size); call it once student_name_problems found nothing."""
    own = data_config(cfg.name, cfg.kwargs)
    if not own["fixed_input_size"] or own["input_size"][-1] == input_size:
        return []
    return [f"data.input_size={input_size}: student {cfg.name!r} takes {own['input_size'][-1]} "
            f"px inputs only (timm's data config of the model); set data.input_size="
            f"{own['input_size'][-1]}, or build it for {input_size} px with "
            f"student.kwargs.img_size={input_size}"]


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
