"""Student alone vs vanilla KD vs ScaleKD and its ablations, ViT teacher -> CNN student on
Fashion-MNIST over seeds; and ScaleKD's step time and memory over vanilla KD.

    python benchmarks/scalekd_methods.py                 # 3 seeds
    python benchmarks/scalekd_methods.py --seeds 0

The quickstart's data as benchmarks/quickstart_v1.py has it (100 labels per class, 60 epochs over
them). Student: MobileNetV3-small-050 at 64 px (so its stage-4 map is 2x2, not 1x1). Teacher: a
small ViT (patch 4 on 32 px: an 8x8 grid; 4 blocks of width 128), trained once on all 60,000 labels
and cached. Per seed one run trains every student side by side (`recipe.students`: shared batches,
crops and teacher forward, so the comparison is paired):

  alone     labels only
  kd        vanilla KD (T=4, label and KD terms 0.5/0.5, as the quickstart's KD)
  cap       + CAP projectors, spatial mimicking only   (distill.dfm_beta=1 distill.tpp=false)
  cap_dfm   + the frequency view (DFM)                 (distill.tpp=false)
  scalekd   + teacher parameter perception: all of ScaleKD

Overhead, side by side: the step time each student logged in that same run (`time/step_s`: the
teacher forward plus the student's own forward, backward and update, on the same batches, one
after the other), and per-step training memory of kd and scalekd on one batch: parameters,
gradients and AdamW states of everything trained, plus the activations autograd keeps for the
backward pass, counted exactly with saved-tensor hooks (the teacher's own weights, resident for
both, are left out). Prints both tables.

`--teacher probed`: the same students with the probed teacher of benchmarks/probed_distillation.py
(its ViT encoder pretrained on classes 0-4, probed on classes 5-9 with 100 labels per class;
students on classes 5-9 at 64 px, KD at T=1 as recipes/probed_kd.py): ScaleKD's features and
proxy path from the probe's encoder, KD from its head.

A shorter setup for a busy machine (what docs/scalekd.md's old/new comparison used):

    python benchmarks/scalekd_methods.py --teacher-patch 8 --teacher-epochs 1 --epochs 10 \\
        --root runs/short_vit
    python benchmarks/scalekd_methods.py --students cap cap_dfm ...   # beside scalekd only
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from scalekd.cli import run_probe, run_recipe
from scalekd.engine.logging import read_scalars
from scalekd.models.probed_teacher import PROBE_FILE
from scalekd.tools.probe_teacher import probe_recipe
from scalekd.recipe import Recipe, apply_overrides
from seed_table import print_seed_table  # benchmarks/ is on sys.path
import probed_distillation as probed  # noqa: E402
import quickstart_v1  # noqa: E402
ROOT = "runs/bench_scalekd"
VIT = {"img_size": 32, "patch_size": 4, "embed_dim": 128, "depth": 4, "num_heads": 4}
STUDENTS = {  # beside the recipe's own student, scalekd
    "alone": {"distill.method": "supervised", "distill.weights": {}},
    "kd": {"distill.method": "kd"},
    "cap": {"distill.dfm_beta": 1.0, "distill.tpp": False},
    "cap_dfm": {"distill.tpp": False},
}
ORDER = ["alone", "kd", "cap", "cap_dfm", "scalekd"]


def scalekd_recipe(root: str = ROOT, patch: int = VIT["patch_size"]) -> Recipe:
    return apply_overrides(quickstart_v1.recipe(), [
        f"run.dir={root}/{{name}}", "data.input_size=64", "distill.method=scalekd",
        "teacher.name=vit_tiny_patch16_224", f"teacher.kwargs={dict(VIT, patch_size=patch)}",
        "teacher.input_size=32",
        f"teacher.checkpoint={root}/teacher/export/student.safetensors",
    ])


def teacher_recipe(distilled: Recipe, epochs: int = 4) -> Recipe:
    """The ViT trained alone on every label at its own 32 px, 4 epochs."""
    return apply_overrides(quickstart_v1.teacher_recipe(distilled), [
        "data.input_size=32", f"run.epochs={epochs}", "optim.lr=1e-3",
        "optim.warmup_epochs=0.3"])


def probed_scalekd_recipe(root: str) -> Recipe:
    """benchmarks/probed_distillation.py's KD run (100 labels per class of classes 5-9) with
    ScaleKD, the students at 64 px, the encoder and its probe in `root`."""
    return apply_overrides(probed.distill_recipe(100), [
        f"run.dir={root}/{{name}}", "data.input_size=64", "distill.method=scalekd",
        "teacher.input_size=32", f"teacher.checkpoint={root}/encoder/export/student.safetensors",
        f"teacher.probe={root}/probe",
    ])


def prepare_teacher(kind: str, root: str, epochs: int, patch: int) -> Recipe:
    """The distillation recipe, its teacher trained (and probed) first unless cached."""
    if kind == "vit":
        base = scalekd_recipe(root, patch)
        if not Path(base.teacher.checkpoint).is_file():
            run_recipe(teacher_recipe(base, epochs), [])
        return base
    base = probed_scalekd_recipe(root)
    if not Path(base.teacher.checkpoint).is_file():
        run_recipe(apply_overrides(probed.encoder_recipe(base), [
            f"run.epochs={epochs}", "data.input_size=32"]), [])  # the encoder's own 32 px
    if not (Path(base.teacher.probe) / PROBE_FILE).is_file():
        run_probe(probe_recipe(base), [])  # on the pixels the distillation feeds the teacher
    return base


def step_memory(recipe: Recipe, teacher, teacher_shapes: dict, images: torch.Tensor,
                targets: torch.Tensor) -> dict:
    """Bytes of one training step of `recipe`'s student: trained state and saved activations."""
    from scalekd.engine.students import build_student

    model, *_ = build_student(recipe, 10, 1, teacher_shapes)
    model.train()
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    weights = {p.data_ptr() for m in (model, teacher) for p in m.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in weights:  # weights saved by an op are no extra memory
            seen[t.data_ptr()] = max(seen.get(t.data_ptr(), 0), t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(images, targets, teacher(images))
    return {"state": 4 * trained, "activations": sum(seen.values())}  # param, grad, 2 AdamW


def memory_table(recipe: Recipe) -> dict[str, dict]:
    from scalekd.models import create_teacher, data_config

    norm = data_config(recipe.student.name)
    teacher = create_teacher(recipe.teacher, 10, norm["mean"], norm["std"],
                             recipe.data.input_size)
    shapes = teacher.enable_features(True, torch.device("cpu"))
    torch.manual_seed(0)
    images = torch.randn(recipe.data.batch_size, 3, recipe.data.input_size,
                         recipe.data.input_size)
    targets = torch.randint(0, 10, (recipe.data.batch_size,))
    kd = apply_overrides(recipe, ["distill.method=kd"])
    return {"kd": step_memory(kd, teacher, shapes, images, targets),
            "scalekd": step_memory(recipe, teacher, shapes, images, targets)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher", choices=["vit", "probed"], default="vit")
    parser.add_argument("--teacher-epochs", type=int, default=0,
                        help="the teacher's (or encoder's) epochs; 0: 4 (vit) or 3 (probed)")
    parser.add_argument("--teacher-patch", type=int, default=VIT["patch_size"],
                        help="the ViT teacher's patch (--teacher vit): 4, an 8x8 grid; 8, 4x4")
    parser.add_argument("--epochs", type=int, default=60, help="the students' epochs")
    parser.add_argument("--students", nargs="*", choices=ORDER[:-1], default=ORDER[:-1],
                        help="the students beside scalekd (the recipe's own)")
    parser.add_argument("--root", default="", help="the runs' folder (default: runs/bench_"
                        "scalekd, or runs/bench_probed_scalekd with --teacher probed)")
    args = parser.parse_args()

    root = args.root or (ROOT if args.teacher == "vit" else "runs/bench_probed_scalekd")
    teacher_epochs = args.teacher_epochs or (4 if args.teacher == "vit" else 3)
    base = prepare_teacher(args.teacher, root, teacher_epochs, args.teacher_patch)
    names = [n for n in ORDER if n in args.students or n == "scalekd"]
    top1: dict[str, list[float]] = {name: [] for name in names}
    step_ratio: list[float] = []
    for seed in args.seeds:
        recipe = apply_overrides(base, [f"run.seed={seed}", f"run.name=seed{seed}",
                                        f"run.epochs={args.epochs}", "eval.every_epochs=1000"])
        recipe.students = {n: STUDENTS[n] for n in args.students}
        result = run_recipe(recipe, [])
        for name in names:
            top1[name].append(result.metrics["eval/top1" if name == "scalekd"
                                             else f"{name}/eval/top1"])
        if "kd" in names:
            # per logging window, skipping the first (start-up); same batches for both students
            logged = read_scalars(result.run_dir)
            kd_s, sk_s = ([v for _, v in sorted(logged[t].items())][1:]
                          for t in ("kd/time/step_s", "time/step_s"))
            step_ratio.append(statistics.median(s / k for s, k in zip(sk_s, kd_s)))

    vit = base.teacher.kwargs
    print(f"\nFashion-MNIST test top-1, {args.teacher} teacher (ViT {vit}, {teacher_epochs} "
          f"epochs) -> {base.student.name} at {base.data.input_size} px, "
          f"{base.data.labels_per_class} labels per class, {args.epochs} epochs, "
          f"seeds {args.seeds}")
    print_seed_table(top1)
    if not step_ratio or args.teacher != "vit":
        return

    memory = memory_table(base)
    print(f"\nScaleKD over vanilla KD, batch {base.data.batch_size}:")
    print("  step time (teacher forward + student step), median ratio per seed: "
          + " ".join(f"{r:.2f}x" for r in step_ratio))
    print(f"  {'memory (MB)':<26}{'kd':>8}{'scalekd':>9}{'ratio':>7}")
    for part in ("state", "activations"):
        kd, sk = memory["kd"][part] / 2**20, memory["scalekd"][part] / 2**20
        print(f"  {part:<26}{kd:>8.1f}{sk:>9.1f}{sk / kd:>6.2f}x")
    kd_total, sk_total = (sum(memory[m].values()) / 2**20 for m in ("kd", "scalekd"))
    print(f"  {'total':<26}{kd_total:>8.1f}{sk_total:>9.1f}{sk_total / kd_total:>6.2f}x")


if __name__ == "__main__":
    main()
