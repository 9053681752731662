"""Random images with learnable class structure, for smoke runs and tests (no files)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from scalekd.data.source import LabelledImages
from scalekd.recipe import DataCfg

NUM_CLASSES = 10


class Synthetic(LabelledImages):
    classes = [f"class{i}" for i in range(NUM_CLASSES)]

    def __init__(self, num_samples: int, size: int, seed: int):
        self.size, self.seed = size, seed
        self.targets = [i % NUM_CLASSES for i in range(num_samples)]

    def image(self, index: int) -> Image.Image:
        rng = np.random.default_rng((self.seed, index))
        label = self.targets[index]
        pixels = rng.integers(0, 128, (self.size, self.size, 3)) + 12 * label  # brightness ~ class
        return Image.fromarray(pixels.astype(np.uint8))

    @staticmethod
    def check(cfg: DataCfg) -> list[str]:
        return [] if cfg.num_samples > 0 else ["data.source=synthetic needs data.num_samples > 0"]

    @staticmethod
    def load(cfg: DataCfg, split: str) -> "Synthetic":
        return Synthetic(cfg.num_samples, cfg.input_size, seed=0 if split == cfg.train_split else 1)
