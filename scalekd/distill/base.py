"""The distiller interface, the registry (filled by the method files themselves, which the
package imports: `discover_methods`), the checks of distill.* every method shares, and the
hard-label loss."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Callable, ClassVar, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.loss import BinaryCrossEntropy, SoftTargetCrossEntropy

from scalekd.models.teacher import TeacherNeeds, TeacherOutput
from scalekd.recipe import Recipe, coerce

DISTILLERS: dict[str, type["Distiller"]] = {}


def register_distiller(name: str) -> Callable[[type["Distiller"]], type["Distiller"]]:
    def add(cls: type["Distiller"]) -> type["Distiller"]:
        DISTILLERS[name] = cls
        return cls

    return add


def discover_methods(path: Iterable[str], package: str) -> None:
    """Import every module of `package` (found on `path`), so that each method file registers
    itself: adding a method edits no list."""
    for module in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{module.name}")


@dataclass
class FeatureShapes:
    """(C, H, W) of the maps a feature method works on, measured on the real models."""

    # the student's stage-3 and stage-4 taps; needs_embedding: [(D,)] of its pre-logits
    student: list[tuple[int, ...]]
    # "final", "split" (TeacherOutput.features); needs_embedding: (D,) of each teacher by name
    teacher: dict[str, tuple[int, ...]]
    student_class: str = ""  # the timm class (ResNet, ConvNeXt, ...): per-family defaults


class Distiller(nn.Module):
    """Holds a method's trainable parts (projectors, if any) and computes its loss terms.

    Terms are named; a term "view.detail" (e.g. "spatial.s3") is logged on its own and weighed
    by the weight of "view"."""

    needs_teacher: ClassVar[bool] = True
    # methods on features get the student's stage-3/4 maps as `student_features` and the
    # teacher's feature maps in TeacherOutput.features; their __init__ takes FeatureShapes
    needs_features: ClassVar[bool] = False
    # methods on the student's pre-logits features get them as `student_embedding` (B, D) and
    # their __init__ takes FeatureShapes (student: [(D,)], teacher: each teacher's (D,) by name)
    needs_embedding: ClassVar[bool] = False
    # methods that read several teachers (recipe.teachers): the teacher argument is then a
    # dict of TeacherOutput by teacher name, in the recipe's order
    reads_teachers: ClassVar[bool] = False
    loss_terms: ClassVar[dict[str, float]] = {}  # term name -> default weight
    # where the method comes in lists of methods shown to users (messages): docs/methods.md's order;
    # methods without one follow, in the order they register
    listed_at: ClassVar[float] = float("inf")
    # the method's own settings: a dataclass whose fields `distill.options.<field>=value` set,
    # checked by `validate` (its __post_init__ may raise ValueError naming a bad value) and built
    # as `self.options`; None: the method has none beyond the shared distill.* fields
    Options: ClassVar[Optional[type]] = None

    def __init__(self, recipe: Recipe, num_classes: int):
        super().__init__()
        self.hard_label = HardLabelLoss(recipe.distill.hard_loss, recipe.aug.smoothing,
                                        recipe.distill.bce_target_thresh,
                                        recipe.distill.bce_reduction == "sum_classes")
        self.weights = {**self.loss_terms, **recipe.distill.weights}
        self.temperature = recipe.distill.temperature  # of the softened terms (DIST's tau)
        self.options = self.Options(**self.given_options(recipe)) if self.Options else None

    @classmethod
    def teacher_needs(cls, recipe: Recipe) -> Optional[TeacherNeeds]:
        """What the method reads from the teacher, which the engine's teacher provides (None:
        no teacher). Default: the logits, and the feature maps for methods on features."""
        return TeacherNeeds(features=cls.needs_features) if cls.needs_teacher else None

    @classmethod
    def needs_classes(cls, recipe: Recipe) -> bool:
        """Whether the method reads labels or class logits (the student's, the teacher's):
        methods that read neither train on images without labels (data.labels=false), whose
        student has no classifier. Default: yes."""
        return True

    def forward(self, student_logits: torch.Tensor, teacher: Optional[TeacherOutput],
                targets: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[name.split(".")[0]] * value for name, value in terms.items())

    @classmethod
    def recipe_problems(cls, recipe: Recipe) -> list[str]:
        """The method's own checks of a recipe, run by `validate` before anything is built."""
        return []

    @classmethod
    def settings_problems(cls, recipe: Recipe) -> list[str]:
        """distill.weights against the method's terms, then the method's own checks."""
        problems = []
        unknown = set(recipe.distill.weights) - set(cls.loss_terms)
        if unknown:
            problems.append(f"distill.weights has {sorted(unknown)}, not terms of "
                            f"{recipe.distill.method!r}; its terms are {list(cls.loss_terms)}")
        return problems + cls.recipe_problems(recipe)

    @classmethod
    def options_problems(cls, recipe: Recipe) -> list[str]:
        """distill.options against the method's Options: known names, values of their types."""
        given, method = recipe.distill.options, recipe.distill.method
        if not given:
            return []
        if cls.Options is None:
            return [f"distill.options={given}: distill.method={method!r} has no options"]
        names = [f.name for f in dataclasses.fields(cls.Options)]
        unknown = sorted(set(given) - set(names))
        if unknown:
            return [f"distill.options has {unknown}, not options of {method!r}; its options are "
                    f"{names}"]
        try:
            given = cls.given_options(recipe)
        except ValueError as err:
            return [f"distill.options: {err}"]
        hints = typing.get_type_hints(cls.Options)
        wrong = [f"{k}={v!r} (expected {getattr(hints[k], '__name__', hints[k])})"
                 for k, v in given.items() if not _of_type(v, hints[k])]
        if wrong:
            return [f"distill.options: {', '.join(wrong)}"]
        try:
            cls.Options(**given)
        except (TypeError, ValueError) as err:
            return [f"distill.options={given}: {err}"]
        return []

    @classmethod
    def given_options(cls, recipe: Recipe) -> dict:
        """distill.options with command-line text (center=false) read as the option's type."""
        hints = typing.get_type_hints(cls.Options)
        out = {}
        for key, value in recipe.distill.options.items():
            hint = hints.get(key)
            try:
                out[key] = (coerce(value, hint) if isinstance(value, str) and hint
                            not in (None, str) else value)
            except (ValueError, SyntaxError) as err:
                raise ValueError(f"{key}={value!r}: {err}") from None
        return out

    def hard_term(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"hard": the label loss}, or nothing with distill.hard_loss=none (VanillaKD Table 4's
        "-" rows: the student learns from the teacher alone)."""
        if self.hard_label.kind == "none":
            return {}
        return {"hard": self.hard_label(logits, targets)}

    def fit_batches(self) -> int:
        """How many training micro-batches of teacher outputs `fit` wants before the first step;
        0 (the default, and once fitted: a resumed run loads what was fitted) for none."""
        return 0

    def fit(self, outputs: list) -> None:
        """Fit what the method derives from the teacher's outputs on training batches (the
        teacher's output for each of `fit_batches()` micro-batches, on every process); the
        trainer calls it once, before the first step. Default: nothing to fit."""

    def set_epoch(self, epoch: float) -> None:
        """The trainer calls this before every step with the fractional epoch (optimiser steps
        done / steps per epoch), for methods whose loss follows a schedule (DKD's warm-up). The
        state is derived from the step, so resuming needs nothing saved. Default: no schedule."""


def _of_type(value, hint) -> bool:
    """Whether an option's value fits its annotation (an int where a float is asked is)."""
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    origin = typing.get_origin(hint) or hint
    return not isinstance(origin, type) or isinstance(value, origin)


def unknown_method(name: str) -> str:
    return (f"distill.method={name!r} is not a registered method; "
            f"choose one of {', '.join(sorted(DISTILLERS))}")


def logit_methods() -> list[str]:
    """The methods that need a teacher's logits only (a teacher cache holds nothing more)."""
    return sorted((name for name, cls in DISTILLERS.items()
                   if cls.needs_teacher and not (cls.needs_features or cls.needs_embedding)),
                  key=lambda name: DISTILLERS[name].listed_at)


def distill_setting_problems(recipe: Recipe) -> list[str]:
    d = recipe.distill
    checks = [
        (d.temperature > 0, f"distill.temperature={d.temperature} must be > 0"),
        (d.hard_loss in ("ce", "bce", "none"), "distill.hard_loss must be ce, bce or none"),
        (d.bce_reduction in ("mean", "sum_classes"),
         f"distill.bce_reduction={d.bce_reduction!r} must be mean or sum_classes"),
        (d.dkd_warmup_epochs >= 0, "distill.dkd_warmup_epochs must be >= 0"),
        (d.tpp_blocks >= 0, "distill.tpp_blocks must be >= 0 (0: the teacher's last "
         "stage, or quarter of its blocks)"),
    ]
    return [msg for ok, msg in checks if not ok]


def distill_value_problems(recipe: Recipe) -> list[str]:
    d = recipe.distill
    checks = [
        (all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0
             for w in d.weights.values()),
         f"distill.weights={d.weights}: each must be a number >= 0"),
        (d.bce_target_thresh is None or 0 <= d.bce_target_thresh <= 1,
         f"distill.bce_target_thresh={d.bce_target_thresh} must be None or in [0, 1]"),
    ]
    return [msg for ok, msg in checks if not ok]


def create_distiller(recipe: Recipe, num_classes: int,
                     shapes: Optional[FeatureShapes] = None) -> Distiller:
    cls = DISTILLERS[recipe.distill.method]
    if cls.needs_features or cls.needs_embedding:
        return cls(recipe, num_classes, shapes)
    return cls(recipe, num_classes)


class HardLabelLoss(nn.Module):
    """CE or BCE against the labels (torch's label-smoothed CE, timm's BCE), or the soft targets
    Mixup/CutMix make (timm's losses).

    CE is one value per image (summed over classes), averaged over the batch, with label
    smoothing eps as the target (1 - eps) one-hot + eps / C (timm's and mmcls's 'original'
    mode alike). BCE is one value per image and class: `sum_classes` sums them per image
    before the batch mean (mmcls's CrossEntropyLoss(use_sigmoid=True), ScaleKD's), else the
    mean over both (timm's default, VanillaKD's).

    Integer targets of -1 mark unlabelled images: they add nothing to this term, which stays a
    mean over the whole batch (each labelled image weighs the same whatever its batch holds,
    and per-process batches average to the global batch's value). They are masked, not
    dropped: dropping them would need the host to learn from the device how many there are,
    a synchronisation every step.
    """

    def __init__(self, kind: str, smoothing: float, bce_target_thresh: Optional[float],
                 sum_classes: bool = False):
        super().__init__()
        self.kind, self.smoothing, self.sum_classes = kind, smoothing, sum_classes
        if kind == "bce":
            self.hard = BinaryCrossEntropy(smoothing=smoothing, target_threshold=bce_target_thresh,
                                           reduction="none")
            self.soft = BinaryCrossEntropy(smoothing=0.0, target_threshold=bce_target_thresh,
                                           sum_classes=sum_classes)
        else:
            self.soft = SoftTargetCrossEntropy()

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.ndim == 2:  # soft targets from Mixup/CutMix, smoothing already applied
            return self.soft(logits, targets)
        labelled = targets >= 0
        targets = targets.clamp_min(0)
        if self.kind == "bce":
            per_class = self.hard(logits, targets)
            per_image = per_class.sum(-1) if self.sum_classes else per_class.mean(-1)
        else:
            per_image = F.cross_entropy(logits, targets, label_smoothing=self.smoothing,
                                        reduction="none")
        return (per_image * labelled).sum() / len(targets)
