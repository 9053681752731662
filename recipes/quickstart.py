"""Quickstart on Fashion-MNIST (real data, no download when Debian's dataset-fashion-mnist is
installed): train a ResNet-18 teacher once, then a MobileNetV3 student from 100 labels per
class twice, alone and distilled with vanilla KD, and compare them on the 10,000 test images.

    python recipes/quickstart.py                 # a few minutes on 2 CPU cores
    python recipes/quickstart.py run.seed=1      # overrides apply to both student runs

The teacher is cached in runs/quickstart/teacher and reused; delete that folder to retrain it.
"""

import dataclasses
import sys
from pathlib import Path

from scalekd.cli import run_recipe
from scalekd.recipe import (AugCfg, DataCfg, DistillCfg, OptimCfg, Recipe, RunCfg, StudentCfg,
                            TeacherCfg, apply_overrides)

ROOT = "runs/quickstart"


def recipe() -> Recipe:
    """The distilled student's run; the other two runs are derived from it."""
    return Recipe(
        run=RunCfg(name="student_kd", dir=ROOT + "/{name}", epochs=30, log_every=5),
        data=DataCfg(source="fashion_mnist", train_split="train", val_split="test",
                     input_size=32, batch_size=128, eval_batch_size=500, workers=2,
                     labels_per_class=100),
        aug=AugCfg(scale=(0.5, 1.0), hflip=0.5, interpolation="bilinear", crop_pct=1.0),
        student=StudentCfg(name="mobilenetv3_small_050"),
        teacher=TeacherCfg(name="resnet18", checkpoint=ROOT + "/teacher/export/student.safetensors",
                           dtype="fp32"),
        distill=DistillCfg(method="kd", temperature=4.0, hard_loss="ce",
                           weights={"hard": 0.5, "kd": 0.5}),
        optim=OptimCfg(name="adamw", lr=3e-3, weight_decay=0.05, warmup_epochs=1),
        checkpoint=dataclasses.replace(Recipe().checkpoint, every_epochs=10),
    )


def teacher_recipe(student_run: Recipe) -> Recipe:
    """The teacher trained alone on every label, with the same data settings."""
    r = dataclasses.replace
    return r(student_run,
             run=r(student_run.run, name="teacher", epochs=3),
             data=r(student_run.data, labels_per_class=0),
             student=StudentCfg(name=student_run.teacher.name, kwargs=student_run.teacher.kwargs),
             teacher=TeacherCfg(),
             distill=r(student_run.distill, method="supervised", weights={}),
             optim=r(student_run.optim, lr=2e-3, warmup_epochs=0.2))


def alone_recipe(student_run: Recipe) -> Recipe:
    r = dataclasses.replace
    return r(student_run, run=r(student_run.run, name="student_alone"), teacher=TeacherCfg(),
             distill=r(student_run.distill, method="supervised", weights={}))


def main(argv: list[str]) -> None:
    distilled = apply_overrides(recipe(), argv)
    teacher_file = Path(distilled.teacher.checkpoint)
    if teacher_file.is_file():
        print(f"reusing the teacher in {teacher_file}")
    else:
        run_recipe(teacher_recipe(distilled), [])
    results = {name: run_recipe(r, []) for name, r in
               (("student alone", alone_recipe(distilled)), ("distilled (KD)", distilled))}

    print(f"\nFashion-MNIST test top-1, {distilled.student.name} student, "
          f"{distilled.data.labels_per_class} labels per class, seed {distilled.run.seed}")
    print(f"  {'run':<18}{'top-1':>8}  exported student")
    for name, result in results.items():
        print(f"  {name:<18}{result.metrics['eval/top1']:>8.2f}  {result.export}")
    print(f"\nTensorBoard: tensorboard --logdir {Path(distilled.run.path).parent}")


if __name__ == "__main__":
    main(sys.argv[1:])
