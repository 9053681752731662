"""The interface every data source implements."""

from __future__ import annotations

import multiprocessing
import warnings
from typing import Optional, Protocol

from PIL import Image
from torch.utils.data import Dataset

from scalekd.recipe import DataCfg


class UnreadableImage(OSError):
    """An image file that cannot be decoded (corrupt, truncated, not an image); names the file."""


class SkipCounter:
    """How many bad files were skipped (data.bad_files=skip), summed over the loader's worker
    processes (a shared value, inherited when they start) and reported to TensorBoard."""

    def __init__(self, start: int = 0):
        self._value = multiprocessing.Value("q", start)

    def add(self, message: str) -> None:
        with self._value.get_lock():
            self._value.value += 1
        warnings.warn(f"{message} (data.bad_files=skip)", stacklevel=2)

    @property
    def count(self) -> int:
        return self._value.value


class LabelledImages(Dataset):
    """Images with integer labels; `targets[i]` is the label of item i, -1 when unlabelled."""

    classes: list[str]
    targets: list[int]
    # set by sources that skip unreadable images (data.bad_files=skip); None: they raise
    skipped: Optional[SkipCounter] = None

    def image(self, index: int) -> Image.Image:
        """Item `index`'s image; raises UnreadableImage naming the file if it cannot be read."""
        raise NotImplementedError

    def name(self, index: int) -> str:
        """What re-labelled sets key image i by (its file name where it has one)."""
        return str(index)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        """Item `index`, or when it is unreadable and skipping is on, the next readable item
        with its own label (a replacement keeps batch shapes; labels never shift)."""
        for offset in range(len(self)):
            item = (index + offset) % len(self)
            try:
                return self.image(item), self.targets[item]
            except UnreadableImage as err:
                if self.skipped is None:
                    raise
                self.skipped.add(f"{err}; item {index} is replaced by the next readable one")
        raise UnreadableImage(f"none of the {len(self)} images can be read")


class Source(Protocol):
    @staticmethod
    def check(cfg: DataCfg) -> list[str]:
        """Problems with `cfg` for this source, found without reading the data."""

    @staticmethod
    def load(cfg: DataCfg, split: str) -> LabelledImages:
        """The split's images and labels."""
