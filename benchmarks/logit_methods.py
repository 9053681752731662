"""Student alone vs each logit-distillation method on the quickstart's data, over seeds.

    python benchmarks/logit_methods.py                 # 3 seeds, ~15 min on 2 CPU cores
    python benchmarks/logit_methods.py --seeds 0 1

The quickstart's setting before issue 20 (benchmarks/quickstart_v1.py): ResNet-18 teacher
(trained once and cached),
MobileNetV3-small-050 student, 100 labels per class of Fashion-MNIST, 60 epochs over them. Per
seed, one run trains every method's student side by side (`recipe.students`): they share each
batch, crop and teacher forward, so the comparison between methods is paired. Each method runs
at its authors' usual temperature. Prints a table of test top-1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scalekd.cli import run_recipe
from scalekd.recipe import apply_overrides
import quickstart_v1  # benchmarks/ is on sys.path
from seed_table import print_seed_table

# the students beside the quickstart's KD student (T=4): KD and DKD soften at T=4 on small data
# sets, DIST and binary KD work at 1
STUDENTS = {
    "dkd": {"distill.method": "dkd", "distill.weights": {}},
    "dist": {"distill.method": "dist", "distill.temperature": 1.0, "distill.weights": {}},
    "bkd": {"distill.method": "bkd", "distill.temperature": 1.0, "distill.weights": {}},
    "alone": {"distill.method": "supervised", "distill.weights": {}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dir", default="runs/bench_logit_methods")
    args = parser.parse_args()

    kd = quickstart_v1.recipe()
    if not Path(kd.teacher.checkpoint).is_file():
        run_recipe(quickstart_v1.teacher_recipe(kd), [])
    top1: dict[str, list[float]] = {"alone": [], "kd": [], "dkd": [], "dist": [], "bkd": []}
    for seed in args.seeds:
        recipe = apply_overrides(kd, [f"run.seed={seed}", f"run.dir={args.dir}/seed{seed}",
                                      "eval.every_epochs=1000"])
        recipe.students = STUDENTS
        metrics = run_recipe(recipe, []).metrics
        for name in top1:
            top1[name].append(metrics["eval/top1" if name == "kd" else f"{name}/eval/top1"])

    print(f"\nFashion-MNIST test top-1, {kd.teacher.name} -> {kd.student.name}, "
          f"{kd.data.labels_per_class} labels per class, seeds {args.seeds}")
    print_seed_table(top1, "method")


if __name__ == "__main__":
    main()
