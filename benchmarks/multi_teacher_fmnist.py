"""Two teachers of different architectures against each alone, on Fashion-MNIST, over seeds.

    python benchmarks/multi_teacher_fmnist.py                  # 3 seeds
    python benchmarks/multi_teacher_fmnist.py --seeds 0 --epochs 10

The quickstart's setting (recipes/quickstart.py): MobileNetV3-small-050 student, 100 labels per
class, 32 px. Two teachers trained here once on every label (cached in runs/multi_teacher_fmnist):
a ResNet-10-T (timm's default stem) and a 4-block ViT-Ti with 8 px patches, 1 epoch each.
Per seed, three runs of distill.method=multi_teacher with the same student, schedule and
weights: both teachers (the ViT main: its KD on the student's classifier, the CNN's on a head
of its own; both feed a standardised pre-logits feature term), the ViT alone and the CNN alone
(each then main). The two-teacher run trains the student alone beside it (`students.alone`,
no teacher: same batches). Prints test top-1, mean and std over the seeds, and each teacher's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scalekd.cli import run_recipe
from scalekd.recipe import Recipe, apply_overrides
import quickstart_v1  # benchmarks/ is on sys.path
from seed_table import print_seed_table

ROOT = "runs/multi_teacher_fmnist"
VIT = {"img_size": 32, "patch_size": 8, "depth": 4}
TEACHERS = {  # name: (timm model, kwargs, epochs of its own training on every label)
    "vit": ("vit_tiny_patch16_224", VIT, 1),
    "cnn": ("resnet10t", {}, 1),
}
ALONE = {"distill.method": "supervised", "distill.weights": {}}


def student_recipe(epochs: int) -> Recipe:
    """The quickstart's KD student run, with no teacher.* (each run sets its teachers.*)."""
    return apply_overrides(quickstart_v1.QUICKSTART["recipe"](), [
        f"run.dir={ROOT}/{{name}}", f"run.epochs={epochs}", "teacher.name=",
        "teacher.checkpoint=", "teacher.kwargs={}", "teacher.dtype=bf16",
        "teacher.channels_last=false",
        "distill.method=multi_teacher", "distill.weights={}",
        "eval.every_epochs=1000", "eval.teacher=false", "checkpoint.every_epochs=1000"])


def teacher_file(name: str) -> Path:
    return Path(ROOT) / f"teacher_{name}" / "export" / "student.safetensors"


def train_teacher(name: str, base: Recipe, epochs: int) -> float:
    """The teacher trained alone on every label (the quickstart's teacher recipe), once."""
    model, kwargs, _ = TEACHERS[name]
    run_dir = Path(ROOT) / f"teacher_{name}"
    if not (run_dir / "metrics.json").is_file():
        kd = apply_overrides(base, ["distill.method=kd", f"teacher.name={model}",
                                    f"teacher.kwargs={kwargs}", "teacher.dtype=fp32",
                                    "distill.weights={'hard':0.5,'kd':0.5}"])
        recipe = apply_overrides(quickstart_v1.QUICKSTART["teacher_recipe"](kd), [
            f"run.dir={run_dir}", f"run.epochs={epochs}", "student.channels_last=false",
            "data.labels_per_class=0"])  # every label
        run_recipe(recipe, [])
    return json.loads((run_dir / "metrics.json").read_text())["eval/top1"]


def teachers_overrides(names: list[str]) -> list[str]:
    out = []
    for name in names:
        model, kwargs, _ = TEACHERS[name]
        out += [f"teachers.{name}.name={model}", f"teachers.{name}.kwargs={kwargs}",
                f"teachers.{name}.checkpoint={teacher_file(name)}", f"teachers.{name}.dtype=fp32"]
    return out


def run(base: Recipe, label: str, names: list[str], seed: int, extra: list[str]) -> dict:
    run_dir = Path(ROOT) / f"e{base.run.epochs}" / f"seed{seed}" / label
    if not (run_dir / "metrics.json").is_file():
        recipe = apply_overrides(base, [f"run.seed={seed}", f"run.dir={run_dir}",
                                        *teachers_overrides(names), *extra])
        if label == "vit+cnn":
            recipe.students = {"alone": ALONE}
        run_recipe(recipe, [])
    return json.loads((run_dir / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30, help="the student's (quickstart: 30)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of every student run")
    args = parser.parse_args()

    base = student_recipe(args.epochs)
    teacher_top1 = {name: train_teacher(name, base, TEACHERS[name][2]) for name in TEACHERS}
    top1: dict[str, list[float]] = {"alone": [], "vit": [], "cnn": [], "vit+cnn": []}
    for seed in args.seeds:
        for label, names in (("vit+cnn", ["vit", "cnn"]), ("vit", ["vit"]), ("cnn", ["cnn"])):
            metrics = run(base, label, names, seed, args.overrides)
            top1[label].append(metrics["eval/top1"])
            if label == "vit+cnn":
                top1["alone"].append(metrics["alone/eval/top1"])

    print(f"\nFashion-MNIST test top-1, {base.student.name} student, "
          f"{base.data.labels_per_class} labels per class, {args.epochs} epochs, "
          f"seeds {args.seeds}; teachers (every label): "
          + ", ".join(f"{n} {TEACHERS[n][0]} {t:.2f}" for n, t in teacher_top1.items()))
    print_seed_table(top1, "teachers")


if __name__ == "__main__":
    main()
