"""An ImageNet-style tree: `path/<split>/<class>/<image>`."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import default_loader

from scalekd.data.source import LabelledImages
from scalekd.recipe import DataCfg


class ImageFolderSource(LabelledImages):
    def __init__(self, root: Path):
        folder = ImageFolder(str(root))
        self.classes = folder.classes
        self.samples = folder.samples
        self.targets = [label for _, label in folder.samples]

    def image(self, index: int) -> Image.Image:
        return default_loader(self.samples[index][0])

    def name(self, index: int) -> str:
        return Path(self.samples[index][0]).name

    @staticmethod
    def check(cfg: DataCfg) -> list[str]:
        if not cfg.path:
            return ["data.path is not set: pass data.path=/path/to/imagenet (a folder holding "
                    f"{cfg.train_split}/ and {cfg.val_split}/ with one sub-folder per class)"]
        root = Path(cfg.path)
        missing = [s for s in (cfg.train_split, cfg.val_split) if not (root / s).is_dir()]
        if missing:
            return [f"data.path={cfg.path!r} has no {' or '.join(m + '/' for m in missing)} "
                    "folder: point data.path at an ImageNet-style tree "
                    "(<path>/<split>/<class>/<image>)"]
        return []

    @staticmethod
    def load(cfg: DataCfg, split: str) -> "ImageFolderSource":
        data = ImageFolderSource(Path(cfg.path) / split)
        if split != cfg.train_split:
            train_classes = sorted(p.name for p in (Path(cfg.path) / cfg.train_split).iterdir()
                                   if p.is_dir())
            if data.classes != train_classes:
                missing = sorted(set(train_classes) - set(data.classes))
                extra = sorted(set(data.classes) - set(train_classes))
                raise ValueError(
                    f"{split}/ and {cfg.train_split}/ have different classes (missing from "
                    f"{split}: {missing[:5]}, extra: {extra[:5]}); the labels would shift"
                )
        return data
