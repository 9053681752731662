"""Real timm teacher families in tiny configurations (pretrained=False)."""

import timm
import torch

from scalekd.models.teacher import FrozenTeacher

SWIN = {"img_size": 64, "depths": (1, 1, 1, 1), "window_size": 2, "embed_dim": 24,
        "num_heads": (1, 1, 1, 1)}
TEACHERS = {  # name: (kwargs, input size)
    "vit_tiny_patch16_224": ({"img_size": 64, "depth": 4}, 64),
    "beitv2_base_patch16_224": ({"img_size": 64, "depth": 4, "embed_dim": 64, "num_heads": 2},
                                64),
    "vit_small_patch14_reg4_dinov2": ({"img_size": 56, "depth": 4, "embed_dim": 64,
                                       "num_heads": 2}, 56),  # patch 14, 4 registers
    "eva02_tiny_patch14_224": ({"img_size": 56, "depth": 4}, 56),  # rotary embedding
    "swin_tiny_patch4_window7_224": (SWIN, 64),
    "resnet18": ({}, 64),  # no final norm
}


def make_teacher(name: str, dtype: torch.dtype = torch.float32, **options) -> FrozenTeacher:
    """A frozen teacher of family `name` with fixed random weights; `options` are
    FrozenTeacher's (attention, channels_last, compile)."""
    kwargs, size = TEACHERS[name]
    torch.manual_seed(1)
    model = timm.create_model(name, num_classes=10, **kwargs)
    cfg = model.pretrained_cfg
    return FrozenTeacher(model, cfg["mean"], cfg["std"], cfg["mean"], cfg["std"], size, dtype,
                         **options)
