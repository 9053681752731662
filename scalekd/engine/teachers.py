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
  and were mixed with it; no teacher model is built;
- several (recipe.teachers, for a method that reads them all: `Distiller.reads_teachers`): each
  an online or sharded teacher of its own, the call returning their outputs by name.
"""

from __future__ import annotations

from typing import Iterable, Optional, Union

import torch

from scalekd.data.loader import Batch
from scalekd.distill import DISTILLERS
from scalekd.engine.distributed import shard_teacher
from scalekd.engine.evaluate import evaluate
from scalekd.models import FrozenTeacher
from scalekd.models.teacher import (TeacherNeeds, TeacherOutput, combined_needs, recipe_teacher,
                                    soft_label_output)
from scalekd.recipe import Recipe, TeacherCfg, teacher_cfgs

# what a provider's call returns: one teacher's output, or several teachers' by name
TeacherOutputs = Union[TeacherOutput, dict[str, TeacherOutput]]


class Teacher:
    """No teacher: the students learn from the labels alone. The base of the providers."""

    # (C, H, W) of the teacher's feature maps by name, which size the students' projectors;
    # None when no student reads features
    feature_shapes: Optional[dict[str, tuple]] = None

    def __call__(self, batch: Batch) -> Optional[TeacherOutputs]:
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


class MultiTeacher(Teacher):
    """Several frozen teachers, each run on the batch in turn; their outputs by name, in the
    recipe's order. feature_shapes: each teacher's pre-logits width by name, as (D,), when the
    students read the embeddings."""

    def __init__(self, members: dict[str, OnlineTeacher], widths: Optional[dict[str, int]]):
        self.members = members
        self.feature_shapes = ({name: (width,) for name, width in widths.items()}
                               if widths is not None else None)

    def __call__(self, batch: Batch) -> dict[str, TeacherOutput]:
        return {name: teacher(batch) for name, teacher in self.members.items()}

    def evaluate(self, loader: Iterable, accelerator) -> dict[str, float]:
        """Each teacher's metrics, keyed "<name>/<metric>"."""
        return {f"{name}/{k}": v for name, teacher in self.members.items()
                for k, v in teacher.evaluate(loader, accelerator).items()}

    def release(self) -> None:
        for teacher in self.members.values():
            teacher.release()


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
    if recipe.teachers:
        members, widths = {}, {}
        for name, cfg in teacher_cfgs(recipe).items():
            model = _model(recipe, num_classes, device, cfg)
            if needs.embedding:
                widths[name] = model.enable_embedding(device)
            members[name] = _online(model, None, recipe, cfg)
        return MultiTeacher(members, widths if needs.embedding else None)
    model = _model(recipe, num_classes, device, recipe.teacher)
    shapes = (model.enable_features(needs.proxy, device, needs.proxy_blocks, needs.summary)
              if needs.features else None)
    return _online(model, shapes, recipe, recipe.teacher)


def _model(recipe: Recipe, num_classes: int, device: torch.device,
           cfg: TeacherCfg) -> FrozenTeacher:
    with torch.random.fork_rng():  # the teacher's (discarded) init draws no student RNG
        return recipe_teacher(recipe, num_classes, cfg).to(device)


def _online(model: FrozenTeacher, shapes: Optional[dict[str, tuple]], recipe: Recipe,
            cfg: TeacherCfg) -> OnlineTeacher:
    if cfg.placement == "zero3":
        return ShardedTeacher(model, shapes, recipe)
    return OnlineTeacher(model, shapes)
