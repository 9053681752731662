"""Teacher forward images/s under each speed option (`teacher.attention`, `teacher.dtype`,
`teacher.channels_last`, `teacher.compile`), side by side in one run, on this machine.

    python benchmarks/teacher_options.py                 # ViT-S/16 and ResNet-50 at 224 px
    python benchmarks/teacher_options.py --batch 16 --rounds 5

Random weights (speed does not depend on them). Each round times every variant once, one after
another, so that load changes hit them all alike; the table gives the median over rounds and the
ratio to each model's baseline (its first row). Compiled variants are warmed up (compiled) first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import timm
import torch

from scalekd.models.teacher import FrozenTeacher

VARIANTS = {  # model: [(label, FrozenTeacher options)], the first is the baseline
    "vit_small_patch16_224": [
        ("eager attention, fp32", {"attention": "eager"}),
        ("sdpa, fp32", {"attention": "sdpa"}),
        ("sdpa, bf16", {"attention": "sdpa", "dtype": torch.bfloat16}),
    ],
    "resnet50": [
        ("fp32", {}),
        ("channels_last, fp32", {"channels_last": True}),
        ("compile, fp32", {"compile": True}),
        ("channels_last, bf16", {"channels_last": True, "dtype": torch.bfloat16}),
    ],
}


def teacher(name: str, options: dict) -> FrozenTeacher:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=1000)
    cfg = model.pretrained_cfg
    return FrozenTeacher(model, cfg["mean"], cfg["std"], cfg["mean"], cfg["std"], 224, **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    images = torch.randn(args.batch, 3, 224, 224)
    built = {(name, label): teacher(name, options)
             for name, variants in VARIANTS.items() for label, options in variants}
    for t in built.values():
        t(images)  # warm-up; compiles the compiled ones
    seconds: dict[tuple, list[float]] = {key: [] for key in built}
    for _ in range(args.rounds):
        for key, t in built.items():
            start = time.perf_counter()
            t(images)
            seconds[key].append(time.perf_counter() - start)

    print(f"\nteacher forward, batch {args.batch} at 224 px, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} rounds, load average {os.getloadavg()[0]:.2f}")
    print(f"  {'model':<24}{'variant':<24}{'img/s':>8}{'ratio':>8}")
    for name, variants in VARIANTS.items():
        base = statistics.median(seconds[(name, variants[0][0])])
        for label, _ in variants:
            s = statistics.median(seconds[(name, label)])
            print(f"  {name:<24}{label:<24}{args.batch / s:>8.1f}{base / s:>7.2f}x")


if __name__ == "__main__":
    main()
