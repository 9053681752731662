"""The teacher as the training loop sees it: one call per batch, whatever the teacher is.

`build_teacher` picks the provider from the recipe and what the students' distillers declare
they read (`Distiller.teacher_needs`: logits, feature maps, the TPP proxy path):
- none: no student reads a teacher (distill.method=supervised); the call returns None;
- online: the frozen timm teacher replicated on every process, run on the batch's augmented
  pixels (its own normalisation and resolution); with teacher.probe the same, its model being
  the encoder with the head `scalekd probe` trained (models/probed_teacher.py);
- sharded: the online teacher whose weights its own ZeRO-3 inference engine splits over the
  processes (teacher.placement=zero3), apart from the students' engine;
- cached: the stored top-k of these very crops (teacher.mode=cached), which came with the batch
  and were mixed with it; no teacher model is built.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch

from scalekd.data.loader import Batch
from scalekd.distill import DISTILLERS
from scalekd.engine.distributed import shard_teacher
from scalekd.engine.evaluate import evaluate
from scalekd.models import FrozenTeacher
from scalekd.models.teacher import (TeacherNeeds, TeacherOutput, combined_needs, recipe_teacher,
                                    soft_label_output)
from scalekd.recipe import Recipe


class Teacher:
    """No teacher: the students learn from the labels alone. The base of the providers."""

    # (C, H, W) of the teacher's feature maps by name, which size the students' projectors;
    # None when no student reads features
    feature_shapes: Optional[dict[str, tuple]] = None

    def __call__(self, batch: Batch) -> Optional[TeacherOutput]:
        return None

    def evaluate(self, loader: Iterable, accelerator) -> Optional[dict[str, float]]:
        """The teacher's own metrics on `loader`; None for a teacher without a model."""
        return None

    def release(self) -> None:
        """Drop what outlives the run otherwise (a DeepSpeed engine)."""


class CachedTeacher(Teacher):
    def __call__(self, batch: Batch) -> TeacherOutput:
        return soft_label_output(batch.soft)


class OnlineTeacher(Teacher):
    def __init__(self, model: FrozenTeacher, feature_shapes: Optional[dict[str, tuple]]):
        self.model, self.feature_shapes = model, feature_shapes

    def __call__(self, batch: Batch) -> TeacherOutput:
        return self.model(batch.images)

    def evaluate(self, loader: Iterable, accelerator) -> dict[str, float]:
        return evaluate(lambda x: self.model(x).logits, loader, accelerator)


class ShardedTeacher(OnlineTeacher):
    def __init__(self, model: FrozenTeacher, feature_shapes: Optional[dict[str, tuple]],
                 recipe: Recipe):
        super().__init__(model, feature_shapes)
        shard_teacher(model, recipe)  # FrozenTeacher.runner runs the engine from now on

    def release(self) -> None:
        self.model.engine = None


def teacher_needs(specs: Iterable[Recipe]) -> Optional[TeacherNeeds]:
    """What the students of `specs` read from the teacher, together (None: nothing)."""
    return combined_needs(DISTILLERS[r.distill.method].teacher_needs(r) for r in specs)


def build_teacher(recipe: Recipe, specs: Iterable[Recipe], num_classes: int,
                  device: torch.device) -> Teacher:
    """The teacher the students of `specs` (each student's recipe) need, on `device`."""
    needs = teacher_needs(specs)
    if needs is None:
        return Teacher()
    if recipe.teacher.mode == "cached":
        return CachedTeacher()
    with torch.random.fork_rng():  # the teacher's (discarded) init draws no student RNG
        model = recipe_teacher(recipe, num_classes).to(device)
    shapes = (model.enable_features(needs.proxy, device, needs.proxy_blocks, needs.summary)
              if needs.features else None)
    if recipe.teacher.placement == "zero3":
        return ShardedTeacher(model, shapes, recipe)
    return OnlineTeacher(model, shapes)
