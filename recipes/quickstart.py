"""Quickstart on Fashion-MNIST (real data, no download when Debian's dataset-fashion-mnist is
installed). Trains a ResNet-10-T teacher one pass over half the labelled training images, then a
MobileNetV3 student that may see only 100 labels per class, three ways:

  alone         the 1,000 labelled images, no teacher
  KD            the same images, vanilla KD from the teacher
  KD+transfer   the same labels, plus the teacher's soft labels on the other 59,000 training
                images, whose own labels stay unused (distillation's classic transfer set)

and prints test top-1 for each. About 3 minutes on 2 CPU cores (it prints its estimate first).

    python recipes/quickstart.py                 # overrides apply to the three student runs:
    python recipes/quickstart.py run.seed=1 data.labels_per_class=50

The teacher is cached in runs/quickstart/teacher and reused; delete that folder to retrain it.
"""

import dataclasses
import json
import math
import sys
from pathlib import Path

from scalekd.cli import recipe_parser, run_recipe
from scalekd.diagnostics.report import plot_report
from scalekd.recipe import (AugCfg, CheckpointCfg, DataCfg, DistillCfg, EvalCfg, OptimCfg,
                            Recipe, RunCfg, StudentCfg, TeacherCfg, apply_overrides)

ROOT = "runs/quickstart"
replace = dataclasses.replace
FASHION_MNIST_TRAIN = 60_000
# Seconds per training step at batch 128 and per run (start, evaluations, export) on 2 cores of
# an Intel Xeon (AVX-512) development machine (1 torch thread, the 2 loader workers on the other
# core): each run's wall time in one quickstart from an empty runs/, 2026-12-04 14:33-14:36 UTC,
# less RUN_SECONDS, over its steps. Other sessions kept the load average at 5-6, the quickstart
# ran at a higher scheduling priority. docs/performance.md, "The quickstart's time".
STEP_SECONDS = {"teacher": 0.221, "alone": 0.067, "KD": 0.134, "KD+transfer": 0.112}
RUN_SECONDS = 8.0
TEACHER_LABELS_PER_CLASS = 3_000
MEASURED_ON = "2 cores of an Intel Xeon"


def recipe() -> Recipe:
    """The KD student's run; the other runs are derived from it."""
    return Recipe(
        run=RunCfg(name="student_kd", dir=ROOT + "/{name}", epochs=30, log_every=5),
        data=DataCfg(source="fashion_mnist", train_split="train", val_split="test",
                     input_size=32, batch_size=128, eval_batch_size=500, workers=2,
                     labels_per_class=100),
        aug=AugCfg(scale=(0.8, 1.0), hflip=0.5, interpolation="bilinear", crop_pct=1.0),
        student=StudentCfg(name="mobilenetv3_small_050", channels_last=True),
        # a 16-channel stem in place of 32 (its 16x16 maps are the widest of a 32 px input):
        # a batch trains in 0.83x the time, its forward in 0.78x, for 0.5 points of the
        # teacher's top-1 (87.44 against 87.97 after a full pass; docs/performance.md)
        teacher=TeacherCfg(name="resnet10t", kwargs={"stem_width": 16},
                           checkpoint=ROOT + "/teacher/export/student.safetensors",
                           dtype="fp32", channels_last=True),
        # mostly the teacher: 1,000 labels are few. Over seeds 0-2 KD beat the student alone
        # by 2.3 / 0.3 / 2.2 points with these weights, by 1.8 / -0.1 / 2.0 with 0.5 / 0.5
        distill=DistillCfg(method="kd", temperature=4.0, hard_loss="ce",
                           weights={"hard": 0.1, "kd": 0.9}),
        optim=OptimCfg(name="adamw", lr=3e-3, weight_decay=0.05, warmup_epochs=2),
        checkpoint=CheckpointCfg(every_epochs=10),
        eval=EvalCfg(every_epochs=10),
    )


def transfer_recipe(kd: Recipe) -> Recipe:
    """One pass over all 60,000 images."""
    return replace(kd, run=replace(kd.run, name="student_kd_transfer", epochs=1),
                   data=replace(kd.data, unlabelled=True),
                   optim=replace(kd.optim, warmup_epochs=0.05),
                   checkpoint=replace(kd.checkpoint, every_epochs=1),
                   eval=replace(kd.eval, every_epochs=1))


def alone_recipe(kd: Recipe) -> Recipe:
    return replace(kd, run=replace(kd.run, name="student_alone"), teacher=TeacherCfg(),
                   distill=replace(kd.distill, method="supervised", weights={}))


def teacher_recipe(kd: Recipe) -> Recipe:
    """The teacher trained alone, one pass, with the same data settings: on Fashion-MNIST's ten
    classes 3,000 labelled images per class (half the training set), on other data (a source
    or classes given on the command line) every label, which any data set has."""
    share = TEACHER_LABELS_PER_CLASS if whole_fashion_mnist(kd) else 0
    return replace(alone_recipe(kd),
                   run=replace(kd.run, name="teacher", epochs=1),
                   data=replace(kd.data, labels_per_class=share),
                   student=StudentCfg(name=kd.teacher.name, kwargs=kd.teacher.kwargs,
                                      channels_last=kd.teacher.channels_last),
                   optim=replace(kd.optim, lr=2e-3, warmup_epochs=0.2),
                   checkpoint=replace(kd.checkpoint, every_epochs=1),
                   eval=replace(kd.eval, every_epochs=1))


def whole_fashion_mnist(r: Recipe) -> bool:
    """The quickstart's own data: all ten Fashion-MNIST classes (its costs were measured there)."""
    return r.data.source == "fashion_mnist" and not r.data.classes


def expected_seconds(runs: dict[str, Recipe]) -> float:
    """The runs' time on Fashion-MNIST from the measured costs (per image: the step's cost over
    batch 128); every training image of a pass when labels_per_class is 0 or the rest feed the
    transfer set, else 10 classes x labels_per_class."""
    total = 0.0
    for name, r in runs.items():
        every = not r.data.labels_per_class or r.data.unlabelled
        images = FASHION_MNIST_TRAIN if every else 10 * r.data.labels_per_class
        steps = r.run.epochs * (images // r.data.batch_size)  # full batches only
        total += RUN_SECONDS + steps * STEP_SECONDS[name] * r.data.batch_size / 128
    return total


def main(argv: list[str]) -> None:
    kd = apply_overrides(recipe(), recipe_parser(__doc__).parse_intermixed_args(argv).overrides)
    teacher_file = Path(kd.teacher.checkpoint)
    runs = {"alone": alone_recipe(kd), "KD": kd, "KD+transfer": transfer_recipe(kd)}
    if not teacher_file.is_file():
        runs = {"teacher": teacher_recipe(kd), **runs}
    if whole_fashion_mnist(kd):
        print(f"expected time: about {expected_seconds(runs) / 60:.0f} minutes on {MEASURED_ON} "
              f"with nothing else running ({', '.join(runs)}; measured per-step costs)")
    if "teacher" not in runs:
        print(f"reusing the teacher in {teacher_file}")
    results = {name: run_recipe(r, []) for name, r in runs.items()}

    print(f"\nFashion-MNIST test top-1: {kd.teacher.name} teacher -> {kd.student.name} student, "
          f"{kd.data.labels_per_class} labels per class, seed {kd.run.seed}")
    print(f"  {'run':<13}{'steps':>6}{'top-1':>8}  exported student")
    if "teacher" not in results:
        metrics = teacher_file.parent.parent / "metrics.json"  # the teacher's run folder
        top1 = json.loads(metrics.read_text())["eval/top1"] if metrics.is_file() else math.nan
        print(f"  {'teacher':<13}{'':>6}{top1:>8.2f}  {teacher_file} (reused)")
    for name, result in results.items():
        print(f"  {name:<13}{result.steps:>6}{result.metrics['eval/top1']:>8.2f}  {result.export}")
    results.pop("teacher", None)
    # over optimiser steps: the transfer run's epochs are 60 times larger
    figures = plot_report([r.run_dir for r in results.values()], Path(ROOT) / "report", "step")
    print(f"\nFigures: {', '.join(str(f) for f in figures)}")
    print(f"TensorBoard logs: tensorboard --logdir {ROOT}")


if __name__ == "__main__":
    main(sys.argv[1:])
