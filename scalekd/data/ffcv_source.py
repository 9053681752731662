"""The ffcv source: .beton files written by `scalekd make-beton`, read by FFCV's Loader.

`data.path` holds `<split>.beton` and `<split>.json` (class names). FFCV decodes each batch in
its own threads (`data.workers` of them): training images with a random-resized crop
(aug.scale, aug.ratio) and a flip (aug.hflip), evaluation images with a centre crop of
aug.crop_pct; its resizes are OpenCV's INTER_AREA, not aug.interpolation. What FFCV's numba
pipeline cannot express runs after decoding, on the batch: timm's RandAugment / colour jitter
on each image, in data.augment_workers processes a batch ahead (scalekd.data.augment_pool),
then in the main process (scalekd.data.on_batch) normalisation to the student's mean/std on
the device (uint8 until then; CPU and CUDA alike, no cupy) and random erasing; Mixup/CutMix
on the batch in the trainer, as for every source. Teacher and student see the same batch.

Order: not FFCV's. QUASI_RANDOM does not support distributed loading at all, and RANDOM with
distributed=True shards like DistributedSampler but knows neither repeated augmentation nor
mid-epoch resume. A custom TraversalOrder replays scalekd.data.sampler.EpochBatches instead: the
same seeded global order as the imagefolder source, each image repeated aug.repeated_aug times
with the copies on different ranks, each rank every world-th position, resumable at any batch.

Bit-reproducible on resume (and across worker counts): the order, the labels, RandAugment and
random erasing (seeded by the sample's position). Not reproducible: the crop and the flip,
drawn inside FFCV's numba decoders from per-thread generators that cannot be seeded per sample;
a resumed epoch sees the same images in the same order with other crops.
"""

from __future__ import annotations

import json
import queue
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from timm.data import create_transform

from scalekd.data.augment_pool import AugmentPool
from scalekd.data.imagefolder import check_same_classes
from scalekd.data.on_batch import BatchFinish
from scalekd.data.sampler import EpochBatches
from scalekd.data.source import LabelledImages
from scalekd.recipe import DataCfg, Recipe

FFCV_INSTALL = ("ffcv is not installed: apt-get install libturbojpeg0-dev libopencv-dev "
                "pkg-config, then pip install -c constraints.txt -e '.[ffcv]' "
                "(or SCALEKD_EXTRAS=ffcv bash scripts/setup.sh)")


@contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Importing ffcv, building a Loader and starting an epoch set torch's thread count to
    FFCV's worker count; the trainer keeps its own."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def ffcv_problems() -> list[str]:
    try:
        with torch_threads_kept():
            import ffcv  # noqa: F401
    except ImportError as err:
        return [f"{FFCV_INSTALL} ({err})"]
    return []


class BetonImages(LabelledImages):
    """A split's .beton: class and image names from its .json, labels from its metadata (no
    image is read)."""

    def __init__(self, path: Path):
        with torch_threads_kept():
            from ffcv.reader import Reader

            reader = Reader(str(path))
        meta = json.loads(path.with_suffix(".json").read_text())
        self.path, self.classes, self.names = path, meta["classes"], meta["names"]
        label = list(reader.handlers).index("label")
        self.targets = reader.metadata[f"f{label}"].astype(np.int64).tolist()
        if meta.get("skipped"):
            warnings.warn(f"{path}: {meta['skipped']} unreadable file(s) were replaced by their "
                          "next readable neighbour when it was written (data.bad_files=skip)")

    def image(self, index: int):
        raise TypeError(f"{self.path} is read a batch at a time, through FFCV's Loader")

    def name(self, index: int) -> str:
        return self.names[index]


class FFCVSource:
    @staticmethod
    def check(cfg: DataCfg) -> list[str]:
        problems = ffcv_problems()
        if not cfg.path:
            return problems + ["data.path is not set: pass data.path=<folder with train.beton "
                               "and val.beton>, written by `scalekd make-beton`"]
        for split in (cfg.train_split, cfg.val_split):
            beton = Path(cfg.path) / f"{split}.beton"
            if not (beton.is_file() and beton.with_suffix(".json").is_file()):
                problems.append(
                    f"data.source=ffcv: {beton} (and its .json) does not exist; write it with "
                    f"`scalekd make-beton --out {cfg.path} data.path=<image-folder tree>`")
        return problems

    @staticmethod
    def load(cfg: DataCfg, split: str) -> BetonImages:
        images = BetonImages(Path(cfg.path) / f"{split}.beton")
        if split != cfg.train_split:
            train = json.loads((Path(cfg.path) / f"{cfg.train_split}.json").read_text())
            check_same_classes(images.classes, train["classes"], split, cfg.train_split)
        return images


class _Order:
    """FFCV's Loader accepts an instance of a TraversalOrder subclass and calls it with itself
    (`order(loader)`); the rows it returns are whatever the caller set before the epoch."""

    def __init__(self, rows: np.ndarray):
        from ffcv.traversal_order.base import TraversalOrder  # optional: imported when used

        class Replay(TraversalOrder):
            def __init__(self, rows):
                self.rows = rows

            def __call__(self, loader):
                super().__init__(loader)
                return self

            def sample_order(self, epoch: int) -> np.ndarray:
                return self.rows

        self.order = Replay(np.asarray(rows, dtype=np.uint64))

    def set(self, rows: Sequence[int]) -> None:
        self.order.rows = np.asarray(rows, dtype=np.uint64)


def _loader(cfg: DataCfg, beton: BetonImages, batch: int, order: _Order, pipeline: list):
    with torch_threads_kept():
        from ffcv.loader import Loader

        return Loader(str(beton.path), batch_size=batch, num_workers=max(cfg.workers, 1),
                      os_cache=cfg.os_cache, order=order.order, drop_last=False,
                      seed=0,  # unused by our order; None would draw one from numpy's RNG
                      pipelines={"image": pipeline, "label": None})  # labels: ours


def _epoch(loader) -> Iterator[torch.Tensor]:
    """One pass of `loader`, its thread stopped and joined however the pass ends (one left
    running when the process exits can abort it)."""
    with torch_threads_kept():  # the epoch's thread sets them when it starts
        iterator = iter(loader)
        try:
            for (images,) in iterator:
                yield images
        finally:
            iterator.close()
            while iterator.is_alive():  # its end-of-epoch put blocks while the queue is full
                try:
                    iterator.output_queue.get(timeout=0.1)
                except queue.Empty:
                    pass
            iterator.join()


class TrainBatches:
    """The ffcv source's training batches: (normalised images on the device, labels)."""

    def __init__(self, recipe: Recipe, beton: BetonImages, rows: np.ndarray,
                 targets: Sequence[int], batches: EpochBatches, mean, std,
                 device: torch.device):
        from ffcv.fields.decoders import RandomResizedCropRGBImageDecoder
        from ffcv.transforms import RandomHorizontalFlip, ToTensor, ToTorchImage

        d, a = recipe.data, recipe.aug
        self.rows, self.batches = np.asarray(rows), batches
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        # RandAugment / colour jitter as timm builds them for the imagefolder source (without
        # the no-op jitter timm adds for color_jitter=0, which would cost a PIL round trip)
        _, per_sample, _ = create_transform(
            d.input_size, is_training=True, color_jitter=a.color_jitter or None,
            auto_augment=a.auto_augment or None, interpolation=a.interpolation, mean=mean,
            std=std, separate=True)
        per_sample = per_sample if per_sample.transforms else None
        workers = d.workers if d.augment_workers < 0 else d.augment_workers
        self.pool = (AugmentPool(per_sample, workers, batches.batch_size, d.input_size)
                     if per_sample is not None and workers > 0 else None)
        self.finish = BatchFinish(mean, std, device, None if self.pool else per_sample,
                                  a.re_prob)
        pipeline = [RandomResizedCropRGBImageDecoder((d.input_size, d.input_size),
                                                     scale=a.scale, ratio=a.ratio)]
        if a.hflip > 0:
            pipeline.append(RandomHorizontalFlip(a.hflip))
        pipeline += [ToTensor(), ToTorchImage()]
        self.order = _Order(self._rows(list(batches)))  # a whole epoch: FFCV's len() of it
        self.loader = _loader(d, beton, batches.batch_size, self.order, pipeline)

    def _rows(self, batches: list[list[tuple[int, int]]]) -> np.ndarray:
        return self.rows[[i for batch in batches for i, _ in batch]]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = list(self.batches)  # from the position TrainData.epoch set
        self.order.set(self._rows(batches))
        seeds = [[s for _, s in batch] for batch in batches]
        epoch = _epoch(self.loader)
        decoded = epoch if self.pool is None else self.pool.map(zip(epoch, seeds))
        try:
            for batch, batch_seeds, images in zip(batches, seeds, decoded):
                yield self.finish(images, batch_seeds), self.targets[[i for i, _ in batch]]
        finally:  # left early: the pool's tasks end, then FFCV's thread
            if decoded is not epoch:
                decoded.close()
            epoch.close()


class EvalBatches:
    """Evaluation batches of the ffcv source, sharded and padded as build_eval_loader does."""

    def __init__(self, recipe: Recipe, beton: BetonImages, mean, std, rank: int,
                 world_size: int, batch: int, input_size: int, device: torch.device):
        from ffcv.fields.decoders import CenterCropRGBImageDecoder
        from ffcv.transforms import ToTensor, ToTorchImage

        n = len(beton)
        rows = list(range(rank, n, world_size))
        padding = -(-n // world_size) - len(rows)
        self.targets = torch.tensor([beton.targets[i] for i in rows] + [-1] * padding)
        order = _Order(rows + [0] * padding)
        pipeline = [CenterCropRGBImageDecoder((input_size, input_size), recipe.aug.crop_pct),
                    ToTensor(), ToTorchImage()]
        self.loader = _loader(recipe.data, beton, batch, order, pipeline)
        self.finish = BatchFinish(mean, std, device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        done = 0
        for images in _epoch(self.loader):
            yield self.finish(images), self.targets[done:done + len(images)]
            done += len(images)
