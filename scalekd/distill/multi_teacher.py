"""Several frozen teachers into one student (recipe.teachers), as AM-RADIO / UNIC distil
several foundation models: each teacher feeds its own terms through a head of its own on the
student's pre-logits features (the input of the student's classifier).

- kd.<teacher>: Hinton KD at distill.temperature. The main teacher (the first of
  recipe.teachers) is matched by the student's own classifier, so that the exported student
  (a plain timm model) carries it, and with one teacher this is `kd`; every other teacher by a
  linear head of its own, so that teachers whose class distributions disagree do not pull one
  classifier two ways: they reach the student through its shared features.
- feature.<teacher>: the teacher's pre-logits embedding, standardised per channel with a mean
  and std fitted on the teacher's outputs over the first `fit_batches` training micro-batches
  (so that no teacher dominates by the scale of its features), regressed by a linear head from
  the student's pre-logits: 1 - cosine, or smooth L1.
- hard: the label loss on the student's classifier.

distill.weights.kd / .feature weigh a term kind, distill.options.teacher_weights.<teacher> a
teacher (its every term); distill.options.feeds.<teacher> = "kd", "feature" or "kd,feature"
(default) chooses what a teacher feeds. distill.options.drop_teacher=p drops one teacher, drawn
at random, from a batch's total with probability p (its terms are still computed and logged, at
weight 0: every process keeps the same graph, as DDP needs); the draws come from the global
torch stream the run seeds and a resume restores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from scalekd.distill.base import Distiller, FeatureShapes, register_distiller
from scalekd.kernels.kd_loss import kd_loss
from scalekd.models.teacher import TeacherNeeds
from scalekd.recipe import Recipe

TERMS = ("kd", "feature")
FEATURE_LOSSES = ("cosine", "smooth_l1")
EPS = 1e-5  # added to each channel's variance, as BatchNorm does


@dataclass
class MultiTeacherOptions:
    feeds: dict = field(default_factory=dict)  # teacher -> "kd" | "feature" | "kd,feature"
    teacher_weights: dict = field(default_factory=dict)  # teacher -> factor (default 1)
    feature_loss: str = "cosine"  # cosine | smooth_l1
    fit_batches: int = 8  # micro-batches the standardisation is fitted on (0: none, identity)
    drop_teacher: float = 0.0  # probability that one random teacher leaves a batch's total

    def __post_init__(self):
        if self.feature_loss not in FEATURE_LOSSES:
            raise ValueError(f"feature_loss={self.feature_loss!r} must be "
                             f"{' or '.join(FEATURE_LOSSES)}")
        if self.fit_batches < 0:
            raise ValueError(f"fit_batches={self.fit_batches} must be >= 0")
        if not 0 <= self.drop_teacher < 1:
            raise ValueError(f"drop_teacher={self.drop_teacher} must lie in [0, 1)")


def fed_terms(feeds: dict, teacher: str) -> tuple[str, ...]:
    """The terms `teacher` feeds ("kd,feature" unless distill.options.feeds says otherwise)."""
    return tuple(t.strip() for t in str(feeds.get(teacher, "kd,feature")).split(","))


class Standardiser(nn.Module):
    """Per-channel (x - mean) / std of one teacher's embedding; fitted once, then a buffer of
    the student's checkpoint like any other (a resumed run loads it, never refits)."""

    def __init__(self, width: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.float()) / self.std.float()

    @torch.no_grad()
    def fit(self, samples: torch.Tensor) -> None:
        """Mean and std over `samples` (N, D) of every process together."""
        stats = torch.cat([samples.sum(0), samples.square().sum(0),
                           samples.new_tensor([len(samples)])]).double()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        width = samples.shape[1]
        count = stats[-1]
        mean = stats[:width] / count
        var = (stats[width:2 * width] / count - mean.square()).clamp_min(0)
        self.mean.copy_(mean)
        self.std.copy_((var + EPS).sqrt())  # a dead channel (ReLU) stays at 0, not inf
        self.fitted.fill_(True)


@register_distiller("multi_teacher")
class MultiTeacher(Distiller):
    needs_embedding = True
    reads_teachers = True
    loss_terms = {"hard": 0.5, "kd": 0.5, "feature": 1.0}
    Options = MultiTeacherOptions

    def __init__(self, recipe: Recipe, num_classes: int, shapes: FeatureShapes):
        super().__init__(recipe, num_classes)
        (width,), = shapes.student
        names = list(recipe.teachers)
        self.main = names[0]
        self.feeds = {name: fed_terms(self.options.feeds, name) for name in names}
        self.teacher_weights = {name: float(self.options.teacher_weights.get(name, 1.0))
                                for name in names}
        self.logit_heads = nn.ModuleDict({
            name: nn.Linear(width, num_classes) for name in names
            if name != self.main and "kd" in self.feeds[name]})
        fed = [name for name in names if "feature" in self.feeds[name]]
        self.feature_heads = nn.ModuleDict({
            name: nn.Linear(width, shapes.teacher[name][0]) for name in fed})
        self.standardisers = nn.ModuleDict({
            name: Standardiser(shapes.teacher[name][0]) for name in fed})
        self.dropped = ""  # this batch's dropped teacher ("": none)

    @classmethod
    def teacher_needs(cls, recipe: Recipe) -> TeacherNeeds:
        return TeacherNeeds(embedding=True)

    @classmethod
    def recipe_problems(cls, recipe: Recipe) -> list[str]:
        names, problems = list(recipe.teachers), []
        try:
            options = cls.Options(**cls.given_options(recipe))
        except (TypeError, ValueError):
            return []  # options_problems names it
        for option in ("feeds", "teacher_weights"):
            unknown = sorted(set(getattr(options, option)) - set(names))
            if unknown:
                problems.append(f"distill.options.{option} names {unknown}, not teachers of "
                                f"recipe.teachers ({names})")
        for name in names:
            terms = fed_terms(options.feeds, name)
            if not terms or not set(terms) <= set(TERMS):
                problems.append(f"distill.options.feeds.{name}={options.feeds.get(name)!r} "
                                "must be kd, feature or kd,feature")
            weight = options.teacher_weights.get(name, 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                problems.append(f"distill.options.teacher_weights.{name}={weight!r} must be a "
                                "number >= 0")
        if options.drop_teacher and len(names) < 2:
            problems.append(f"distill.options.drop_teacher={options.drop_teacher} drops one of "
                            "several teachers; with one teacher set it to 0")
        return problems

    def fit_batches(self) -> int:
        unfitted = any(not bool(s.fitted) for s in self.standardisers.values())
        return self.options.fit_batches if unfitted else 0

    def fit(self, outputs: list) -> None:
        for name, standardiser in self.standardisers.items():
            standardiser.fit(torch.cat([out[name].embedding for out in outputs]).float())

    def forward(self, student_logits, teacher, targets, student_embedding):
        terms = self.hard_term(student_logits, targets)
        for name, out in teacher.items():
            if "kd" in self.feeds[name]:
                logits = student_logits if name == self.main else self.logit_heads[name](
                    student_embedding).float()
                terms[f"kd.{name}"] = kd_loss(logits, out.logits, self.temperature)
            if "feature" in self.feeds[name]:
                target = self.standardisers[name](out.embedding)
                pred = self.feature_heads[name](student_embedding).float()
                terms[f"feature.{name}"] = self._feature_loss(pred, target)
        self.dropped = self._draw_dropped(list(teacher))
        return terms

    def _feature_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.options.feature_loss == "cosine":
            return (1 - F.cosine_similarity(pred, target, dim=-1)).mean()
        return F.smooth_l1_loss(pred, target)

    def _draw_dropped(self, names: list[str]) -> str:
        """One teacher to leave out of this batch's total, or "" (CPU draws: no device sync)."""
        if not (self.training and self.options.drop_teacher):
            return ""
        if torch.rand(()).item() >= self.options.drop_teacher:
            return ""
        return names[int(torch.randint(len(names), ()).item())]

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        total = 0
        for name, value in terms.items():
            kind, _, teacher = name.partition(".")
            weight = self.weights[kind]
            if teacher:
                weight *= self.teacher_weights[teacher] * (teacher != self.dropped)
            total = total + weight * value
        return total
