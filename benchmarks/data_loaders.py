"""Images/s delivered to the training loop by each loader, side by side, on the same JPEGs.

    python benchmarks/data_loaders.py                 # 2,000 images at 256 px and at 500x375
    python benchmarks/data_loaders.py --images 500 --sizes 256

Writes the JPEG sets (an ImageNet-like tree, 10 classes) and their .beton files into a temporary
folder, then times one epoch of each loader at 224 px, batch 64, 2 workers (FFCV: 2 decoding
threads; the others: 2 DataLoader processes), after a few warm-up batches (FFCV compiles its
pipeline on its first epoch). Each loader delivers what the trainer consumes: normalised float
batches. Two augmentation settings: random-resized crop + flip, and the A1 recipe's (crop +
flip + RandAugment rand-m7-mstd0.5). Loaders:

  imagefolder+PIL   data.source=imagefolder: PIL decode, timm's transforms, float tensors
  imagefolder uint8 the same with data.uint8=true: uint8 crops, normalised on the batch
  ffcv              data.source=ffcv: FFCV's decoder (crop, flip); RandAugment after decoding,
                    in 2 processes a batch ahead (data.augment_workers)
  ffcv, aug in loop the same with RandAugment in the training process (data.augment_workers=0)

Ratios matter more than absolute numbers: the machine's load is printed with the table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from scalekd.data import SOURCES, build_train_data
from scalekd.data.beton import write_beton
from scalekd.recipe import Recipe, apply_overrides

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LOADERS = {
    "imagefolder+PIL": ["data.source=imagefolder"],
    "imagefolder uint8": ["data.source=imagefolder", "data.uint8=true"],
    "ffcv": ["data.source=ffcv"],
    "ffcv, aug in loop": ["data.source=ffcv", "data.augment_workers=0"],
}
AUGS = {"crop+flip": [], "+RandAugment": ["aug.auto_augment=rand-m7-mstd0.5"]}
WARMUP = 3  # batches


def write_jpegs(root: Path, count: int, size: tuple[int, int], seed: int = 0) -> Path:
    """`count` photo-like JPEGs (smooth colour fields + grain, quality 90) in 10 classes."""
    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(count):
        folder = root / "train" / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        field = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize(
            (w, h), Image.BICUBIC)
        pixels = np.asarray(field, dtype=np.int16) + rng.normal(0, 12, (h, w, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            folder / f"{i:05d}.jpg", quality=90)
    return root


_KEEP = []  # loaders live to the end: numba's finalizers print errors when FFCV's code is freed


def images_per_s(recipe: Recipe) -> float:
    images = SOURCES[recipe.data.source].load(recipe.data, "train")
    data = build_train_data(recipe, images, MEAN, STD, 0, 1)
    _KEEP.append(data)
    for b, _ in enumerate(data.epoch(0)):
        if b + 1 == WARMUP:
            break
    count, start = 0, time.perf_counter()
    for x, _ in data.epoch(1):
        count += len(x)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--sizes", nargs="+", default=["256", "500x375"],
                        help="JPEG sizes: N (square) or WxH")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    results: dict[tuple[str, str, str], float] = {}
    with tempfile.TemporaryDirectory(prefix="scalekd_bench_") as tmp:
        for size in args.sizes:
            w, h = (int(v) for v in size.split("x")) if "x" in size else (int(size),) * 2
            tree = write_jpegs(Path(tmp) / size / "tree", args.images, (w, h))
            beton = Path(tmp) / size / "beton"
            cfg = apply_overrides(Recipe(), [f"data.path={tree}"]).data
            write_beton(SOURCES["imagefolder"].load(cfg, "train"), beton / "train.beton",
                        write_mode="jpg", max_side=max(w, h), workers=args.workers)
            for aug, aug_overrides in AUGS.items():
                for name, overrides in LOADERS.items():
                    path = beton if name.startswith("ffcv") else tree
                    recipe = apply_overrides(Recipe(), [
                        f"data.path={path}", "data.batch_size=64", "data.input_size=224",
                        f"data.workers={args.workers}", *overrides, *aug_overrides])
                    results[size, aug, name] = images_per_s(recipe)
                    print(f"  {size:>8} {aug:<13} {name:<18} "
                          f"{results[size, aug, name]:7.0f} img/s", flush=True)

    columns = [(size, aug) for size in args.sizes for aug in AUGS]
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\nimages/s delivered to the loop at 224 px, batch 64, {args.workers} workers, "
          f"{args.images} JPEGs; load average {load} on {os.cpu_count()} cores")
    print(f"{'loader':<18}" + "".join(f"{s + ' ' + a:>24}" for s, a in columns))
    for name in LOADERS:
        cells = []
        for size, aug in columns:
            value, base = results[size, aug, name], results[size, aug, "imagefolder+PIL"]
            cells.append(f"{value:7.0f} ({value / base:4.2f}x)")
        print(f"{name:<18}" + "".join(f"{c:>24}" for c in cells))


if __name__ == "__main__":
    main()
