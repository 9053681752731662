"""The students of a run as one object: built, prepared by accelerate together, stepped on each
batch, logged, evaluated, checkpointed (their EMAs) and exported.

A run has one student, or several (`recipe.students`) that share each batch and each teacher
forward; each keeps its own model, optimiser, schedule, distiller, EMA and loss window, and its
TensorBoard tags are prefixed by its name ("" for the recipe's own student: no prefix).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import torch
import torch.nn as nn
from accelerate.utils import extract_model_from_parallel
from timm.scheduler.scheduler import Scheduler
from timm.utils import ModelEmaV3

from scalekd.data.loader import Batch, TrainData
from scalekd.data.on_batch import rng_restored
from scalekd.distill import DISTILLERS, Distiller, FeatureShapes, create_distiller
from scalekd.engine.divergence import NonFiniteGuard
from scalekd.engine.evaluate import evaluate
from scalekd.engine.export import consolidated_state, export_student
from scalekd.engine.logging import RunLog
from scalekd.engine.optimisation import build_optimiser
from scalekd.engine.teachers import Teacher, TeacherOutputs
from scalekd.models import create_student
from scalekd.models.taps import EmbeddingTap, StudentTaps
from scalekd.recipe import Recipe


class DistillationModel(nn.Module):
    """What the optimiser trains and the engine wraps: the student and the distiller's own
    trainable parts (projectors). The teacher is deliberately not in here."""

    def __init__(self, student: nn.Module, distiller: Distiller, channels_last: bool = False):
        super().__init__()
        self.student, self.distiller = student, distiller
        self.taps = StudentTaps(student) if distiller.needs_features else None
        self.embedding = EmbeddingTap(student) if distiller.needs_embedding else None
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        student.to(memory_format=self.memory_format)

    def forward(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None,
                teacher: Optional[TeacherOutputs] = None):
        # a DeepSpeed bf16/fp16 engine holds the student in that dtype and does not autocast
        images = images.to(next(self.student.parameters()).dtype,
                           memory_format=self.memory_format)
        if targets is None:
            return self.student(images).float()
        if self.embedding is not None:
            # the embedding in the student's dtype: the distiller's heads are in it too
            logits, embedding = self.embedding.forward(self.student, images)
            logits, features = logits.float(), {"student_embedding": embedding}
        elif self.taps is None:
            logits, features = self.student(images).float(), {}
        else:
            logits, maps = self.taps.forward(self.student, images)
            logits, features = logits.float(), {"student_features": maps}
        return logits, self.distiller(logits, teacher, targets, **features)


def build_student(recipe: Recipe, num_classes: int, steps_per_epoch: int,
                  teacher_shapes: Optional[dict] = None) -> tuple[DistillationModel,
                                                                  torch.optim.Optimizer,
                                                                  Scheduler, Distiller]:
    with torch.random.fork_rng():  # each student starts as it would in a run of its own
        torch.manual_seed(recipe.run.seed)
        student = create_student(recipe.student, num_classes)
        shapes, method = None, DISTILLERS[recipe.distill.method]
        if method.needs_features:
            shapes = FeatureShapes(
                StudentTaps(student).shapes(student, recipe.data.input_size), teacher_shapes,
                type(student).__name__)
        elif method.needs_embedding:
            width = EmbeddingTap(student).width(student, recipe.data.input_size)
            shapes = FeatureShapes([(width,)], teacher_shapes, type(student).__name__)
        distiller = create_distiller(recipe, num_classes, shapes)
        model = DistillationModel(student, distiller, recipe.student.channels_last)
    if recipe.student.compile:  # in place, compiled on the first call: state_dict keys unchanged
        model.compile()
    optimizer, scheduler = build_optimiser(model, recipe, steps_per_epoch)
    return model, optimizer, scheduler, distiller


@dataclass
class Student:
    """One student of the run and everything that trains it."""

    name: str  # "" for the recipe's own student
    recipe: Recipe
    model: nn.Module  # the DistillationModel, as accelerate prepared it
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    distiller: Distiller
    ema: Optional[ModelEmaV3] = None
    window: "_Window" = field(default_factory=lambda: _Window())

    def tag(self, key: str) -> str:
        return f"{self.name}/{key}" if self.name else key

    @property
    def module(self) -> DistillationModel:
        return extract_model_from_parallel(self.model)


class Students:
    def __init__(self, members: list[Student], accelerator):
        self.members, self.accelerator = members, accelerator

    @classmethod
    def build(cls, specs: dict[str, Recipe], data: TrainData, teacher_shapes: Optional[dict],
              accelerator) -> "Students":
        """Each student of `specs` (by name) with its optimiser, schedule and distiller, all
        prepared by accelerate in one call (models, then optimisers: the checkpoint's order)."""
        built = [build_student(r, data.num_classes, data.steps_per_epoch, teacher_shapes)
                 for r in specs.values()]
        for model, *_ in built:
            _check_cpu_bf16_batchnorm(model, accelerator)
        models, optimizers, schedulers, distillers = zip(*built)
        prepared = accelerator.prepare(*models, *optimizers)
        members = [Student(name, r, model, optimizer, scheduler, distiller)
                   for (name, r), model, optimizer, scheduler, distiller
                   in zip(specs.items(), prepared[:len(built)], prepared[len(built):],
                          schedulers, distillers)]
        for s in members:
            if s.recipe.ema.decay:
                s.ema = ModelEmaV3(s.module.student, decay=s.recipe.ema.decay)
        return cls(members, accelerator)

    @property
    def models(self) -> list[nn.Module]:
        return [s.model for s in self.members]

    @property
    def emas(self) -> dict[str, ModelEmaV3]:
        """The EMAs by student name, which checkpoints save and load beside accelerate's state."""
        return {s.name: s.ema for s in self.members if s.ema is not None}

    def start(self, step: int) -> None:
        """The schedules at optimiser step `step` (0, or where the run resumes)."""
        for s in self.members:
            s.scheduler.step_update(step)

    def train(self) -> None:
        for s in self.members:
            s.model.train()

    def fit(self, teacher: Teacher, data: TrainData) -> None:
        """Before the first step: the teacher's outputs on the first training micro-batches of
        the run (as the students will see them) for the distillers that fit something to them
        (Distiller.fit_batches; nothing on a resume that loaded it). The global random state
        is left as it was: the run continues as if this had not happened."""
        wanted = {s.name: s.module.distiller.fit_batches() for s in self.members}
        count = max(wanted.values(), default=0)
        if not count:
            return
        outputs = []
        with rng_restored():
            for batch in data.epoch(0):
                outputs.append(teacher(data.on_device(batch, self.accelerator.device)))
                if len(outputs) == count:
                    break
        for s in self.members:
            if wanted[s.name]:
                s.module.distiller.fit(outputs[:wanted[s.name]])

    def step(self, batch: Batch, teacher: Optional[TeacherOutputs], teacher_span: tuple,
             step: int, epoch: float, nonfinite: NonFiniteGuard, log: RunLog) -> bool:
        """One micro-batch through every student: forward, named losses, weighted sum,
        backward, and at the last micro-batch of optimiser step `step + 1` the update (unless
        the non-finite guard skips it). `epoch`: the fractional epoch, for the distillers'
        schedules. True when an optimiser step ended."""
        accelerator = self.accelerator
        with accelerator.accumulate(*self.models):
            for s in self.members:
                student_start = mark(accelerator.device)
                s.distiller.set_epoch(epoch)
                _, terms = s.model(batch.images, batch.targets, teacher)
                loss = s.distiller.total(terms)
                nonfinite.observe(s.name, terms, loss)
                accelerator.backward(loss)
                clip = s.recipe.optim.clip_grad
                if clip and accelerator.sync_gradients and not _is_deepspeed(accelerator):
                    accelerator.clip_grad_norm_(s.model.parameters(), clip)
                skipped = nonfinite.skip(s.name, step + 1, accelerator)
                if skipped:
                    log.print(f"warning: {skipped}")
                else:
                    s.optimizer.step()
                s.optimizer.zero_grad(set_to_none=True)
                s.window.add(terms, loss, teacher_span,
                             (student_start, mark(accelerator.device)))
        return accelerator.sync_gradients

    def stepped(self, step: int) -> None:
        """After optimiser step `step`: the schedules and the EMAs follow."""
        for s in self.members:
            s.scheduler.step_update(step)
            if s.ema is not None:
                s.ema.update(s.module.student, step=step)

    def scalars(self, images_per_step: int) -> dict[str, float]:
        """Each student's loss window (read from the device here), timings and lr, tagged."""
        out = {}
        for s in self.members:
            window = s.window.reduce(self.accelerator, images_per_step)
            out.update({s.tag(k): v for k, v in window.items()})
            out[s.tag("lr")] = s.optimizer.param_groups[0]["lr"]
        return out

    def bar(self, scalars: dict[str, float]) -> dict[str, str]:
        """The progress bar's figures: the first student's loss and lr."""
        tag = self.members[0].tag
        return {"loss": f"{scalars[tag('loss/total')]:.3f}", "lr": f"{scalars[tag('lr')]:.2e}"}

    def evaluate(self, loader: Iterable) -> dict[str, float]:
        """Every student's (and EMA's) metrics on `loader`, tagged; leaves them in eval mode."""
        out = {}
        for s in self.members:
            s.model.eval()
            out.update({s.tag(f"eval/{k}"): v
                        for k, v in evaluate(s.model, loader, self.accelerator).items()})
            if s.ema is not None:
                out.update({s.tag(f"eval_ema/{k}"): v for k, v in
                            evaluate(s.ema.module, loader, self.accelerator).items()})
        return out

    def export(self, run_dir: Path, num_classes: int, intact: str) -> dict[str, Path]:
        """Each student (and its EMA) in run_dir/export/<name>, written by the main process;
        every process takes part in gathering the weights. Returns the files by name."""
        exports = {}
        main = self.accelerator.is_main_process
        for s in self.members:
            state = consolidated_state(self.accelerator, s.model)
            folder = run_dir / "export" / s.name
            if main:
                exports[s.name] = export_student(state, s.recipe, num_classes, folder, intact)
                if s.ema is not None:
                    export_student({f"student.{k}": v
                                    for k, v in s.ema.module.state_dict().items()},
                                   s.recipe, num_classes, folder, intact, stem="student_ema")
        return exports


class _Window:
    """Loss terms and timings accumulated between two TensorBoard writes. The sums stay on the
    device and the timings are device-stream marks, so an ordinary step never waits for the
    device; `reduce`, at log steps, reads them all at once."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.names: list[str] = []
        self.sums: Optional[torch.Tensor] = None  # the terms in `names` order, then the total
        self.count = 0
        self.spans: list[tuple[tuple, tuple]] = []  # (teacher, student) (start, end) marks
        self.started = time.perf_counter()

    def add(self, terms: dict[str, torch.Tensor], total: torch.Tensor, teacher_span,
            student_span) -> None:
        if not self.names:
            self.names = sorted(terms)
        values = torch.stack([terms[n].detach().float() for n in self.names]
                             + [total.detach().float()])
        self.sums = values if self.sums is None else self.sums + values
        self.count += 1
        self.spans.append((tuple(teacher_span), tuple(student_span)))

    def reduce(self, accelerator, images_per_step: int) -> dict[str, float]:
        mean = accelerator.reduce(self.sums / self.count, reduction="mean").tolist()
        out = {f"loss/{n}": v for n, v in zip([*self.names, "total"], mean)}
        steps = self.count / accelerator.gradient_accumulation_steps
        # wall clock, so data loading counts (the read above waited for the device); the
        # teacher's share is of compute time
        out["throughput/images_per_s"] = images_per_step * steps / (time.perf_counter()
                                                                     - self.started)
        teacher_s = sum(_seconds(*t) for t, _ in self.spans)
        step_s = teacher_s + sum(_seconds(*s) for _, s in self.spans)
        out["time/teacher_share"] = teacher_s / max(step_s, 1e-9)
        # compute seconds per optimiser step: the teacher forward + this student's own forward,
        # backward and update (students of one run can be compared side by side)
        out["time/step_s"] = step_s / steps
        self.reset()
        return out


def mark(device: torch.device):
    """A point in time of the device's work: on CUDA an event in its stream (recorded without
    waiting), elsewhere the host clock (CPU ops run synchronously)."""
    if device.type == "cuda":
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
    return time.perf_counter()


def _seconds(start, end) -> float:
    if isinstance(start, float):
        return end - start
    end.synchronize()  # at a log step, where the device has caught up already
    return start.elapsed_time(end) / 1000


def _check_cpu_bf16_batchnorm(model: nn.Module, accelerator) -> None:
    precision = accelerator.mixed_precision  # the recipe's or the launcher's (precision_note)
    if (accelerator.device.type == "cpu" and _is_deepspeed(accelerator) and precision != "no"
            and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())):
        raise ValueError(
            f"mixed precision {precision} under DeepSpeed on CPU: DeepSpeed casts the student "
            f"to {precision} but keeps BatchNorm statistics in fp32, which torch's CPU "
            "batch_norm refuses. Use run.precision=no (or launch with --mixed_precision no) on "
            "CPU (GPUs are fine)"
        )


def _is_deepspeed(accelerator) -> bool:
    return accelerator.state.deepspeed_plugin is not None
