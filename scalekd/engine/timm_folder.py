"""The student as the folder timm's `save_for_hf` writes (config.json with its pretrained_cfg,
model.safetensors): `timm.create_model("local-dir:FOLDER", pretrained=True)` loads it with the
preprocessing the run used, and `scalekd push` uploads it with timm's `push_to_hf_hub`."""

from __future__ import annotations

from pathlib import Path
import timm
import torch
import torch.nn as nn
from timm.models import push_to_hf_hub, save_for_hf

from scalekd.data.loader import eval_interpolation
from scalekd.engine.checkpoint import write_run_folder
from scalekd.models import data_config
from scalekd.recipe import Recipe


def timm_folder(export_folder: Path, stem: str = "student") -> Path:
    """Where the export of `stem` (student, student_ema) keeps its timm folder."""
    return Path(export_folder) / f"{stem}_timm"


def run_data_config(recipe: Recipe) -> dict:
    """The evaluation preprocessing of the run, in timm's data-config terms."""
    norm = data_config(recipe.student.name, recipe.student.kwargs)
    return {"input_size": (3, recipe.data.input_size, recipe.data.input_size),
            "interpolation": eval_interpolation(recipe.aug.interpolation, recipe.student.name,
                                                recipe.student.kwargs),
            "mean": tuple(norm["mean"]), "std": tuple(norm["std"]),
            "crop_pct": recipe.aug.crop_pct, "crop_mode": "center"}


def write_timm_folder(weights: dict[str, torch.Tensor], recipe: Recipe, num_classes: int,
                      folder: Path, intact: str = "") -> Path:
    """Write `folder` with timm's save_for_hf from the student's `weights` (its own keys),
    swapped in whole (a failed write leaves no half folder)."""
    # the architecture only: drop path is a training setting, and timm leaves it out anyway
    model = timm.create_model(recipe.student.name, num_classes=num_classes,
                              **recipe.student.kwargs)
    model.load_state_dict(weights)
    config = run_data_config(recipe)
    write_run_folder(folder, lambda tmp: save_for_hf(model.eval(), str(tmp), data_config=config,
                                                     safe_serialization=True), intact)
    return folder


def push_timm_folder(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload the student of `folder` (a timm folder) to the Hugging Face Hub repo `repo_id`
    with timm's push_to_hf_hub, which writes the same folder (and a model card) again; the only
    network use of scalekd's exports; the token is huggingface_hub's (`hf auth login` or
    HF_TOKEN). Returns the commit's URL."""
    # the model loaded from the folder carries its pretrained_cfg (preprocessing, classes), so
    # timm writes the folder's config.json again
    commit = push_to_hf_hub(load_timm_folder(folder), repo_id,
                            commit_message="Add a scalekd-distilled student", private=private,
                            safe_serialization=True)
    return str(getattr(commit, "commit_url", commit))


def load_timm_folder(folder: Path) -> nn.Module:
    """The student of a timm folder, built the way a timm user would, in eval mode."""
    return timm.create_model(f"local-dir:{Path(folder).resolve()}", pretrained=True).eval()
