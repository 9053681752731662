"""The interface every data source implements."""

from __future__ import annotations

from typing import Protocol

from PIL import Image
from torch.utils.data import Dataset

from scalekd.recipe import DataCfg


class LabelledImages(Dataset):
    """Images with integer labels; `targets[i]` is the label of item i, -1 when unlabelled."""

    classes: list[str]
    targets: list[int]

    def image(self, index: int) -> Image.Image:
        raise NotImplementedError

    def name(self, index: int) -> str:
        """What re-labelled sets key image i by (its file name where it has one)."""
        return str(index)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.image(index), self.targets[index]


class Source(Protocol):
    @staticmethod
    def check(cfg: DataCfg) -> list[str]:
        """Problems with `cfg` for this source, found without reading the data."""

    @staticmethod
    def load(cfg: DataCfg, split: str) -> LabelledImages:
        """The split's images and labels."""
