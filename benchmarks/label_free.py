"""Label-free feature distillation on Fashion-MNIST (issue 21, item 4a): a small CNN distilled
from a ViT encoder's features without a single label, then linear-probed, over seeds.

    OMP_NUM_THREADS=1 python benchmarks/label_free.py                      # 3 seeds
    OMP_NUM_THREADS=1 python benchmarks/label_free.py --seeds 0 --distill-epochs 1

The encoder is benchmarks/probed_distillation.py's (a ViT, patch 8 on 32 px, 4 blocks of width
128, trained supervised on classes 0-4 for 3 epochs; trained once and cached in
runs/bench_probed/encoder, shared with that benchmark). The downstream task is classes 5-9
with 100 labels per class. Per seed:
- distilled: a ResNet-18 at quarter width (0.7M parameters) at 64 px, trained with
  `distill.method=features` (class token + patch tokens, linear heads) on all 30,000 training
  images of classes 5-9 with `data.labels=false`, then its export linear-probed
  (`scalekd probe`, pooled features) with the 100 labels per class;
- random init: the same CNN untouched, linear-probed the same way (what distillation adds);
- scratch: the same CNN trained supervised on the 500 labelled images alone, 60 epochs;
- teacher: the encoder itself linear-probed (DINOv2's linear evaluation input: 4 class tokens +
  the patch mean).
Every probe picks its lr on 10% held-out labelled images, refits on all 500 and is evaluated on
the 5,000 test images of classes 5-9. Prints the table (mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

from probed_distillation import ENCODER, VIT, distill_recipe, encoder_recipe
from scalekd.cli import run_probe, run_recipe
from scalekd.recipe import Recipe, apply_overrides
from seed_table import print_seed_table  # benchmarks/ is on sys.path

ROOT = "runs/bench_label_free"
CNN = "resnet18"
CNN_KWARGS = {"channels": (16, 32, 64, 128), "stem_width": 16}
SIZE = 64  # a 2x2 final map for the patch term (a 1x1 map at 32 px would give it one vector)
DATA = ["data.source=fashion_mnist", "data.train_split=train", "data.val_split=test",
        "data.classes=(5,6,7,8,9)", "data.workers=2", "data.eval_batch_size=500"]


def student_recipe(base: Recipe, name: str, seed: int, *extra: str) -> Recipe:
    """The CNN's run on classes 5-9 at 64 px: probed_distillation's settings otherwise."""
    return apply_overrides(base, [
        f"run.dir={ROOT}/{{name}}", f"run.name={name}", f"run.seed={seed}", *DATA,
        f"data.input_size={SIZE}", f"student.name={CNN}", f"student.kwargs={CNN_KWARGS}",
        "aug.mixup=0", "aug.cutmix=0", *extra])


def distilled(base: Recipe, seed: int, epochs: int) -> Recipe:
    """No labels: every training image of classes 5-9, the encoder's features as targets."""
    return student_recipe(base, f"distilled_seed{seed}", seed, "distill.method=features",
                          "distill.weights={}", "teacher.probe=", "data.labels=false",
                          "data.labels_per_class=0", "data.batch_size=100",
                          f"run.epochs={epochs}", "optim.warmup_epochs=0.2")


def scratch(base: Recipe, seed: int) -> Recipe:
    return student_recipe(base, f"scratch_seed{seed}", seed, "distill.method=supervised",
                          "distill.weights={}", "teacher.name=", "teacher.checkpoint=",
                          "teacher.probe=", "data.labels_per_class=100")


def linear_probe(name: str, kwargs: dict, weights: str, size: int, seed: int,
                 folder: str) -> float:
    """`scalekd probe` of the model in `weights` with a linear head on 100 labels per class;
    its top-1 on the test images of classes 5-9."""
    recipe = apply_overrides(Recipe(), [
        f"teacher.name={name}", f"teacher.kwargs={kwargs}", f"teacher.checkpoint={weights}",
        f"student.name={name}", f"student.kwargs={kwargs}", *DATA, f"data.input_size={size}",
        "data.labels_per_class=100", "aug.crop_pct=1.0", "aug.interpolation=bilinear",
        "probe.head=linear", f"run.seed={seed}", f"run.dir={folder}"])
    return run_probe(recipe, []).eval_top1


def random_init(seed: int) -> str:
    """The CNN's initial weights for `seed`, headless, as a file the probe reads."""
    path = Path(ROOT) / f"random_seed{seed}.safetensors"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        model = timm.create_model(CNN, num_classes=0, **CNN_KWARGS)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--distill-epochs", type=int, default=2,
                        help="epochs over the 30,000 unlabelled images")
    args = parser.parse_args()
    start = time.perf_counter()

    base = distill_recipe(100)
    if not Path(ENCODER).is_file():
        run_recipe(encoder_recipe(base), [])

    top1: dict[str, list[float]] = {"teacher": [], "scratch": [], "random": [],
                                    "distilled": []}
    for seed in args.seeds:
        top1["teacher"].append(linear_probe("vit_tiny_patch16_224", VIT, ENCODER, 32, seed,
                                            f"{ROOT}/probe_teacher_seed{seed}"))
        top1["scratch"].append(run_recipe(scratch(base, seed), []).metrics["eval/top1"])
        top1["random"].append(linear_probe(CNN, CNN_KWARGS, random_init(seed), SIZE, seed,
                                           f"{ROOT}/probe_random_seed{seed}"))
        export = run_recipe(distilled(base, seed, args.distill_epochs), []).export
        top1["distilled"].append(linear_probe(CNN, CNN_KWARGS, str(export), SIZE, seed,
                                              f"{ROOT}/probe_distilled_seed{seed}"))

    print(f"\nFashion-MNIST classes 5-9, 100 labels per class, test top-1 (5,000 images), seeds "
          f"{args.seeds}; distillation {args.distill_epochs} epochs over 30,000 unlabelled "
          f"images; {time.perf_counter() - start:.0f} s")
    print(f"  teacher: ViT {VIT} supervised on classes 0-4, linear probe (4 class tokens + "
          "patch mean)")
    print(f"  scratch: {CNN} {CNN_KWARGS} at {SIZE} px on the 500 labels, 60 epochs; random / "
          "distilled: the same CNN at init / distilled without labels, linear probe (pooled)")
    print_seed_table(top1, "model")


if __name__ == "__main__":
    main()
