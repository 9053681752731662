"""A probe of seconds on the tiny runs' teacher (helpers.runs): what the probe and the probed
teacher tests share."""

from __future__ import annotations

from pathlib import Path

from helpers.runs import TINY_VIT


def probe_overrides(out: Path, teacher_checkpoint: Path, *extra: str) -> list[str]:
    """The tiny ViT teacher (2 blocks of width 192) probed on the tiny runs' data (64 synthetic
    images at 32 px): its 2 last class tokens and patch mean."""
    return [
        "data.source=synthetic", "data.num_samples=64", "data.input_size=32", "data.workers=0",
        "teacher.name=vit_tiny_patch16_224", f"teacher.kwargs={TINY_VIT}",
        f"teacher.checkpoint={teacher_checkpoint}", "teacher.dtype=fp32",
        f"run.dir={out}", "probe.epochs=5", "probe.blocks=2", "probe.lrs=(1e-3,1e-2)", *extra,
    ]
