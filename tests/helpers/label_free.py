"""Tiny label-free runs (distill.method=features, data.labels=false): a flat folder of PNGs
without class folders, a tiny DINOv2-style teacher with random weights saved to a file, and the
overrides of a run of seconds; what the method's tests and its engine tests share."""

from __future__ import annotations

from pathlib import Path

DINOV2 = {"img_size": 28, "depth": 2, "embed_dim": 32, "num_heads": 2}  # a 2x2 patch grid
RESNET = ("resnet18", {"channels": (8, 16, 32, 64), "stem_width": 8})
VIT = ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 2})


def write_flat_folder(root: Path, count: int = 16) -> Path:
    """`count` random PNGs straight in `root/train/`: no class folders, no val/ split."""
    import numpy as np
    from PIL import Image

    (root / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "train" / f"{i:02d}.png")
    return root


def teacher_file(path: Path, name: str) -> Path:
    """Random weights of the tiny DINOv2-style teacher `name`, saved as a user's file would be."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **DINOV2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def label_free(root, run_dir, teacher, checkpoint, student, *extra) -> list[str]:
    """A features run on the flat folder: batch 8 (2 steps an epoch), 3 epochs, logged each
    step, no checkpoint at epoch ends."""
    name, kwargs = student
    return [f"data.path={root}", "data.labels=false", "data.input_size=32",
            "data.batch_size=8", "data.workers=0", f"student.name={name}",
            f"student.kwargs={kwargs}", f"teacher.name={teacher}", f"teacher.kwargs={DINOV2}",
            f"teacher.checkpoint={checkpoint}", "distill.method=features", f"run.dir={run_dir}",
            "run.epochs=3", "run.log_every=1", "checkpoint.every_epochs=0", "optim.name=adamw",
            "optim.lr=3e-3", "optim.warmup_epochs=0", *extra]
