"""An ImageNet-style tree: `path/<split>/<class>/<image>`, checked so that labels cannot shift.

torchvision's ImageFolder ignores files without an image extension and, with allow_empty, drops
empty class folders (every later label then shifts by one); here the tree is scanned once at
load, before any compute: an empty class folder and a class missing from (or extra in) the
validation split are errors naming them; a non-image file is an error naming it, or with
data.bad_files=skip it is left out, counted and warned about. Corrupt or truncated images are
found when read (decoding all of ImageNet up front would take as long as an epoch): an error
naming the file, or with skip a replacement by the next readable image, counted.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, has_file_allowed_extension

from scalekd.data.source import LabelledImages, SkipCounter, UnreadableImage
from scalekd.recipe import DataCfg

SHOWN = 5  # bad paths listed in a message


class ImageFolderSource(LabelledImages):
    def __init__(self, root: Path, bad_files: str = "error", labels: bool = True):
        # without labels (data.labels=false): every image under root, class folders or none
        self.classes, self.samples, non_images = scan(Path(root)) if labels else scan_images(
            Path(root))
        self.targets = [label for _, label in self.samples]
        if non_images:
            shown = ", ".join(str(p) for p in non_images[:SHOWN])
            if bad_files == "error":
                raise ValueError(
                    f"{len(non_images)} file(s) under {root} are not images ({shown}"
                    f"{', ...' if len(non_images) > SHOWN else ''}): remove them, or pass "
                    "data.bad_files=skip to leave them out")
            warnings.warn(f"left out {len(non_images)} non-image file(s) under {root} ({shown}) "
                          "(data.bad_files=skip)")
        self.skipped = SkipCounter(len(non_images)) if bad_files == "skip" else None

    def image(self, index: int) -> Image.Image:
        return open_rgb(self.samples[index][0])

    def name(self, index: int) -> str:
        return Path(self.samples[index][0]).name

    @staticmethod
    def check(cfg: DataCfg) -> list[str]:
        if not cfg.labels:
            if not cfg.path or not (Path(cfg.path) / cfg.train_split).is_dir():
                return [f"data.labels=false: data.path={cfg.path!r} has no {cfg.train_split}/ "
                        "folder: point data.path at a folder holding <train_split>/ with the "
                        "images (flat or in sub-folders; data.train_split=. reads data.path "
                        "itself)"]
            return []
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
        data = ImageFolderSource(Path(cfg.path) / split, cfg.bad_files, cfg.labels)
        if split != cfg.train_split and cfg.labels:
            train_classes, _ = find_classes(Path(cfg.path) / cfg.train_split)
            check_same_classes(data.classes, train_classes, split, cfg.train_split)
        return data


def open_rgb(path: str) -> Image.Image:
    """The decoded RGB image at `path`, or UnreadableImage naming the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # decodes the whole file: truncation shows here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UnreadableImage(f"cannot read image {path}: {err}") from err


def scan(root: Path) -> tuple[list[str], list[tuple[str, int]], list[Path]]:
    """Class names, (image path, label) pairs and the non-image files of a class-folder tree;
    an empty class folder is an error naming it (dropping it would shift later labels)."""
    classes, class_to_idx = find_classes(root)
    samples, non_images, empty = [], [], []
    for name in classes:
        found = 0
        for folder, _, files in sorted(os.walk(root / name, followlinks=True)):
            for file in sorted(files):
                path = Path(folder) / file
                if has_file_allowed_extension(file, IMG_EXTENSIONS):
                    samples.append((str(path), class_to_idx[name]))
                    found += 1
                else:
                    non_images.append(path)
        if not found:
            empty.append(str(root / name))
    if empty:
        raise ValueError(
            f"{len(empty)} class folder(s) hold no image: {', '.join(empty[:SHOWN])}; add images "
            "or remove the folder from every split (an empty class would shift the labels of "
            "every later class)")
    return classes, samples, non_images


def scan_images(root: Path) -> tuple[list[str], list[tuple[str, int]], list[Path]]:
    """`scan` without classes: every image under root (label -1), sub-folders or none; no image
    at all is an error."""
    samples, non_images = [], []
    for folder, _, files in sorted(os.walk(root, followlinks=True)):
        for file in sorted(files):
            path = Path(folder) / file
            if has_file_allowed_extension(file, IMG_EXTENSIONS):
                samples.append((str(path), -1))
            else:
                non_images.append(path)
    if not samples:
        raise ValueError(f"{root} holds no image (extensions {', '.join(IMG_EXTENSIONS)})")
    return [], samples, non_images


def check_same_classes(classes: list[str], train_classes: list[str], split: str,
                       train_split: str) -> None:
    if classes != train_classes:
        missing = sorted(set(train_classes) - set(classes))
        extra = sorted(set(classes) - set(train_classes))
        raise ValueError(
            f"{split}/ and {train_split}/ have different classes (missing from {split}: "
            f"{missing[:SHOWN]}, extra: {extra[:SHOWN]}); the labels would shift: give both "
            "splits the same class folders")
