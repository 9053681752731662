"""Write FFCV .beton files from any source (`scalekd make-beton`): `<out>/<split>.beton` with
the images and labels, and `<out>/<split>.json` with the class and image names (a .beton has no place
for them) and how it was written."""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Optional

import numpy as np

from scalekd.data.ffcv_source import ffcv_problems, torch_threads_kept
from scalekd.data.source import LabelledImages
from scalekd.files import publish, write_text_atomically
from scalekd.recipe import DataCfg

WRITE_MODES = ("raw", "jpg", "proportion", "smart")


def write_beton(images: LabelledImages, path: Path, write_mode: str = "jpg",
                max_side: Optional[int] = 512, jpeg_quality: int = 90,
                compress_probability: float = 0.5, smart_threshold: int = 3 * 256 * 256,
                workers: int = 2) -> Path:
    """Write `images` to `path` (a .beton) and its classes to the .json beside it.

    Images are resized to at most `max_side` pixels on their longer side and stored as raw
    pixels, JPEG (`jpeg_quality`), JPEG for a `compress_probability` share of them
    (proportion), or JPEG when raw would exceed `smart_threshold` bytes (smart), by `workers`
    processes. An image that cannot be read stops the write with every such file named (with
    data.bad_files=skip the source has already replaced it by the next readable one)."""
    with torch_threads_kept():
        from ffcv.fields import IntField, RGBImageField
        from ffcv.writer import DatasetWriter

    if write_mode not in WRITE_MODES:
        raise ValueError(f"write mode {write_mode!r}: choose one of {', '.join(WRITE_MODES)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial, failures = path.with_suffix(".beton.tmp"), path.with_suffix(".failures.tmp")
    failures.unlink(missing_ok=True)
    fields = {"image": RGBImageField(write_mode=write_mode, max_resolution=max_side or None,
                                     jpeg_quality=jpeg_quality, smart_threshold=smart_threshold,
                                     compress_probability=compress_probability),
              "label": IntField()}
    DatasetWriter(str(partial), fields, num_workers=workers).from_indexed_dataset(
        _NeverRaising(images, failures))
    if failures.exists():  # FFCV's writer hangs on an error in a worker: they are collected
        problems = failures.read_text().splitlines()
        partial.unlink(missing_ok=True)
        failures.unlink()
        raise ValueError(f"{len(problems)} image(s) could not be written to {path}:\n  "
                         + "\n  ".join(problems[:20])
                         + "\nfix or remove them, or pass data.bad_files=skip to replace each by "
                           "the next readable image")
    publish(partial, path)
    skipped = images.skipped.count if images.skipped is not None else 0
    write_text_atomically(path.with_suffix(".json"), json.dumps({
        "classes": list(images.classes), "num_images": len(images), "skipped": skipped,
        "names": [images.name(i) for i in range(len(images))],  # what re-labelled sets key by
        "write_mode": write_mode, "max_side": max_side, "jpeg_quality": jpeg_quality,
    }, indent=2))
    return path


def make_betons(cfg: DataCfg, out: Path, splits: Optional[list[str]] = None,
                **options) -> list[Path]:
    """One .beton per split of the source `cfg` describes (default: its train and val splits)."""
    from scalekd.data import SOURCES
    from scalekd.data.classes import check_classes, load_split

    problems = ffcv_problems() + SOURCES[cfg.source].check(cfg) + check_classes(cfg)
    if problems:
        raise ValueError("\n".join(problems))
    paths = []
    for split in splits or [cfg.train_split, cfg.val_split]:
        images = load_split(cfg, split)
        paths.append(write_beton(images, Path(out) / f"{split}.beton", **options))
    return paths


class _NeverRaising:
    """The writer's view of `images`: an item that raises is recorded in `failures` (appended
    line by line, so every worker process can) and replaced by a placeholder."""

    def __init__(self, images: LabelledImages, failures: Path):
        self.images, self.failures = images, failures

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        try:
            image, target = self.images[index]
            return np.asarray(image.convert("RGB")), target
        except Exception as err:  # noqa: BLE001 - reported after the write, never swallowed
            line = str(err) if isinstance(err, OSError) else traceback.format_exc(limit=1)
            with open(self.failures, "a") as f:
                f.write(line.replace("\n", " ") + "\n")
            return np.zeros((8, 8, 3), np.uint8), 0
