"""Label-free feature distillation of a foundation model (issue 21): the student regresses the
frozen teacher's summary (its final class token after the norm: DINOv2's and DINOv3's image
embedding; a CNN teacher's pooled final map) and its final patch tokens (register and class
tokens left out), through small trainable heads, as Proteus (Zhang et al. 2024) and AM-RADIO
(Ranzinger et al. 2024) distil DINOv2 without labels.

Heads on the student's final map (its stage-4 tap; a ViT student's last-block patch tokens):
- summary: Linear(student width -> teacher width) on the map's mean over its grid;
- patches, `distill.options.head`: `linear` (a 1x1 conv, student width -> teacher width, then
  resized to the teacher's patch grid) or `cap` (ScaleKD's cross-attention projector,
  distill/cap.py: learned queries on the teacher's grid attend over the student map, so no
  resizing; its norm and softmax scale are distill.cap_norm and distill.cap_softmax_scale).
Terms (AM-RADIO's mix as defaults): `cls_cos` (1 - cosine, 1), `patch_cos` (1 - cosine per
patch, 0.9) and `patch_smooth_l1` (smooth L1 per value, 0.1). Labels and class logits are never
read (distill.hard_loss does not apply): the method trains on images without labels
(data.labels=false). Proteus's masked-patch term is not built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from scalekd.distill.base import Distiller, FeatureShapes, register_distiller
from scalekd.distill.cap import CAP_NORMS, CrossAttentionProjector, cap_norm, fitted_heads
from scalekd.models.taps import tokens_to_map
from scalekd.models.teacher import TeacherNeeds
from scalekd.recipe import Recipe

HEADS = ("linear", "cap")


@dataclass
class FeaturesOptions:
    head: str = "linear"  # the patch head: linear | cap
    cap_heads: int = 8  # head=cap: attention heads (the largest count <= this dividing the width)

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"head={self.head!r} must be one of {', '.join(HEADS)}")
        if self.cap_heads < 1:
            raise ValueError(f"cap_heads={self.cap_heads} must be >= 1")


class LinearPatchHead(nn.Module):
    """A 1x1 conv, then the map resized to the teacher's grid. The student's map is resized,
    not the teacher's: the targets keep every teacher patch at full resolution, and a student
    coarser than the teacher (a ResNet's 1/32 map against DINOv2's 1/14 grid) predicts each
    patch from its neighbourhood. Resizing (bilinear, weights summing to 1) commutes with a 1x1
    conv, so the conv runs first, at the smaller resolution when the student's grid is coarser;
    antialiasing averages over the covered area when the student's grid is finer."""

    def __init__(self, in_chs: int, out_chs: int, grid: tuple[int, int]):
        super().__init__()
        self.proj, self.grid = nn.Conv2d(in_chs, out_chs, 1), grid

    def forward(self, student_map: torch.Tensor) -> torch.Tensor:
        x = self.proj(student_map)
        if tuple(x.shape[-2:]) == self.grid:
            return x
        return F.interpolate(x, size=self.grid, mode="bilinear", align_corners=False,
                             antialias=True)


class CapPatchHead(nn.Module):
    def __init__(self, cap: CrossAttentionProjector, grid: tuple[int, int]):
        super().__init__()
        self.cap, self.grid = cap, grid

    def forward(self, student_map: torch.Tensor) -> torch.Tensor:
        return tokens_to_map(self.cap(student_map), self.grid)


@register_distiller("features")
class FeatureDistillation(Distiller):
    needs_features = True
    loss_terms = {"cls_cos": 1.0, "patch_cos": 0.9, "patch_smooth_l1": 0.1}
    Options = FeaturesOptions

    def __init__(self, recipe: Recipe, num_classes: int, shapes: FeatureShapes):
        super().__init__(recipe, num_classes)
        d, (s_c, *s_grid) = recipe.distill, shapes.student[-1]
        t_c, *t_grid = shapes.teacher["final"]
        t_grid = tuple(t_grid)
        self.summary_head = nn.Linear(s_c, shapes.teacher["summary"][0])
        if self.options.head == "cap":
            norm = cap_norm(shapes.student_class) if d.cap_norm == "auto" else d.cap_norm
            cap = CrossAttentionProjector(s_c, tuple(s_grid), t_c, t_grid,
                                          fitted_heads(t_c, self.options.cap_heads),
                                          d.cap_softmax_scale, norm,
                                          attention=recipe.teacher.attention)
            self.patch_head = CapPatchHead(cap, t_grid)
        else:
            self.patch_head = LinearPatchHead(s_c, t_c, t_grid)

    @classmethod
    def teacher_needs(cls, recipe: Recipe) -> TeacherNeeds:
        return TeacherNeeds(features=True, summary=True)

    @classmethod
    def needs_classes(cls, recipe: Recipe) -> bool:
        return False

    @classmethod
    def recipe_problems(cls, recipe: Recipe) -> list[str]:
        d = recipe.distill
        if d.options.get("head") != "cap":
            return []
        checks = [(d.cap_norm in ("auto", *CAP_NORMS),
                   f"distill.cap_norm={d.cap_norm!r} must be auto, {' or '.join(CAP_NORMS)}"),
                  (d.cap_softmax_scale > 0,
                   f"distill.cap_softmax_scale={d.cap_softmax_scale} must be > 0")]
        return [msg for ok, msg in checks if not ok]

    def forward(self, student_logits, teacher, targets, student_features):
        final = student_features[-1]
        patches = self.patch_head(final).float()
        summary = self.summary_head(final.mean(dim=(2, 3))).float()
        t_patches, t_summary = teacher.features["final"], teacher.features["summary"]
        return {
            "cls_cos": (1 - F.cosine_similarity(summary, t_summary, dim=-1)).mean(),
            "patch_cos": (1 - F.cosine_similarity(patches, t_patches, dim=1)).mean(),
            "patch_smooth_l1": F.smooth_l1_loss(patches, t_patches),
        }
