"""A class subset of any source (`data.classes`): only those classes' images, relabelled 0..k-1
in the order given, so that one data set yields disjoint tasks (e.g. pretrain an encoder on
some classes, then probe and distil on the others)."""

from __future__ import annotations

from typing import Optional

from scalekd.data import SOURCES
from scalekd.data.source import LabelledImages
from scalekd.recipe import DataCfg


def load_split(cfg: DataCfg, split: str) -> LabelledImages:
    """The split as a run sees it: the source's images, restricted to `data.classes`."""
    images = SOURCES[cfg.source].load(cfg, split)
    return ClassSubset(images, cfg.classes) if cfg.classes else images


def source_problems(cfg: DataCfg) -> list[str]:
    """data.source through the registry: the source's own checks, then data.classes."""
    source = SOURCES.get(cfg.source)
    if source is None:
        return [f"data.source={cfg.source!r} is unknown; choose one of "
                f"{', '.join(sorted(SOURCES))}"]
    return source.check(cfg) + check_classes(cfg)


def check_classes(cfg: DataCfg) -> list[str]:
    """Problems with `data.classes`, found without reading the data."""
    if not cfg.classes:
        return []
    classes = list(cfg.classes)
    problems = []
    if len(set(classes)) != len(classes) or min(classes) < 0:
        problems.append(f"data.classes={cfg.classes}: give distinct class indices >= 0")
    known = getattr(SOURCES.get(cfg.source), "classes", None)  # sources with fixed classes
    if isinstance(known, list) and max(classes) >= len(known):
        problems.append(f"data.classes={cfg.classes}: data.source={cfg.source!r} has "
                        f"{len(known)} classes (indices 0..{len(known) - 1})")
    if cfg.source == "ffcv":
        problems.append("data.classes with data.source=ffcv: write a .beton of the subset "
                        "instead (`scalekd make-beton` from a source with data.classes)")
    return problems


def known_classes(cfg: DataCfg) -> Optional[list[str]]:
    """The class names a run will see, for sources whose classes are fixed (Fashion-MNIST,
    synthetic); None where only reading the data tells (image folders, .beton files)."""
    names = getattr(SOURCES.get(cfg.source), "classes", None)
    if not isinstance(names, list) or (cfg.classes and max(cfg.classes) >= len(names)):
        return None
    return [names[c] for c in cfg.classes] if cfg.classes else list(names)


class ClassSubset(LabelledImages):
    def __init__(self, images: LabelledImages, classes: tuple[int, ...]):
        if max(classes) >= len(images.classes):
            raise ValueError(f"data.classes={classes}: the data has {len(images.classes)} "
                             f"classes (indices 0..{len(images.classes) - 1})")
        new_label = {c: i for i, c in enumerate(classes)}
        self.base = images
        self.keep = [i for i, t in enumerate(images.targets) if t in new_label]
        self.targets = [new_label[images.targets[i]] for i in self.keep]
        self.classes = [images.classes[c] for c in classes]
        self.skipped = images.skipped

    def image(self, index: int):
        return self.base.image(self.keep[index])

    def name(self, index: int) -> str:
        return self.base.name(self.keep[index])
