"""The training loop: recipe -> data, student, teacher, distiller -> accelerate -> steps.

Read top to bottom, `train` is the whole run: build everything, resume if a checkpoint exists,
then for each batch: one augmentation (Mixup/CutMix included) -> teacher forward (no grad, its
own normalisation and resolution) -> student forward -> named losses -> weighted sum ->
backward -> step -> log, evaluate and checkpoint on schedule.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
from accelerate.utils import extract_model_from_parallel, set_seed
from timm.scheduler.scheduler import Scheduler
from timm.utils import ModelEmaV3

from scalekd.data import build_eval_loader, build_train_data
from scalekd.data.classes import load_split
from scalekd.distill import DISTILLERS, Distiller, FeatureShapes, create_distiller
from scalekd.engine.checkpoint import (PREFIX, Checkpoints, CheckpointWriteError,
                                       RunWriteError, write_run_file)
from scalekd.engine.distributed import (build_accelerator, launched_world_size, precision_note,
                                        release_accelerate_state, shard_teacher)
from scalekd.engine.divergence import NonFiniteGuard
from scalekd.engine.evaluate import evaluate
from scalekd.engine.export import consolidated_state, export_student
from scalekd.engine.logging import RunLog, memory_gb
from scalekd.engine.optimisation import build_optimiser
from scalekd.engine.run_folder import FINISHED, STOPPED, check_fresh_start, clear
from scalekd.engine.stopping import StopRequests, write_stop_record
from scalekd.engine.validation import validate
from scalekd.models import FrozenTeacher, create_student, create_teacher, data_config
from scalekd.models.taps import StudentTaps
from scalekd.models.teacher import TeacherOutput
from scalekd.models.teacher import soft_label_output as cached_teacher_output
from scalekd.recipe import Recipe, recipe_changes, resolved_zero_stage, student_recipes


class DistillationModel(nn.Module):
    """What the optimiser trains and the engine wraps: the student and the distiller's own
    trainable parts (projectors). The teacher is deliberately not in here."""

    def __init__(self, student: nn.Module, distiller: Distiller, channels_last: bool = False):
        super().__init__()
        self.student, self.distiller = student, distiller
        self.taps = StudentTaps(student) if distiller.needs_features else None
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        student.to(memory_format=self.memory_format)

    def forward(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None,
                teacher: Optional[TeacherOutput] = None):
        # a DeepSpeed bf16/fp16 engine holds the student in that dtype and does not autocast
        images = images.to(next(self.student.parameters()).dtype,
                           memory_format=self.memory_format)
        if targets is None:
            return self.student(images).float()
        if self.taps is None:
            logits, features = self.student(images).float(), {}
        else:
            logits, maps = self.taps.forward(self.student, images)
            logits, features = logits.float(), {"student_features": maps}
        return logits, self.distiller(logits, teacher, targets, **features)


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)  # extra students' keys prefixed
    export: Optional[Path] = None  # the recipe's own student
    steps: int = 0
    exports: dict[str, Path] = field(default_factory=dict)  # every student, by name
    finished: bool = True  # False: stopped early (signal, time budget, steps_per_job)
    stop_requested: Optional[str] = None  # a signal received, even too late to stop this run


@dataclass
class Student:
    """One student of the run and everything that trains it. A run has one, or several that
    share each batch and each teacher forward (`recipe.students`)."""

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


def build_student(recipe: Recipe, num_classes: int, steps_per_epoch: int,
                  teacher_shapes: Optional[dict] = None) -> tuple[DistillationModel,
                                                                  torch.optim.Optimizer,
                                                                  Scheduler, Distiller]:
    with torch.random.fork_rng():  # each student starts as it would in a run of its own
        torch.manual_seed(recipe.run.seed)
        student = create_student(recipe.student, num_classes)
        shapes = None
        if DISTILLERS[recipe.distill.method].needs_features:
            shapes = FeatureShapes(
                StudentTaps(student).shapes(student, recipe.data.input_size), teacher_shapes,
                type(student).__name__)
        distiller = create_distiller(recipe, num_classes, shapes)
        model = DistillationModel(student, distiller, recipe.student.channels_last)
    if recipe.student.compile:  # in place, compiled on the first call: state_dict keys unchanged
        model.compile()
    optimizer, scheduler = build_optimiser(model, recipe, steps_per_epoch)
    return model, optimizer, scheduler, distiller


def train(recipe: Recipe) -> TrainResult:
    # SIGUSR1/SIGTERM are caught from the first line to the last: one arriving while the run
    # starts up stops it after its first step, one arriving during the final evaluation is moot
    threads = torch.get_num_threads()
    with StopRequests(recipe.run.time_budget_s, recipe.run.steps_per_job) as stops:
        try:
            result = _train(recipe, stops)
            result.stop_requested = f"received {stops.received}" if stops.received else None
            return result
        finally:  # so that a later train() in this process may pick another precision
            release_accelerate_state()
            torch.set_num_threads(threads)  # and starts from the process's own thread count


def _train(recipe: Recipe, stops: StopRequests) -> TrainResult:
    validate(recipe, launched_world_size())
    check_fresh_start(recipe)
    run_dir = recipe.run.path
    checkpoints = Checkpoints(run_dir / "checkpoints", recipe.checkpoint.keep)
    # the newest intact checkpoint (checksums verified); none intact among several: refused
    resume_from = (checkpoints.latest() if recipe.checkpoint.resume == "auto"
                   else None if recipe.checkpoint.resume in ("never", "overwrite")
                   else Checkpoints.check(Path(recipe.checkpoint.resume)))
    # a DeepSpeed checkpoint of another process count loads through the universal format
    universal = resume_from is not None and Checkpoints.needs_universal(
        resume_from, launched_world_size(), resolved_zero_stage(recipe) > 0)
    accelerator = build_accelerator(recipe, load_universal=universal)
    threads_note = _set_torch_threads(recipe)  # after accelerate's own multi-CPU choice
    set_seed(recipe.run.seed)
    main = accelerator.is_main_process
    recipe_file, previous = run_dir / "recipe.json", None
    if main:  # only rank 0 reads and (atomically) rewrites it: no rank sees a half-written file
        if recipe.checkpoint.resume == "overwrite":
            clear(run_dir)
        previous = json.loads(recipe_file.read_text()) if recipe_file.is_file() else None
        write_run_file(recipe_file, _text(json.dumps(recipe.to_dict(), indent=2)))
        # the batch shell forwards the scheduler's signal here (slurm/train.sbatch)
        write_run_file(run_dir / "trainer.pid", _text(f"{os.getpid()}\n"))
        (run_dir / STOPPED).unlink(missing_ok=True)  # a previous job's: never this one's

    # data: student normalisation; the teacher re-normalises the same augmented pixels
    norm = data_config(recipe.student.name)
    rank, world = accelerator.process_index, accelerator.num_processes
    data = build_train_data(recipe, load_split(recipe.data, recipe.data.train_split),
                            norm["mean"], norm["std"], rank, world, accelerator.device)
    val_images = load_split(recipe.data, recipe.data.val_split)
    val_loader = build_eval_loader(recipe, val_images, norm["mean"], norm["std"], rank, world,
                                   device=accelerator.device)

    # models: the teacher first (its feature shapes size the students' projectors); the
    # students (with their optimisers) go through accelerate, the teacher never
    specs = student_recipes(recipe)
    methods = [DISTILLERS[r.distill.method] for r in specs.values()]
    teacher: Optional[FrozenTeacher] = None
    teacher_shapes = None
    if any(m.needs_teacher for m in methods) and recipe.teacher.mode == "online":
        with torch.random.fork_rng():  # the teacher's (discarded) init draws no student RNG
            teacher = create_teacher(recipe.teacher, data.num_classes, norm["mean"],
                                     norm["std"], recipe.data.input_size).to(accelerator.device)
        if any(m.needs_features for m in methods):
            teacher_shapes = teacher.enable_features(
                any(r.distill.tpp for r, m in zip(specs.values(), methods) if m.needs_features),
                accelerator.device, recipe.distill.tpp_blocks)
        if recipe.teacher.placement == "zero3":
            shard_teacher(teacher, recipe)
    built = [build_student(r, data.num_classes, data.steps_per_epoch, teacher_shapes)
             for r in specs.values()]
    for model, *_ in built:
        _check_cpu_bf16_batchnorm(model, accelerator)
    n = len(built)
    prepared = accelerator.prepare(*[b[0] for b in built], *[b[1] for b in built])
    students = [Student(name, r, prepared[i], prepared[n + i], built[i][2], built[i][3])
                for i, (name, r) in enumerate(specs.items())]
    for s in students:
        if s.recipe.ema.decay:
            s.ema = ModelEmaV3(s.module.student, decay=s.recipe.ema.decay)
    emas = {s.name: s.ema for s in students if s.ema is not None}

    # resume
    checkpoints.remove_partial(accelerator)
    if universal:
        resume_from = Checkpoints.universal(accelerator, resume_from)
    step = Checkpoints.load(accelerator, resume_from, emas) if resume_from else 0
    for s in students:
        s.scheduler.step_update(step)
    total_steps = recipe.run.epochs * data.steps_per_epoch
    if recipe.run.max_steps:
        total_steps = min(total_steps, recipe.run.max_steps)

    log = RunLog(run_dir / "tb", total_steps, step, main)
    log.print(precision_note(recipe))
    if threads_note:
        log.print(threads_note)
    nonfinite = NonFiniteGuard(recipe.run.on_nonfinite, recipe.run.max_skipped_steps, step,
                               accelerator.device)
    if resume_from:
        log.print(f"resumed from {resume_from} at step {step}")
        changes = recipe_changes(previous, recipe.to_dict()) if previous else []
        if changes:
            log.print("warning: the recipe differs from the run's previous start:\n  "
                      + "\n  ".join(changes))
    if teacher is not None and recipe.eval.teacher and step == 0:
        teacher_metrics = evaluate(lambda x: teacher(x).logits, val_loader, accelerator)
        log.scalars(0, {f"teacher/{k}": v for k, v in teacher_metrics.items()})
        log.print(f"teacher {recipe.teacher.name}: top-1 {teacher_metrics['top1']:.2f}")

    def run_eval() -> dict[str, float]:
        nonfinite.check(accelerator, checkpoints.latest)
        out = {}
        for s in students:
            s.model.eval()
            out.update({s.tag(f"eval/{k}"): v
                        for k, v in evaluate(s.model, val_loader, accelerator).items()})
            if s.ema is not None:
                out.update({s.tag(f"eval_ema/{k}"): v
                            for k, v in evaluate(s.ema.module, val_loader, accelerator).items()})
        log.scalars(step, out)
        log.print(f"epoch {step / data.steps_per_epoch:.2f} step {step}: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in out.items()))
        return out

    saved_step, save_s = (step if resume_from else -1), 0.0

    def save_checkpoint() -> None:
        nonlocal saved_step, save_s
        nonfinite.check(accelerator, checkpoints.latest)  # never save non-finite weights
        nonfinite.check_weights([s.model for s in students], step, accelerator,
                                checkpoints.latest)
        t_save = time.perf_counter()
        try:
            checkpoints.save(accelerator, step, emas)
            saved_step = step
        except CheckpointWriteError as err:
            if recipe.checkpoint.on_error == "stop":
                raise
            log.print(f"warning: {err}; training goes on (checkpoint.on_error=continue)")
        save_s = time.perf_counter() - t_save

    # a signal, the time budget or steps_per_job ends this job early, checkpointed at a step
    # boundary that every rank agrees on; the next job resumes from there
    stop, step_s, job_start = None, 0.0, step
    t_step = time.perf_counter()
    while step < total_steps:
        for s in students:
            s.model.train()
        for images, targets, *soft in data.epoch(step // data.steps_per_epoch,
                                                 step % data.steps_per_epoch):
            # timings are marks in the device's stream, read at log steps: no wait here
            teacher_span = [_mark(accelerator.device)]
            images = images.to(accelerator.device, non_blocking=True)
            targets = targets.to(accelerator.device, non_blocking=True)
            if data.mixup is not None:  # one mixed batch for teacher and students alike
                images, targets, *soft = data.mixup(images, targets, *soft)
            if soft:  # teacher.mode=cached: the stored top-k of these crops, mixed likewise
                teacher_out = cached_teacher_output(soft[0])
            else:
                teacher_out = teacher(images) if teacher is not None else None
            teacher_span.append(_mark(accelerator.device))
            with accelerator.accumulate(*[s.model for s in students]):
                for s in students:
                    student_start = _mark(accelerator.device)
                    s.distiller.set_epoch(step / data.steps_per_epoch)  # for schedules
                    _, terms = s.model(images, targets, teacher_out)
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
                                 (student_start, _mark(accelerator.device)))
            if not accelerator.sync_gradients:
                continue

            step += 1
            nonfinite.end_step()
            for s in students:
                s.scheduler.step_update(step)
                if s.ema is not None:
                    s.ema.update(s.module.student, step=step)
            if step % recipe.run.log_every == 0 or step == total_steps:
                # where the host reads the device: the non-finite flags, the loss sums (one
                # all-reduce, one transfer)
                nonfinite.check(accelerator, checkpoints.latest)
                scalars = {"memory/peak_gb": memory_gb(accelerator.device),
                           "progress/epoch": step / data.steps_per_epoch}
                if data.skipped is not None:  # data.bad_files=skip; rank 0 counts its own reads
                    scalars["data/skipped"] = data.skipped.count
                for s in students:
                    window = s.window.reduce(accelerator, recipe.data.batch_size)
                    scalars.update({s.tag(k): v for k, v in window.items()})
                    scalars[s.tag("lr")] = s.optimizer.param_groups[0]["lr"]
                log.scalars(step, scalars)
                lead = students[0].tag
                log.advance({"loss": f"{scalars[lead('loss/total')]:.3f}",
                             "lr": f"{scalars[lead('lr')]:.2e}"})
            else:  # the bar keeps the last log step's loss
                log.advance()
            if recipe.checkpoint.every_steps and step % recipe.checkpoint.every_steps == 0:
                save_checkpoint()
            step_s, t_step = time.perf_counter() - t_step, time.perf_counter()
            if step == total_steps:
                break
            stop = stops.reason(step - job_start, step_s, save_s)
            if stop:
                break
        epochs_done = step // data.steps_per_epoch
        if step == total_steps or step % data.steps_per_epoch:
            break  # the schedule's end, or a stop within an epoch
        if recipe.eval.every_epochs and epochs_done % recipe.eval.every_epochs == 0:
            run_eval()
        if (recipe.checkpoint.every_epochs and epochs_done % recipe.checkpoint.every_epochs == 0
                and saved_step != step):
            save_checkpoint()
        if stop:  # at an epoch's end: after its evaluation, as an uninterrupted run
            break

    if stop:
        if saved_step != step:
            save_checkpoint()
        log.print(f"stopping at step {step} of {total_steps} ({stop}); checkpointed, resume by "
                  "running the same command again")
        log.close()
        accelerator.wait_for_everyone()  # every rank has stopped after this step
        if main:
            write_stop_record(run_dir, step, total_steps, stop, stops.received,
                              checkpoints.folder / f"{PREFIX}{step:09d}"
                              if saved_step == step else None)
        # no rank exits before the record is there: one launcher exiting makes srun end the rest
        accelerator.wait_for_everyone()
        _release(teacher, accelerator)
        return TrainResult(run_dir, {}, None, step, {}, finished=False)

    metrics = run_eval()
    if saved_step != step:
        save_checkpoint()
    log.close()

    nonfinite.check_weights([s.model for s in students], step, accelerator, checkpoints.latest)
    exports = {}
    # a file that cannot be written (disk full) is never left half-written under its name, and
    # without FINISHED the same command resumes from the final checkpoint and writes them again
    intact = (f"The checkpoint of step {step} holds the trained state. "
              if saved_step == step else "")
    for s in students:
        state = consolidated_state(accelerator, s.model)
        folder = run_dir / "export" / s.name
        if main:
            exports[s.name] = export_student(state, s.recipe, data.num_classes, folder, intact)
            if s.ema is not None:
                export_student({f"student.{k}": v for k, v in s.ema.module.state_dict().items()},
                               s.recipe, data.num_classes, folder, intact, stem="student_ema")
    if main:
        write_run_file(run_dir / "metrics.json", _text(json.dumps(metrics, indent=2)), intact)
        # the schedule is done: no more requeues
        write_run_file(run_dir / FINISHED, _text(f"{step}\n"), intact)
    accelerator.wait_for_everyone()
    _release(teacher, accelerator)
    return TrainResult(run_dir, metrics, exports.get(""), step, exports)


def _text(text: str):
    return lambda path: path.write_text(text)


def _release(teacher: Optional[FrozenTeacher], accelerator) -> None:
    if teacher is not None:
        teacher.engine = None
    accelerator.free_memory()


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


def _mark(device: torch.device):
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


def _set_torch_threads(recipe: Recipe) -> Optional[str]:
    """Set torch's intra-op threads in this process (run.threads); returns what auto chose
    when it changed torch's count, for the log. Auto leaves a core to each loader worker:
    every parallel op waits for its slowest thread, so one thread sharing its core with a
    worker (or any other busy process) stalls the whole step. On 2 cores beside 2 workers and
    other load, 2 threads ran a 32 px KD step several times slower than 1 (docs/performance.md,
    against timm's train.py). `accelerate launch` sets OMP_NUM_THREADS (1 per process on GPUs)."""
    if recipe.run.threads:
        torch.set_num_threads(recipe.run.threads)
        return None
    if os.environ.get("OMP_NUM_THREADS"):  # the launcher's or the user's choice
        return None
    cores, workers = torch.get_num_threads(), recipe.data.workers
    threads = max(1, cores - workers)
    if threads == cores:
        return None
    torch.set_num_threads(threads)
    return (f"torch threads: {threads} of {cores} (run.threads=0: the cores less "
            f"data.workers={workers}; set run.threads or OMP_NUM_THREADS to choose)")


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
