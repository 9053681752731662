"""Fashion-MNIST from Debian's `dataset-fashion-mnist` (no download at run time), with
torchvision's downloader as the fallback where those files are absent."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

from scalekd.data.source import LabelledImages
from scalekd.recipe import DataCfg

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_DIR = Path.home() / ".cache" / "scalekd" / "fashion-mnist"
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
SPLITS = {"train": "train", "test": "t10k"}


class FashionMNIST(LabelledImages):
    classes = CLASSES

    def __init__(self, pixels: np.ndarray, labels: np.ndarray):
        self.pixels = pixels
        self.targets = labels.astype(np.int64).tolist()

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(self.pixels[index], mode="L").convert("RGB")

    @staticmethod
    def check(cfg: DataCfg) -> list[str]:
        problems = []
        for split in (cfg.train_split, cfg.val_split):
            if split not in SPLITS:
                problems.append(f"fashion_mnist has splits {list(SPLITS)}, not {split!r} "
                                f"(set data.train_split / data.val_split)")
        if cfg.path and not Path(cfg.path).is_dir():
            problems.append(f"data.path={cfg.path!r} is not a folder of Fashion-MNIST IDX files")
        return problems

    @staticmethod
    def load(cfg: DataCfg, split: str) -> "FashionMNIST":
        folder = Path(cfg.path) if cfg.path else _folder()
        prefix = SPLITS[split]
        pixels = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
        return FashionMNIST(pixels, labels)


def _folder() -> Path:
    if (DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz").exists():
        return DEBIAN_DIR
    import torchvision

    for train in (True, False):  # downloads the same four gzipped IDX files
        torchvision.datasets.FashionMNIST(str(DOWNLOAD_DIR), train=train, download=True)
    return DOWNLOAD_DIR / "FashionMNIST" / "raw"


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
