"""A finished or interrupted run read back from its folder: its recipe, its student (from the
export or from a checkpoint), its teacher and its evaluation data. What `scalekd eval` and the
diagnostics commands build on."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from scalekd.data import build_eval_loader
from scalekd.data.classes import load_split
from scalekd.data.source import LabelledImages
from scalekd.engine.checkpoint import Checkpoints, ema_file
from scalekd.engine.export import student_state
from scalekd.models import FrozenTeacher, create_student, data_config
from scalekd.models.teacher import recipe_teacher
from scalekd.recipe import apply_overrides, recipe_from_dict, student_recipes, teacher_cfgs


class SavedRun:
    """`folder` is a run folder (holding recipe.json); `overrides` change its recipe, e.g.
    `data.path=...` where the data now lives elsewhere, `data.val_split=val_v2`."""

    def __init__(self, folder: Path, overrides: Optional[list[str]] = None,
                 student: str = ""):
        self.folder = Path(folder)
        recipe_file = self.folder / "recipe.json"
        if not recipe_file.is_file():
            raise FileNotFoundError(
                f"{self.folder} is not a run folder: it has no recipe.json (give the run.dir "
                "of a scalekd run)")
        recipe = apply_overrides(recipe_from_dict(json.loads(recipe_file.read_text())),
                                 overrides or [])
        students = student_recipes(recipe)
        if student not in students:
            raise ValueError(f"the run has no student {student!r}; its students are "
                             f"{list(students)} ('' is the recipe's own)")
        self.recipe, self.student_name = students[student], student
        self._index = list(students).index(student)  # its place among the prepared models
        self._images: Optional[LabelledImages] = None

    @property
    def images(self) -> LabelledImages:
        """The evaluation split."""
        if not self.recipe.data.labels:
            raise ValueError(
                f"{self.folder} trained without labels (data.labels=false): it has no labelled "
                "evaluation split; linear-probe its export with `scalekd probe` "
                "(docs/label-free.md), or pass data.labels=true and a labelled data.path")
        if self._images is None:
            self._images = load_split(self.recipe.data, self.recipe.data.val_split)
        return self._images

    @property
    def num_classes(self) -> int:
        return len(self.images.classes) if self.recipe.data.labels else 0  # 0: headless

    def loader(self) -> DataLoader:
        """The evaluation split in order (image i of the split is item i), one process."""
        norm = data_config(self.recipe.student.name, self.recipe.student.kwargs)
        return build_eval_loader(self.recipe, self.images, norm["mean"], norm["std"], 0, 1)

    def student(self, weights: Optional[Path] = None, ema: bool = False) -> nn.Module:
        """The student in eval mode: from `weights` (an exported .safetensors), else the run's
        export, else its latest complete checkpoint."""
        stem = "student_ema" if ema else "student"
        export = self.folder / "export" / self.student_name / f"{stem}.safetensors"
        path = Path(weights) if weights else export if export.is_file() else None
        if path is not None:
            cfg = dataclasses.replace(self.recipe.student, checkpoint=str(path))
            return create_student(cfg, self.num_classes).eval()
        model = create_student(dataclasses.replace(self.recipe.student, pretrained=False),
                               self.num_classes)
        model.load_state_dict(self._checkpoint_weights(ema))
        return model.eval()

    def teacher(self) -> FrozenTeacher:
        """The run's teacher; of several (recipe.teachers), the main one (the first)."""
        main = next(iter(teacher_cfgs(self.recipe).values()), None)
        return recipe_teacher(self.recipe, self.num_classes, main)

    def _checkpoint_weights(self, ema: bool) -> dict[str, torch.Tensor]:
        latest = Checkpoints(self.folder / "checkpoints", 1).latest()
        if latest is None:
            raise FileNotFoundError(
                f"{self.folder} has neither an export/ nor a complete checkpoint: train it "
                "first, or pass the weights file of an exported student")
        if ema:  # timm's ModelEmaV3 keeps the averaged copy as `module`
            prefix = "module."
            return {k[len(prefix):]: v for k, v in
                    load_file(latest / ema_file(self.student_name)).items()}
        state = json.loads((latest / "trainer_state.json").read_text())
        if state.get("deepspeed"):
            raise ValueError(
                f"{latest} is a DeepSpeed checkpoint (sharded by ZeRO): resume the run with "
                f"run.max_steps={state['step']} on the same launcher, which exports the whole "
                "student to export/, then evaluate that")
        # accelerate saves the prepared models in order: model.safetensors, model_1, ...
        file = latest / (f"model_{self._index}.safetensors" if self._index
                         else "model.safetensors")
        return student_state(load_file(file))
