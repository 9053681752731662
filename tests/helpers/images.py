"""Real JPEG files for the data tests: Fashion-MNIST images in an ImageNet-style tree."""

from __future__ import annotations

from pathlib import Path

from scalekd.data.fashion_mnist import CLASSES, FashionMNIST
from scalekd.recipe import DataCfg


def jpeg_tree(root: Path, per_class: dict[str, int], size: int = 40) -> Path:
    """`root/<split>/<class>/<n>.jpg`: `per_class[split]` Fashion-MNIST images of each of its
    10 classes, upsampled to `size` px and saved as RGB JPEGs."""
    images = FashionMNIST.load(DataCfg(source="fashion_mnist"), "test")
    by_class = {c: [i for i, t in enumerate(images.targets) if t == c][:sum(per_class.values())]
                for c in range(len(CLASSES))}
    for s, (split, count) in enumerate(per_class.items()):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            start = sum(list(per_class.values())[:s])
            for n, i in enumerate(by_class[c][start:start + count]):
                images.image(i).resize((size, size)).save(folder / f"{n:04d}.jpg", quality=90)
    return root


def numbered_tree(root: Path, per_class: dict[str, int], classes: int = 4,
                  size: int = 40) -> Path:
    """`root/<split>/c<k>/<n>.jpg`, JPEGs whose grey level tells their place in the split's
    sorted order: image i of a split is level(i) +- 2 of noise, so a crop's mean reads back i
    (`index_of`) through any crop, flip, resize and JPEG round trip."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for i in range(classes * count):
            folder = root / split / f"c{i // count}"
            folder.mkdir(parents=True, exist_ok=True)
            noise = rng.integers(-2, 3, (size, size, 3))
            pixels = np.clip(level(i) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i % count:04d}.jpg", quality=95)
    return root


def level(i: int) -> int:
    return 20 + 4 * i


def index_of(images, mean: float = 0.5, std: float = 0.5) -> list[int]:
    """The numbered_tree index of each normalised image of a batch."""
    pixels = (images.float().mean(dim=(1, 2, 3)) * std + mean) * 255
    return ((pixels - level(0)) / 4).round().long().tolist()


def need_ffcv() -> None:
    """Skip the calling test module without ffcv (fail under CI: helpers.extras)."""
    from helpers.extras import require_extra
    from scalekd.data.ffcv_source import ffcv_problems

    problems = ffcv_problems()  # imports ffcv, keeping torch's thread count
    require_extra(problems[0] if problems else None)
