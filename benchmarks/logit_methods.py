"""Student alone vs each logit-distillation method on the quickstart's data, mean of seeds.

    python benchmarks/logit_methods.py                      # 3 seeds, ~15 min on 2 CPU cores
    python benchmarks/logit_methods.py --seeds 0 1 --unlabelled

The quickstart's setting (recipes/quickstart.py): ResNet-18 teacher (trained once and cached),
MobileNetV3-small-050 student, 100 labels per class of Fashion-MNIST, 60 epochs over them (or,
with --unlabelled, 2 epochs over all 60,000 images, the rest unlabelled). Each method runs with
its own usual temperature; everything else is shared. Prints a table of test top-1.
"""

from __future__ import annotations

import argparse
import runpy
import statistics
from pathlib import Path

from scalekd.cli import run_recipe
from scalekd.recipe import apply_overrides

QUICKSTART = runpy.run_path(str(Path(__file__).resolve().parents[1] / "recipes" / "quickstart.py"))

# method -> overrides of the quickstart's KD run (temperatures as each method's authors use
# them on small data sets: KD and DKD soften at T=4, DIST and binary KD at 1)
METHODS = {
    "alone": None,
    "kd": ["distill.method=kd", "distill.temperature=4"],
    "dkd": ["distill.method=dkd", "distill.temperature=4", "distill.weights={}"],
    "dist": ["distill.method=dist", "distill.temperature=1", "distill.weights={}"],
    "bkd": ["distill.method=bkd", "distill.temperature=1", "distill.weights={}"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--unlabelled", action="store_true",
                        help="add the other training images as an unlabelled transfer set")
    parser.add_argument("--dir", default="runs/bench_logit_methods")
    args = parser.parse_args()

    kd = QUICKSTART["recipe"]()
    if not Path(kd.teacher.checkpoint).is_file():
        run_recipe(QUICKSTART["teacher_recipe"](kd), [])
    top1: dict[str, list[float]] = {name: [] for name in METHODS}
    for seed in args.seeds:
        for name, overrides in METHODS.items():
            base = apply_overrides(kd, [f"run.seed={seed}"])
            if args.unlabelled and overrides is not None:
                base = QUICKSTART["transfer_recipe"](base)
            recipe = (QUICKSTART["alone_recipe"](base) if overrides is None
                      else apply_overrides(base, overrides))
            recipe = apply_overrides(recipe, [f"run.dir={args.dir}/{name}_seed{seed}",
                                              "eval.every_epochs=1000"])
            top1[name].append(run_recipe(recipe, []).metrics["eval/top1"])

    setting = "100 labels/class" + (" + 59,000 unlabelled" if args.unlabelled else "")
    print(f"\nFashion-MNIST test top-1, {kd.teacher.name} -> {kd.student.name}, {setting}, "
          f"seeds {args.seeds}")
    print(f"  {'method':<8}{'mean':>8}{'std':>7}  per seed")
    for name, values in top1.items():
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"  {name:<8}{statistics.mean(values):>8.2f}{std:>7.2f}  "
              + " ".join(f"{v:.2f}" for v in values))


if __name__ == "__main__":
    main()
