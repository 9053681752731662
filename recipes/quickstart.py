"""Quickstart on Fashion-MNIST (real data, no download when Debian's dataset-fashion-mnist is
installed). Trains a ResNet-18 teacher on every label once, then a MobileNetV3 student that may
see only 100 labels per class, three ways:

  alone         the 1,000 labelled images, no teacher
  KD            the same images, vanilla KD from the teacher
  KD+transfer   the same labels, plus the teacher's soft labels on the other 59,000 training
                images, whose own labels stay unused (distillation's classic transfer set)

and prints test top-1 for each. A few minutes on 2 CPU cores.

    python recipes/quickstart.py                 # overrides apply to the three student runs:
    python recipes/quickstart.py run.seed=1 data.labels_per_class=50

The teacher is cached in runs/quickstart/teacher and reused; delete that folder to retrain it.
"""

import dataclasses
import sys
from pathlib import Path

from scalekd.cli import recipe_parser, run_recipe
from scalekd.diagnostics.report import plot_report
from scalekd.recipe import (AugCfg, CheckpointCfg, DataCfg, DistillCfg, EvalCfg, OptimCfg,
                            Recipe, RunCfg, StudentCfg, TeacherCfg, apply_overrides)

ROOT = "runs/quickstart"
replace = dataclasses.replace


def recipe() -> Recipe:
    """The KD student's run; the other runs are derived from it."""
    return Recipe(
        run=RunCfg(name="student_kd", dir=ROOT + "/{name}", epochs=60, log_every=5),
        data=DataCfg(source="fashion_mnist", train_split="train", val_split="test",
                     input_size=32, batch_size=128, eval_batch_size=500, workers=2,
                     labels_per_class=100),
        aug=AugCfg(scale=(0.8, 1.0), hflip=0.5, interpolation="bilinear", crop_pct=1.0),
        student=StudentCfg(name="mobilenetv3_small_050"),
        teacher=TeacherCfg(name="resnet18", checkpoint=ROOT + "/teacher/export/student.safetensors",
                           dtype="fp32"),
        distill=DistillCfg(method="kd", temperature=4.0, hard_loss="ce",
                           weights={"hard": 0.5, "kd": 0.5}),
        optim=OptimCfg(name="adamw", lr=3e-3, weight_decay=0.05, warmup_epochs=2),
        checkpoint=CheckpointCfg(every_epochs=20),
        eval=EvalCfg(every_epochs=20),
    )


def transfer_recipe(kd: Recipe) -> Recipe:
    """Two passes over all 60,000 images."""
    return replace(kd, run=replace(kd.run, name="student_kd_transfer", epochs=2),
                   data=replace(kd.data, unlabelled=True),
                   optim=replace(kd.optim, warmup_epochs=0.05),
                   checkpoint=replace(kd.checkpoint, every_epochs=1),
                   eval=replace(kd.eval, every_epochs=1))


def alone_recipe(kd: Recipe) -> Recipe:
    return replace(kd, run=replace(kd.run, name="student_alone"), teacher=TeacherCfg(),
                   distill=replace(kd.distill, method="supervised", weights={}))


def teacher_recipe(kd: Recipe) -> Recipe:
    """The teacher trained alone on every label, with the same data settings."""
    return replace(alone_recipe(kd),
                   run=replace(kd.run, name="teacher", epochs=2),
                   data=replace(kd.data, labels_per_class=0),
                   student=StudentCfg(name=kd.teacher.name, kwargs=kd.teacher.kwargs),
                   optim=replace(kd.optim, lr=2e-3, warmup_epochs=0.2),
                   checkpoint=replace(kd.checkpoint, every_epochs=1),
                   eval=replace(kd.eval, every_epochs=1))


def main(argv: list[str]) -> None:
    kd = apply_overrides(recipe(), recipe_parser(__doc__).parse_intermixed_args(argv).overrides)
    teacher_file = Path(kd.teacher.checkpoint)
    if teacher_file.is_file():
        print(f"reusing the teacher in {teacher_file}")
    else:
        run_recipe(teacher_recipe(kd), [])
    runs = {"alone": alone_recipe(kd), "KD": kd, "KD+transfer": transfer_recipe(kd)}
    results = {name: run_recipe(r, []) for name, r in runs.items()}

    print(f"\nFashion-MNIST test top-1: {kd.teacher.name} teacher -> {kd.student.name} student, "
          f"{kd.data.labels_per_class} labels per class, seed {kd.run.seed}")
    print(f"  {'run':<13}{'steps':>6}{'top-1':>8}  exported student")
    for name, result in results.items():
        print(f"  {name:<13}{result.steps:>6}{result.metrics['eval/top1']:>8.2f}  {result.export}")
    # over optimiser steps: the transfer run's epochs are 60 times larger
    figures = plot_report([r.run_dir for r in results.values()], Path(ROOT) / "report", "step")
    print(f"\nFigures: {', '.join(str(f) for f in figures)}")
    print(f"TensorBoard logs: tensorboard --logdir {ROOT}")


if __name__ == "__main__":
    main(sys.argv[1:])
