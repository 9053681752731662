"""A folder written by `scalekd mix` (scalekd/data/mixing.py), read back for training:
`data.mixed=FOLDER` adds its images to the training set with label -1, so that they feed only
the distillation terms (the hard-label loss ignores -1), half of every batch (MixedBatches).

FOLDER/manifest.json lists the finished images, FOLDER/images/ holds them."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from scalekd.data.imagefolder import open_rgb
from scalekd.data.source import LabelledImages
from scalekd.recipe import DataCfg, Recipe

MANIFEST, IMAGES = "manifest.json", "images"


def mixed_set_problems(recipe: Recipe, distils: bool, per_step: int) -> list[str]:
    """data.mixed: the folder, and what it combines with: a method with distillation terms
    (`distils`), no Mixup/CutMix, the imagefolder source, an even micro-batch of `per_step`."""
    if not recipe.data.mixed:
        return []
    problems = mixed_problems(recipe.data)
    if not distils:
        problems.append(f"data.mixed: synthetic images only feed distillation terms, and "
                        f"distill.method={recipe.distill.method!r} has none")
    if recipe.aug.mixup > 0 or recipe.aug.cutmix > 0:
        # the paper mixes only real images; Image Mixer outputs are mixes already
        problems.append("data.mixed: Mixup/CutMix would mix the labels of synthetic images, "
                        "which have none: set aug.mixup=0 aug.cutmix=0")
    if recipe.data.source == "ffcv":
        problems.append("data.mixed reads image files: use the imagefolder source with it, "
                        "not data.source=ffcv")
    micro = recipe.data.batch_size // per_step
    if micro % 2:
        problems.append(f"data.mixed: every micro-batch is half real, half synthetic, so the "
                        f"per-process micro-batch ({micro}) must be even")
    return problems


def mixed_problems(cfg: DataCfg) -> list[str]:
    """What stops data.mixed from being read, found from the manifest alone."""
    if not cfg.mixed:
        return []
    folder = Path(cfg.mixed)
    make = (f"write it with `scalekd mix --out {cfg.mixed} --model MODEL data.path=...` (the "
            "same data.* as training)")
    if not folder.is_dir():
        return [f"data.mixed={cfg.mixed!r} does not exist: {make}, or fix the path"]
    try:
        images = json.loads((folder / MANIFEST).read_text())["images"]
    except (OSError, ValueError, KeyError) as err:
        return [f"data.mixed={cfg.mixed!r} has no readable {MANIFEST} ({err}): {make}"]
    if not images:
        return [f"data.mixed={cfg.mixed!r}: {MANIFEST} lists no image yet: {make} (running "
                "it again resumes an interrupted run)"]
    return []


class MixedImages(LabelledImages):
    """The images a manifest lists, all unlabelled (-1)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        rows = json.loads((self.folder / MANIFEST).read_text())["images"]
        self.files = [row["file"] for row in rows]
        self.targets = [-1] * len(self.files)
        self.classes = []

    def image(self, index: int) -> Image.Image:
        return open_rgb(str(self.folder / self.files[index]))

    def name(self, index: int) -> str:
        return self.files[index]


class WithMixed(LabelledImages):
    """Real images (indices [0, len(real))) followed by mixed ones, the real classes kept."""

    def __init__(self, real: LabelledImages, mixed: MixedImages):
        self.real, self.mixed = real, mixed
        self.classes, self.skipped = real.classes, real.skipped
        self.targets = list(real.targets) + mixed.targets

    def image(self, index: int) -> Image.Image:
        n = len(self.real)
        return self.real.image(index) if index < n else self.mixed.image(index - n)

    def name(self, index: int) -> str:
        n = len(self.real)
        return self.real.name(index) if index < n else self.mixed.name(index - n)
