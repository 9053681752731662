"""Task-specific distillation from a probed teacher on Fashion-MNIST (recipes/probed_kd.py
without image mixing): student alone vs KD from the probed teacher, over seeds.

    OMP_NUM_THREADS=1 python benchmarks/probed_distillation.py           # 3 seeds
    OMP_NUM_THREADS=1 python benchmarks/probed_distillation.py --seeds 0 --labels 10

(One thread: on a machine whose cores other jobs share, two threads stall on each other at every
small operator; MobileNetV3's training step took 40x longer that way.)

The pretrained encoder stands in for DINOv2: a small ViT (patch 8 on 32 px, 4 blocks of width
128) trained supervised on classes 0-4 (t-shirt ... coat) with all their labels for 3 epochs,
once, cached. The downstream task is the other classes, 5-9 (sandal ... ankle boot), with
`--labels` labels per class: the encoder is probed on them (MLP head on its last 4 class tokens
+ patch mean, lr grid on 10% held out, then refit; once, cached), then per seed one run trains
two MobileNetV3-small-050 students side by side on the same batches (`recipe.students`):
`alone` (labels only) and `kd` (labels + KD from the probed teacher, alpha 0.5, T 1). Test top-1
on the 5,000 test images of classes 5-9. Prints the table.
"""

from __future__ import annotations

import argparse
import json
import runpy
import time
from pathlib import Path

from scalekd.cli import run_probe, run_recipe
from scalekd.models.probed_teacher import PROBE_FILE
from scalekd.recipe import Recipe, apply_overrides
from seed_table import print_seed_table  # benchmarks/ is on sys.path

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
PROBED_KD = runpy.run_path(str(RECIPES / "probed_kd.py"))
ROOT = "runs/bench_probed"
VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 128, "depth": 4, "num_heads": 4}
ENCODER = f"{ROOT}/encoder/export/student.safetensors"


def distill_recipe(labels: int) -> Recipe:
    """The KD student's run at 32 px, the quickstart's student settings; 60 epochs."""
    return apply_overrides(PROBED_KD["recipe"](), [
        f"run.dir={ROOT}/{{name}}", "run.epochs=60", "data.source=fashion_mnist",
        "data.train_split=train", "data.val_split=test", "data.input_size=32",
        f"data.batch_size={min(100, 5 * labels // 2)}",  # 2+ steps an epoch with few labels
        "data.eval_batch_size=500", "data.workers=2",
        f"data.labels_per_class={labels}", "data.classes=(5,6,7,8,9)",
        "aug.auto_augment=", "aug.scale=(0.8,1.0)", "aug.interpolation=bilinear",
        "aug.crop_pct=1.0", "student.name=mobilenetv3_small_050",
        "teacher.name=vit_tiny_patch16_224", f"teacher.kwargs={VIT}",
        f"teacher.checkpoint={ENCODER}", "teacher.pretrained=false", "teacher.dtype=fp32",
        f"teacher.probe={ROOT}/probe_{labels}", "optim.name=adamw", "optim.lr=3e-3",
        "optim.weight_decay=0.05", "optim.warmup_epochs=2", "optim.momentum=0.9",
        "eval.every_epochs=1000", "checkpoint.every_epochs=1000",
    ])


def encoder_recipe(distilled: Recipe) -> Recipe:
    """The encoder's pretraining: supervised on classes 0-4, every label (30,000 images), 3
    epochs (about 4 minutes on one thread)."""
    return apply_overrides(distilled, [
        "run.name=encoder", "run.epochs=3", "data.labels_per_class=0", "data.batch_size=100",
        "data.classes=(0,1,2,3,4)", "student.name=vit_tiny_patch16_224",
        f"student.kwargs={VIT}", "teacher.name=", "teacher.checkpoint=", "teacher.probe=",
        "distill.method=supervised", "distill.weights={}", "optim.lr=2e-3",
        "optim.warmup_epochs=0.1", "eval.every_epochs=1", "checkpoint.every_epochs=1",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--labels", type=int, default=100, help="labels per class (5-9)")
    args = parser.parse_args()
    start = time.perf_counter()

    base = distill_recipe(args.labels)
    if not Path(ENCODER).is_file():
        run_recipe(encoder_recipe(base), [])
    encoder_top1 = json.loads((Path(ROOT) / "encoder" / "metrics.json").read_text())["eval/top1"]
    if not (Path(base.teacher.probe) / PROBE_FILE).is_file():
        run_probe(PROBED_KD["probe_recipe"](base), [])
    probed = json.loads((Path(base.teacher.probe) / PROBE_FILE).read_text())

    top1: dict[str, list[float]] = {"alone": [], "kd": []}
    for seed in args.seeds:
        recipe = apply_overrides(base, [f"run.seed={seed}",
                                        f"run.name=labels{args.labels}_seed{seed}"])
        recipe.students = {"alone": {"distill.method": "supervised", "distill.weights": {}}}
        result = run_recipe(recipe, [])
        top1["kd"].append(result.metrics["eval/top1"])
        top1["alone"].append(result.metrics["alone/eval/top1"])

    print(f"\nFashion-MNIST classes 5-9, {args.labels} labels per class, test top-1 "
          f"(5,000 images), seeds {args.seeds}; {time.perf_counter() - start:.0f} s")
    print(f"  encoder: ViT {VIT} supervised on classes 0-4: {encoder_top1:.2f} on their test "
          "images")
    print(f"  teacher: that encoder probed on classes 5-9 ({probed['features']['kind']}, "
          f"{probed['head']['kind']} head, lr {probed['lr']:.0e}): {probed['eval_top1']:.2f}")
    print_seed_table(top1)


if __name__ == "__main__":
    main()
