"""The training loop: recipe -> data, teacher, students -> accelerate -> steps.

`_train` composes the run: validate, resume point, accelerator, data, the teacher (one call
per batch, whatever it is: engine/teachers.py), the students (one object that steps, logs,
evaluates and exports them: engine/students.py), then `_loop`. Follow a batch through `_loop`:
the loader's batch goes to the device with its one Mixup/CutMix draw -> the teacher's output
for it -> every student's forward, named losses, weighted sum, backward and update -> after
each optimiser step the schedules and EMAs, the log window, checkpoints and stops on schedule.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from scalekd.data import TrainData, build_eval_loader, build_train_data
from scalekd.data.classes import load_split
from scalekd.engine.checkpoint import PREFIX, Checkpoints, CheckpointWriteError, write_run_file
from scalekd.engine.distributed import (build_accelerator, launched_world_size, precision_note,
                                        release_accelerate_state)
from scalekd.engine.divergence import NonFiniteGuard
from scalekd.engine.logging import RunLog, memory_gb
from scalekd.engine.run_folder import FINISHED, STOPPED, check_fresh_start, clear
from scalekd.engine.stopping import StopRequests, write_stop_record
from scalekd.engine.students import Students, mark
from scalekd.engine.teachers import Teacher, build_teacher
from scalekd.engine.validation import validate
from scalekd.models import data_config
from scalekd.recipe import Recipe, recipe_changes, resolved_zero_stage, student_recipes


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)  # extra students' keys prefixed
    export: Optional[Path] = None  # the recipe's own student
    steps: int = 0
    exports: dict[str, Path] = field(default_factory=dict)  # every student, by name
    finished: bool = True  # False: stopped early (signal, time budget, steps_per_job)
    stop_requested: Optional[str] = None  # a signal received, even too late to stop this run


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
    checkpoints = Checkpoints(recipe.run.path / "checkpoints", recipe.checkpoint.keep)
    resume_from, universal = _resume_point(recipe, checkpoints)
    accelerator = build_accelerator(recipe, load_universal=universal,
                                    resuming=resume_from is not None)
    threads_note = _set_torch_threads(recipe)  # after accelerate's own multi-CPU choice
    set_seed(recipe.run.seed)
    previous = _open_run_folder(recipe, accelerator.is_main_process)
    data, val_loader = _data(recipe, accelerator)
    # the teacher first (its feature shapes size the students' projectors); the students
    # (with their optimisers) go through accelerate, the teacher never
    specs = student_recipes(recipe)
    teacher = build_teacher(recipe, specs.values(), data.num_classes, accelerator.device)
    students = Students.build(specs, data, teacher.feature_shapes, accelerator)
    # resume: accelerate's state (the students, optimisers, RNG), the EMAs, the schedules
    checkpoints.remove_partial(accelerator)
    if universal:
        resume_from = Checkpoints.universal(accelerator, resume_from)
    step = Checkpoints.load(accelerator, resume_from, students.emas) if resume_from else 0
    students.fit(teacher, data)  # what the distillers fit to the teacher (none when resumed)
    students.start(step)
    total_steps = recipe.run.epochs * data.steps_per_epoch
    if recipe.run.max_steps:
        total_steps = min(total_steps, recipe.run.max_steps)
    log = RunLog(recipe.run.path / "tb", total_steps, step, accelerator.is_main_process,
                 accelerator, list(specs))
    nonfinite = NonFiniteGuard(recipe.run.on_nonfinite, recipe.run.max_skipped_steps, step,
                               accelerator.device)
    run = _Run(recipe, accelerator, data, val_loader, teacher, students, checkpoints, log,
               nonfinite, step, total_steps, saved_step=step if resume_from else -1)
    run.announce(threads_note, resume_from, previous)
    stop = _loop(run, stops)
    result = run.stop(stop, stops.received) if stop else run.finish()
    teacher.release()
    accelerator.free_memory()
    return result


@dataclass
class _Run:
    """What the loop carries from step to step: the built parts and the counters."""

    recipe: Recipe
    accelerator: Accelerator
    data: TrainData
    val_loader: Optional[Iterable]  # None: no labels to evaluate (data.labels=false)
    teacher: Teacher
    students: Students
    checkpoints: Checkpoints
    log: RunLog
    nonfinite: NonFiniteGuard
    step: int  # optimiser steps done
    total_steps: int
    saved_step: int  # the newest checkpoint's step (-1: none yet)
    save_s: float = 0.0  # how long the last save took (a stop budgets one more)

    def announce(self, threads_note: Optional[str], resume_from: Optional[Path],
                 previous: Optional[dict]) -> None:
        """The run's opening lines, and the teacher's own metrics before a fresh start."""
        log, recipe = self.log, self.recipe
        log.print(precision_note(recipe))
        if threads_note:
            log.print(threads_note)
        if resume_from:
            log.print(f"resumed from {resume_from} at step {self.step}")
            changes = recipe_changes(previous, recipe.to_dict()) if previous else []
            if changes:
                log.print("warning: the recipe differs from the run's previous start:\n  "
                          + "\n  ".join(changes))
        if self.val_loader is None:
            log.print("data.labels=false: no labels, so no top-1 evaluation; evaluate the "
                      "export with a linear probe (scalekd probe, docs/label-free.md)")
        elif recipe.eval.teacher and self.step == 0:
            metrics = self.teacher.evaluate(self.val_loader, self.accelerator)
            if metrics is not None:
                log.scalars(0, {f"teacher/{k}": v for k, v in metrics.items()})
                # one teacher's "top1", or several teachers' "<name>/top1"
                log.print(", ".join(
                    f"teacher {key.rpartition('/')[0] or recipe.teacher.name}: top-1 {value:.2f}"
                    for key, value in metrics.items() if key.rpartition("/")[2] == "top1"))

    def after_step(self) -> None:
        """Optimiser step `step + 1` is done: schedules and EMAs follow, and on schedule the
        log window (where the host reads the device: the non-finite flags, the loss sums in
        one all-reduce and one transfer) and a checkpoint."""
        self.step += 1
        self.nonfinite.end_step()
        self.students.stepped(self.step)
        if self.step % self.recipe.run.log_every == 0 or self.step == self.total_steps:
            self.nonfinite.check(self.accelerator, self.checkpoints.latest)
            scalars = {"memory/peak_gb": memory_gb(self.accelerator.device),
                       "progress/epoch": self.step / self.data.steps_per_epoch}
            if self.data.skipped is not None:  # data.bad_files=skip; rank 0 counts its reads
                scalars["data/skipped"] = self.data.skipped.count
            scalars.update(self.students.scalars(self.recipe.data.batch_size))
            self.log.scalars(self.step, scalars)
            self.log.advance(self.students.bar(scalars))
        else:  # the bar keeps the last log step's loss
            self.log.advance()
        every = self.recipe.checkpoint.every_steps
        if every and self.step % every == 0:
            self.save()

    def end_epoch(self) -> None:
        """Evaluation and checkpoint at an epoch's end, on schedule."""
        epochs_done, cfg = self.step // self.data.steps_per_epoch, self.recipe
        if cfg.eval.every_epochs and epochs_done % cfg.eval.every_epochs == 0:
            self.evaluate()
        if (cfg.checkpoint.every_epochs and epochs_done % cfg.checkpoint.every_epochs == 0
                and self.saved_step != self.step):
            self.save()

    def evaluate(self) -> dict[str, float]:
        self.nonfinite.check(self.accelerator, self.checkpoints.latest)
        if self.val_loader is None:
            return {}
        out = self.students.evaluate(self.val_loader)
        self.log.scalars(self.step, out)
        self.log.print(f"epoch {self.step / self.data.steps_per_epoch:.2f} step {self.step}: "
                       + ", ".join(f"{k} {v:.2f}" for k, v in out.items()))
        return out

    def save(self) -> None:
        self.nonfinite.check(self.accelerator, self.checkpoints.latest)  # never non-finite
        self.nonfinite.check_weights(self.students.models, self.step, self.accelerator,
                                     self.checkpoints.latest)
        t_save = time.perf_counter()
        try:
            self.checkpoints.save(self.accelerator, self.step, self.students.emas)
            self.saved_step = self.step
        except CheckpointWriteError as err:
            if self.recipe.checkpoint.on_error == "stop":
                raise
            self.log.print(f"warning: {err}; training goes on (checkpoint.on_error=continue)")
        self.save_s = time.perf_counter() - t_save

    def stop(self, reason: str, received: Optional[str]) -> TrainResult:
        """Checkpoint this step and leave the stop record: the same command resumes here."""
        run_dir, step, main = self.recipe.run.path, self.step, self.accelerator.is_main_process
        if self.saved_step != step:
            self.save()
        self.log.print(f"stopping at step {step} of {self.total_steps} ({reason}); "
                       "checkpointed, resume by running the same command again")
        self.log.close()
        self.accelerator.wait_for_everyone()  # every rank has stopped after this step
        if main:
            write_stop_record(run_dir, step, self.total_steps, reason, received,
                              self.checkpoints.folder / f"{PREFIX}{step:09d}"
                              if self.saved_step == step else None)
        # no rank exits before the record is there: one launcher exiting makes srun end the rest
        self.accelerator.wait_for_everyone()
        return TrainResult(run_dir, {}, None, step, {}, finished=False)

    def finish(self) -> TrainResult:
        """The final evaluation, checkpoint and exports, then FINISHED (no more requeues)."""
        run_dir, step = self.recipe.run.path, self.step
        metrics = self.evaluate()
        if self.saved_step != step:
            self.save()
        self.log.close()
        self.nonfinite.check_weights(self.students.models, step, self.accelerator,
                                     self.checkpoints.latest)
        # a file that cannot be written (disk full) is never left half-written under its name,
        # and without FINISHED the same command resumes from the final checkpoint and writes
        # them again
        intact = (f"The checkpoint of step {step} holds the trained state. "
                  if self.saved_step == step else "")
        exports = self.students.export(run_dir, self.data.num_classes, intact)
        if self.accelerator.is_main_process:
            write_run_file(run_dir / "metrics.json", _text(json.dumps(metrics, indent=2)),
                           intact)
            write_run_file(run_dir / FINISHED, _text(f"{step}\n"), intact)
        self.accelerator.wait_for_everyone()
        return TrainResult(run_dir, metrics, exports.get(""), step, exports)


def _loop(run: _Run, stops: StopRequests) -> Optional[str]:
    """Optimiser steps to the schedule's end, or to a stop (a signal, the time budget,
    steps_per_job) at a step every rank agrees on: its reason is returned."""
    data, device = run.data, run.accelerator.device
    stop, step_s, job_start, t_step = None, 0.0, run.step, time.perf_counter()
    while run.step < run.total_steps:
        run.students.train()
        for batch in data.epoch(run.step // data.steps_per_epoch,
                                run.step % data.steps_per_epoch):
            start = mark(device)  # timings: marks in the device's stream, read at log steps
            batch = data.on_device(batch, device)  # one Mixup/CutMix for all
            teacher_out = run.teacher(batch)
            teacher_span = (start, mark(device))
            if not run.students.step(batch, teacher_out, teacher_span, run.step,
                                     run.step / data.steps_per_epoch, run.nonfinite, run.log):
                continue  # a micro-batch of gradient accumulation
            run.after_step()
            step_s, t_step = time.perf_counter() - t_step, time.perf_counter()
            if run.step == run.total_steps:
                break
            stop = stops.reason(run.step - job_start, step_s, run.save_s)
            if stop:
                break
        if run.step == run.total_steps or run.step % data.steps_per_epoch:
            break  # the schedule's end, or a stop within an epoch
        run.end_epoch()
        if stop:  # at an epoch's end: after its evaluation, as an uninterrupted run
            break
    return stop


def _resume_point(recipe: Recipe, checkpoints: Checkpoints) -> tuple[Optional[Path], bool]:
    """The checkpoint to resume from (the newest intact one, checksums verified; none intact
    among several: refused), and whether it loads through DeepSpeed's universal format (one
    written by another process count)."""
    resume_from = (checkpoints.latest() if recipe.checkpoint.resume == "auto"
                   else None if recipe.checkpoint.resume in ("never", "overwrite")
                   else Checkpoints.check(Path(recipe.checkpoint.resume)))
    universal = resume_from is not None and Checkpoints.needs_universal(
        resume_from, launched_world_size(), resolved_zero_stage(recipe) > 0)
    return resume_from, universal


def _open_run_folder(recipe: Recipe, main: bool) -> Optional[dict]:
    """The run folder's files for this start, written by rank 0 alone (atomically: no rank
    sees a half-written file); returns the recipe of the run's previous start, if any."""
    if not main:
        return None
    run_dir = recipe.run.path
    recipe_file = run_dir / "recipe.json"
    if recipe.checkpoint.resume == "overwrite":
        clear(run_dir)
    previous = json.loads(recipe_file.read_text()) if recipe_file.is_file() else None
    write_run_file(recipe_file, _text(json.dumps(recipe.to_dict(), indent=2)))
    # the batch shell forwards the scheduler's signal here (slurm/train.sbatch)
    write_run_file(run_dir / "trainer.pid", _text(f"{os.getpid()}\n"))
    (run_dir / STOPPED).unlink(missing_ok=True)  # a previous job's: never this one's
    return previous


def _data(recipe: Recipe, accelerator: Accelerator) -> tuple[TrainData, Optional[Iterable]]:
    """This process's training batches and validation loader (None without labels),
    normalised for the student (the teacher re-normalises the same augmented pixels)."""
    norm = data_config(recipe.student.name, recipe.student.kwargs)
    rank, world = accelerator.process_index, accelerator.num_processes
    data = build_train_data(recipe, load_split(recipe.data, recipe.data.train_split),
                            norm["mean"], norm["std"], rank, world, accelerator.device)
    if not recipe.data.labels:
        return data, None
    val_images = load_split(recipe.data, recipe.data.val_split)
    val_loader = build_eval_loader(recipe, val_images, norm["mean"], norm["std"], rank, world,
                                   device=accelerator.device)
    return data, val_loader


def _text(text: str):
    return lambda path: path.write_text(text)


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
