"""`scalekd mix`: a synthetic training set of Image Mixer blends of random training images.

The task-specific distillation paper (Section 3.2) extends the transfer set with Pinkney's
Image Mixer, Stable Diffusion image variation fine-tuned on the CLIP image embeddings of
several images concatenated along the sequence axis, "mixing random pairs of images,
regardless of their classes", N times the training set's size. The images feed only the
distillation loss (data.mixed, scalekd/data/mix_folder.py).

Every output is a pure function of (seed, its index): which training images it mixes and its
initial noise (DDIM, eta 0: no other randomness). So any output can be made again on its own:
a run resumes by skipping the files that exist (each written to a temporary name and renamed,
so a file under its final name is complete), and a larger multiplier extends a set.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionImageVariationPipeline
from tqdm import tqdm

from scalekd.data.mix_folder import IMAGES, MANIFEST
from scalekd.data.source import LabelledImages
from scalekd.files import TMP_PREFIX, write_atomically, write_text_atomically

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FORMATS = {"jpg": "JPEG", "png": "PNG"}
MANIFEST_EVERY_S = 60.0  # rewrite the manifest this often while generating (and at the end)


class MixError(ValueError):
    """`scalekd mix` cannot run; the message says how to fix it."""


class ImageMixerPipeline(StableDiffusionImageVariationPipeline):
    """Image Mixer: each sample is a list of k images; their projected CLIP image embeddings,
    each scaled by its weight (default 1), form a (k, D) cross-attention sequence, and the
    unconditional input of classifier-free guidance is all zeros, as Pinkney's sampler has it.

    `pipe([[a, b], [c, d]], weights=[[1, 1], [0.5, 1]])` makes two images. The components are
    those of StableDiffusionImageVariationPipeline, so a folder saved by it loads here."""

    _weights: Optional[torch.Tensor] = None

    @torch.no_grad()
    def __call__(self, image: Sequence[Sequence[PIL.Image.Image]],
                 weights: Optional[Sequence[Sequence[float]]] = None, **kwargs):
        if len({len(sample) for sample in image}) != 1:
            raise ValueError("every sample of a batch must mix the same number of images")
        self._weights = None if weights is None else torch.tensor(weights, dtype=torch.float32)
        try:
            return super().__call__(list(image), **kwargs)
        finally:
            self._weights = None

    def _encode_image(self, image, device, num_images_per_prompt, do_classifier_free_guidance):
        per_sample = len(image[0])
        dtype = next(self.image_encoder.parameters()).dtype
        flat = [im for sample in image for im in sample]
        pixels = self.feature_extractor(images=flat, return_tensors="pt").pixel_values
        embeds = self.image_encoder(pixels.to(device=device, dtype=dtype)).image_embeds
        embeds = embeds.view(len(image), per_sample, -1)
        if self._weights is not None:
            embeds = embeds * self._weights.to(device=device, dtype=dtype).unsqueeze(-1)
        embeds = embeds.repeat_interleave(num_images_per_prompt, dim=0)
        if do_classifier_free_guidance:
            embeds = torch.cat([torch.zeros_like(embeds), embeds])
        return embeds


def load_pipeline(model: str, device: str = "cpu", dtype: str = "fp32") -> ImageMixerPipeline:
    """The Image Mixer from a diffusers pipeline folder or a hub repo in that layout."""
    local = Path(model).expanduser()
    if local.exists() and not (local / "model_index.json").is_file():
        raise MixError(f"--model {model}: no model_index.json there; {LAYOUT}")
    try:
        pipe = ImageMixerPipeline.from_pretrained(str(local) if local.exists() else model,
                                                  dtype=DTYPES[dtype])
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MixError(
            f"--model {model}: cannot load it ({first}). Offline machines cannot fetch hub "
            f"repos: download it where there is network (`hf download {model} --local-dir "
            f"DIR`), copy DIR here and pass --model DIR; {LAYOUT}") from None
    if pipe.image_encoder is None or pipe.feature_extractor is None:
        raise MixError(f"--model {model} has no image_encoder or feature_extractor; {LAYOUT}")
    pipe.set_progress_bar_config(disable=True)  # one bar over the whole set instead
    return pipe.to(device)


LAYOUT = ("diffusers needs a pipeline folder: model_index.json with unet/ (UNet2DConditionModel),"
          " vae/ (AutoencoderKL), image_encoder/ (CLIPVisionModelWithProjection), scheduler/ and "
          "feature_extractor/ (CLIPImageProcessor), as StableDiffusionImageVariationPipeline."
          "save_pretrained writes it. lambdalabs/image-mixer itself ships the original "
          "Stable Diffusion checkpoint (image-mixer-pruned.ckpt): convert it to that layout "
          "once (its image encoder is CLIP ViT-L/14's, openai/clip-vit-large-patch14)")


@dataclass(frozen=True)
class MixOptions:
    model: str
    multiplier: int = 5  # outputs per training image (the paper: 5, 10 for small sets)
    images_per_mix: int = 2  # k: pairs by default
    weights: tuple[float, ...] = ()  # one per mixed image; empty: 1 each
    steps: int = 50  # DDIM steps
    guidance: float = 3.0  # classifier-free guidance scale (Pinkney's demo default)
    size: int = 640  # output height and width (Pinkney's demo: 640)
    seed: int = 0
    batch_size: int = 4
    device: str = "cpu"
    dtype: str = "fp32"
    format: str = "jpg"

    @property
    def mix_weights(self) -> list[float]:
        return list(self.weights) or [1.0] * self.images_per_mix

    def content(self) -> dict:
        """What decides the pixels of an output, as JSON has it: a resumed run keeps these."""
        kept = {k: v for k, v in asdict(self).items()
                if k not in ("multiplier", "batch_size", "device", "dtype")}
        return {**kept, "weights": self.mix_weights}


@dataclass(frozen=True)
class Mix:
    file: str  # relative to the output folder
    sources: tuple[int, ...]  # indices into the training split
    seed: int  # of the initial noise


def plan(num_images: int, options: MixOptions) -> list[Mix]:
    """Output j mixes `images_per_mix` distinct training images, drawn uniformly whatever
    their classes, with a noise seed; both from (seed, j) alone."""
    mixes = []
    for j in range(options.multiplier * num_images):
        rng = np.random.default_rng([options.seed, j])
        sources = rng.choice(num_images, options.images_per_mix, replace=False)
        mixes.append(Mix(f"{IMAGES}/{j:08d}.{options.format}",
                         tuple(int(i) for i in sources), int(rng.integers(2**63))))
    return mixes


def mix(images: LabelledImages, out: Path, options: MixOptions, source: dict,
        pipe: Optional[ImageMixerPipeline] = None) -> tuple[int, int]:
    """Write the missing outputs of the plan and the manifest under `out`; returns (written,
    total). `source` describes the training images (recorded in the manifest, not checked on
    resume: the data may move)."""
    _check_options(options, len(images))
    out = Path(out)
    (out / IMAGES).mkdir(parents=True, exist_ok=True)
    settings = {**options.content(), "num_train_images": len(images)}
    _check_resume(out, settings)
    for stale in (out / IMAGES).glob(TMP_PREFIX + "*"):  # left by an interrupted run
        stale.unlink()
    mixes = plan(len(images), options)
    todo = [m for m in mixes if not (out / m.file).is_file()]
    weights = options.mix_weights
    _write_manifest(out, settings, source, mixes, images, weights)
    if not todo:
        return 0, len(mixes)
    pipe = pipe or load_pipeline(options.model, options.device, options.dtype)
    written, saved_at = 0, time.monotonic()
    try:
        with tqdm(total=len(mixes), initial=len(mixes) - len(todo), unit="img",
                  desc="scalekd mix", dynamic_ncols=True) as bar:
            for start in range(0, len(todo), options.batch_size):
                batch = todo[start:start + options.batch_size]
                outputs = pipe(
                    [[images.image(i) for i in m.sources] for m in batch],
                    weights=[weights] * len(batch), height=options.size, width=options.size,
                    num_inference_steps=options.steps, guidance_scale=options.guidance,
                    eta=0.0,  # DDIM without step noise: the initial noise decides the image
                    generator=[torch.Generator().manual_seed(m.seed) for m in batch]).images
                for m, image in zip(batch, outputs):
                    _save(image, out / m.file, FORMATS[options.format])
                written += len(batch)
                bar.update(len(batch))
                if time.monotonic() - saved_at > MANIFEST_EVERY_S:
                    _write_manifest(out, settings, source, mixes, images, weights)
                    saved_at = time.monotonic()
    finally:  # also when interrupted: list what is done (a killed run is listed on resume)
        _write_manifest(out, settings, source, mixes, images, weights)
    return written, len(mixes)


def _check_options(o: MixOptions, num_images: int) -> None:
    problems = [msg for ok, msg in [
        (o.multiplier >= 1, "--multiplier must be at least 1"),
        (2 <= o.images_per_mix <= num_images,
         f"--images-per-mix must be between 2 and the {num_images} training images"),
        (not o.weights or len(o.weights) == o.images_per_mix,
         f"--weights needs one weight per mixed image ({o.images_per_mix})"),
        (o.steps >= 1, "--steps must be at least 1"),
        (o.size > 0 and o.size % 8 == 0, f"--size {o.size} must be a positive multiple of 8"),
        (o.batch_size >= 1, "--batch-size must be at least 1"),
        (o.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}"),
        (o.format in FORMATS, f"--format must be one of {', '.join(FORMATS)}"),
    ] if not ok]
    if problems:
        raise MixError("; ".join(problems))


def _check_resume(out: Path, settings: dict) -> None:
    manifest = out / MANIFEST
    if not manifest.is_file():
        return
    before = json.loads(manifest.read_text())["settings"]
    changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
    if changed:
        diff = ", ".join(f"{k}: {before.get(k)!r} -> {settings.get(k)!r}" for k in changed)
        raise MixError(f"{out} holds mixes made with other settings ({diff}); resume with the "
                       "same options and data, or write to a new --out folder")


def _write_manifest(out: Path, settings: dict, source: dict, mixes: list[Mix],
                    images: LabelledImages, weights: list[float]) -> None:
    """manifest.json: the settings and, for each output on disk, the training images it
    mixes (index in the training split, class/name, label), their weights and the seed."""
    rows = [{"file": m.file, "sources": list(m.sources),
             "names": [f"{images.classes[images.targets[i]]}/{images.name(i)}"
                       for i in m.sources],
             "labels": [images.targets[i] for i in m.sources],
             "weights": weights, "seed": m.seed}
            for m in mixes if (out / m.file).is_file()]
    write_text_atomically(out / MANIFEST, json.dumps({"settings": settings, "data": source,
                                                      "images": rows}, indent=1))


def _save(image: PIL.Image.Image, path: Path, fmt: str) -> None:
    write_atomically(path, lambda tmp: image.save(tmp, format=fmt,
                                                  **({"quality": 95} if fmt == "JPEG" else {})))
