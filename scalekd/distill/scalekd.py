"""ScaleKD (Fan et al. 2024): cross-attention projectors, dual-view feature mimicking and teacher
parameter perception, beside logit KD and the label loss.

For each view (spatial, frequency) the student's stage-3 and stage-4 maps each get a CAP:
- without TPP both project onto the teacher's final grid and width, from learned queries, and
  are compared with the teacher's final features;
- with TPP the stage-3 CAP projects into the teacher's split-point space, the teacher's own
  remaining stages (frozen weights, gradients through the activations) carry it to the final
  space where it is compared, and the stage-4 CAP takes that proxy output as its queries.
Total (the authors' configs): 0.5 label + 0.5 KD(T=1) + beta*w*spatial + (1-beta)*w*frequency,
w=0.14, beta=4/7 (0.08 / 0.06). Ablations: distill.dfm_beta=1 (CAP with plain mimicking),
distill.tpp=false (CAP + DFM).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from scalekd.distill.base import Distiller, FeatureShapes, register_distiller
from scalekd.distill.cap import CAP_NORMS, CrossAttentionProjector, cap_norm, fitted_heads
from scalekd.distill.dfm import FrequencyMimicLoss, spatial_mimic_loss
from scalekd.distill.kd import kd_loss
from scalekd.models.taps import map_to_tokens, tokens_to_map
from scalekd.models.teacher import TeacherNeeds
from scalekd.recipe import Recipe

# the authors' CAP heads at (stage 3, stage 4) by student family with the Swin-L teacher (their
# configs; MobileNetV1, a timm EfficientNet, takes its 16 / 24 from distill.cap_heads); others
# and every student of their EVA-L teacher get 8
AUTHORS_HEADS = {"ResNet": (16, 24), "ConvNeXt": (8, 16), "SwinTransformer": (24, 48),
                 "VisionTransformer": (8, 8), "MlpMixer": (8, 8)}


class SpatialMimicLoss(nn.Module):
    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return spatial_mimic_loss(student, teacher)


@register_distiller("scalekd")
class ScaleKD(Distiller):
    needs_features = True
    loss_terms = {"hard": 0.5, "kd": 0.5, "spatial": 0.08, "frequency": 0.06}

    def __init__(self, recipe: Recipe, num_classes: int, shapes: FeatureShapes):
        super().__init__(recipe, num_classes)
        d = recipe.distill
        self.weights.update(spatial=d.dfm_beta * d.dfm_weight,
                            frequency=(1 - d.dfm_beta) * d.dfm_weight)
        self.tpp = d.tpp
        final_c, *self.final_grid = shapes.teacher["final"]
        split_c, *self.split_grid = shapes.teacher["split"]
        (s3_c, *s3_grid), (s4_c, *s4_grid) = shapes.student
        heads = [h or a for h, a in zip(d.cap_heads,
                                        AUTHORS_HEADS.get(shapes.student_class, (8, 8)))]
        norm = cap_norm(shapes.student_class) if d.cap_norm == "auto" else d.cap_norm
        s3_c_out, s3_q_grid = (split_c, self.split_grid) if self.tpp else (final_c,
                                                                          self.final_grid)

        def cap(in_c, grid, out_c, q_grid, wanted_heads, learned):
            return CrossAttentionProjector(in_c, tuple(grid), out_c, tuple(q_grid),
                                           fitted_heads(out_c, wanted_heads),
                                           d.cap_softmax_scale, norm, learned,
                                           recipe.teacher.attention)

        self.mimics = nn.ModuleDict()
        if d.dfm_beta > 0:
            self.mimics["spatial"] = SpatialMimicLoss()
        if d.dfm_beta < 1:
            self.mimics["frequency"] = FrequencyMimicLoss(*self.final_grid)
        self.caps = nn.ModuleDict()
        for view in self.mimics:
            self.caps[f"{view}_s3"] = cap(s3_c, s3_grid, s3_c_out, s3_q_grid, heads[0], True)
            # under TPP the stage-4 queries come from the proxy path: no learned table
            self.caps[f"{view}_s4"] = cap(s4_c, s4_grid, final_c, self.final_grid, heads[1],
                                          not self.tpp)

    @classmethod
    def teacher_needs(cls, recipe: Recipe) -> TeacherNeeds:
        """The final and split maps, and with distill.tpp the proxy path between them."""
        return TeacherNeeds(features=True, proxy=recipe.distill.tpp,
                            proxy_blocks=recipe.distill.tpp_blocks)

    @classmethod
    def recipe_problems(cls, recipe: Recipe) -> list[str]:
        d, problems = recipe.distill, []
        if not 0 <= d.dfm_beta <= 1:
            problems.append(f"distill.dfm_beta={d.dfm_beta} must lie in [0, 1] (the spatial "
                            "view's share of distill.dfm_weight)")
        if d.cap_norm not in ("auto", *CAP_NORMS):
            problems.append(f"distill.cap_norm={d.cap_norm!r} must be auto (the authors' choice "
                            f"per student), {' or '.join(CAP_NORMS)}")
        if d.dfm_weight < 0:
            problems.append(f"distill.dfm_weight={d.dfm_weight} must be >= 0")
        heads = d.cap_heads
        if not (isinstance(heads, tuple) and len(heads) == 2
                and all(isinstance(h, int) and h >= 0 for h in heads)):
            problems.append(f"distill.cap_heads={heads} must be two head counts >= 0 (stage 3, "
                            "stage 4; 0: the authors' value)")
        if d.cap_softmax_scale <= 0:
            problems.append(f"distill.cap_softmax_scale={d.cap_softmax_scale} must be > 0")
        if {"spatial", "frequency"} & set(d.weights):
            problems.append("scalekd's spatial/frequency weights come from distill.dfm_weight "
                            "and distill.dfm_beta; remove them from distill.weights")
        return problems

    @classmethod
    def needs_classes(cls, recipe: Recipe) -> bool:
        """Without KD and label terms (distill.weights.kd=0, distill.hard_loss=none) ScaleKD
        is feature mimicking alone: it trains on images without labels (data.labels=false)."""
        weights = {**cls.loss_terms, **recipe.distill.weights}
        return weights["kd"] > 0 or (recipe.distill.hard_loss != "none" and weights["hard"] > 0)

    def forward(self, student_logits, teacher, targets, student_features):
        terms = self.hard_term(student_logits, targets)
        if self.weights["kd"]:  # at 0 not computed: a headless run has no class logits
            terms["kd"] = kd_loss(student_logits, teacher.logits, self.temperature)
        target = teacher.features["final"]
        s3_map, s4_map = student_features
        for view, mimic in self.mimics.items():
            s3 = self.caps[f"{view}_s3"](s3_map)
            if self.tpp:
                s3_final = teacher.proxy(tokens_to_map(s3, self.split_grid))
                queries = map_to_tokens(s3_final)
            else:
                s3_final, queries = tokens_to_map(s3, self.final_grid), None
            s4_final = tokens_to_map(self.caps[f"{view}_s4"](s4_map, queries), self.final_grid)
            terms[f"{view}.s3"] = mimic(s3_final, target)
            terms[f"{view}.s4"] = mimic(s4_final, target)
        return terms
