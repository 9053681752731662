"""A tiny random Image Mixer, saved the way a user's converted model is (a diffusers
StableDiffusionImageVariationPipeline folder), for `scalekd mix` tests on CPU."""

from __future__ import annotations

from pathlib import Path


def need_diffusers() -> None:
    """Skip the calling test module without diffusers (fail under CI: helpers.extras)."""
    import importlib.util

    from helpers.extras import require_extra

    require_extra("diffusers is not installed (pip install -e '.[mix]')"
                  if importlib.util.find_spec("diffusers") is None else None)


def write_tiny_mixer(folder: Path, seed: int = 0) -> Path:
    """UNet (32, 64) channels, a 4-block VAE (8x smaller latents), a 2-layer CLIP vision
    tower with a 32-d projection, CLIP preprocessing at 32 px, DDIM."""
    import torch
    from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionImageVariationPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=(32,) * 4, layers_per_block=1, in_channels=3,
                        out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, image_size=32, patch_size=4))
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32,
                                                                           "width": 32})
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False)
    StableDiffusionImageVariationPipeline(
        vae=vae, image_encoder=encoder, unet=unet, scheduler=scheduler, safety_checker=None,
        feature_extractor=processor, requires_safety_checker=False).save_pretrained(folder)
    return Path(folder)
