"""The cache on disk: `index.json` and `shard_NNNNN.safetensors` files.

The index names the teacher (timm name, checkpoint path and SHA-256), k (logits kept per crop),
K (`draws` per image), the image and class counts, the augmentation the draws were made under,
and the shards. Shard s holds images [s * shard_size, (s+1) * shard_size) of the training split:
- "draws" int32 (n, K, 6): each draw's crop box, flip and seed (scalekd.data.teacher_cache.draws);
- "log_probs" float16 (n, K, k): the teacher's k largest log-probabilities, log_softmax of its
  logits over all classes, largest first;
- "classes" int16 (int32 beyond 32,767 classes) (n, K, k): their classes.
A shard is written to a temporary name and renamed when complete, so a file under its final
name is finished: an interrupted write resumes by skipping those.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import torch

from scalekd.files import write_atomically, write_text_atomically

INDEX = "index.json"
FORMAT = 1
DRAW_BYTES = 6 * 4  # six int32
IMAGENET_1K = 1_281_167  # training images


def shard_name(shard: int) -> str:
    return f"shard_{shard:05d}.safetensors"


def class_dtype(num_classes: int) -> torch.dtype:
    return torch.int16 if num_classes <= torch.iinfo(torch.int16).max else torch.int32


def entry_bytes(k: int, num_classes: int) -> int:
    """Bytes of one stored crop: its draw and k (log-probability, class) pairs."""
    return DRAW_BYTES + k * (2 + class_dtype(num_classes).itemsize)


def size_estimate(num_images: int, draws: int, k: int, num_classes: int) -> str:
    """What the cache will take, and what ImageNet-1k would at the same K and k."""
    per = entry_bytes(k, num_classes)
    idx = class_dtype(num_classes).itemsize
    return (f"{num_images:,} images x {draws} draws x ({k} x (2 + {idx}) + {DRAW_BYTES}) bytes "
            f"= {_size(num_images * draws * per)}; ImageNet-1k ({IMAGENET_1K:,} images) at "
            f"the same K and k: {_size(IMAGENET_1K * draws * per)}")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def read_index(folder: Path) -> Optional[dict[str, Any]]:
    path = Path(folder) / INDEX
    return json.loads(path.read_text()) if path.is_file() else None


def write_index(folder: Path, index: dict[str, Any]) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomically(folder / INDEX, json.dumps(index, indent=2))


def write_shard(folder: Path, shard: int, start: int, draws: torch.Tensor,
                log_probs: torch.Tensor, classes: torch.Tensor) -> Path:
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file({"draws": draws.to(torch.int32).contiguous(),
                   "log_probs": log_probs.to(torch.float16).contiguous(),
                   "classes": classes.contiguous()}, str(tmp),
                  metadata={"start": str(start), "count": str(len(draws))})
        os.chmod(tmp, 0o644)  # safetensors creates it private; a cache is read by other jobs

    return write_atomically(Path(folder) / shard_name(shard), write)


class CacheReader:
    """Entries of a complete cache, read one crop at a time through memory-mapped shards (a
    process touches only the pages of its own samples). Handles open lazily, per process: a
    loader worker opens its own."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.index = read_index(self.folder)
        self.shard_size = self.index["shard_size"]
        self._open: dict[int, Any] = {}

    def entry(self, image: int, draw: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(draw (6,) int32, log_probs (k,) float16, classes (k,)) of draw `draw` of `image`."""
        from safetensors import safe_open

        shard, row = divmod(image, self.shard_size)
        if shard not in self._open:
            self._open[shard] = safe_open(str(self.folder / shard_name(shard)), "pt")
        f = self._open[shard]
        return tuple(f.get_slice(name)[row, draw] for name in ("draws", "log_probs", "classes"))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": {}}  # safetensors handles do not pickle
