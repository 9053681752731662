"""Tiny timm models whose pretrained_cfg carries statistics and a resolution other than
ImageNet's 224 px, as timm reads them by name without network: a `local-dir:` folder (timm's
save_for_hf) and an `hf-hub:` repo in a Hugging Face cache made here (offline)."""

from __future__ import annotations

import shutil
from pathlib import Path

import timm
import torch
from timm.models import save_for_hf

# a 2-block ViT (fixed input size) with its own mean/std/interpolation at `img_size`
TINY = {"patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 2}
REVISION = "0" * 40


def write_timm_folder(folder: Path, img_size: int, mean: tuple, std: tuple,
                      interpolation: str = "bicubic", num_classes: int = 10,
                      seed: int = 0) -> torch.nn.Module:
    """A random tiny ViT saved as timm saves a model (config.json + model.safetensors);
    returns the model (eval mode)."""
    torch.manual_seed(seed)
    overlay = {"mean": mean, "std": std, "interpolation": interpolation}
    model = timm.create_model("vit_tiny_patch16_224", num_classes=num_classes, img_size=img_size,
                              pretrained_cfg_overlay=overlay, **TINY)
    save_for_hf(model, str(folder), safe_serialization=True)
    return model.eval()


def add_to_hub_cache(cache: Path, repo_id: str, folder: Path) -> str:
    """`folder` as the snapshot of hub repo `repo_id` in the Hugging Face cache `cache` (the
    layout huggingface_hub reads offline); returns the timm name `hf-hub:repo_id`."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / REVISION, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    return f"hf-hub:{repo_id}"


def offline_hub(monkeypatch, cache: Path) -> None:
    """huggingface_hub reads `cache` only, never the network."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
