"""What the teacher costs a KD step, and what the trainer costs over a hand-written loop.

    python benchmarks/kd_step.py                       # BEiTv2-L and ViT-g/14 -> ResNet-50
    python benchmarks/kd_step.py --batch 2 --steps 3 --pairs beitv2-l

For each teacher -> ResNet-50 pair, images/s of whole training steps (data, teacher, student
forward, backward, update) at 224 px on this machine, one row after another in one run:

  no teacher          the trainer, the student alone (distill.method=supervised)
  online teacher      the trainer, vanilla KD with the teacher run on every batch
  cached teacher      the trainer, vanilla KD from the teacher's top-k logits cached per crop
                      (`scalekd cache-teacher`, one draw, top-5; written before the timing)
  hand-written loop   the same models, data and KD loss in a minimal loop: the trainer's
                      overhead is its online row against this one

Random weights at the real sizes (speed does not depend on them); the teachers in fp32 (bf16
is several times slower on CPUs without bf16 units: benchmarks/teacher_options.py). The first
`--warmup` steps of each row are not timed. The machine's load is printed with the table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

from safetensors.torch import load_file, save_file

from scalekd.data import SOURCES, build_train_data
from scalekd.engine.logging import read_scalars
from scalekd.engine.trainer import train
from scalekd.models import data_config
from scalekd.recipe import Recipe, apply_overrides
from scalekd.teacher_cache.writer import cache_teacher

PAIRS = {  # label: (timm teacher, its kwargs)
    "beitv2-l": ("beitv2_large_patch16_224", {}),
    "vit-g/14": ("vit_giant_patch14_dinov2", {"img_size": 224}),
}
STUDENT = "resnet50"
NUM_CLASSES = 10  # the synthetic source's
TOP_K = 5  # logits kept per crop in the cached row


def random_weights(teacher: str, kwargs: dict, folder: Path) -> Path:
    """A weights file of the teacher at random init (no download here; speed is the same)."""
    path = folder / f"{teacher}.safetensors"
    torch.manual_seed(0)
    model = timm.create_model(teacher, num_classes=NUM_CLASSES, **kwargs)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def recipe(run_dir: Path, teacher: str, weights: Path, kwargs: dict, batch: int, steps: int,
           warmup: int, *extra: str) -> Recipe:
    r = apply_overrides(Recipe(), [
        f"run.dir={run_dir}", f"run.max_steps={warmup + steps}", f"run.log_every={warmup}",
        "data.source=synthetic", f"data.num_samples={batch * (warmup + steps)}",
        "data.input_size=224", f"data.batch_size={batch}", "data.workers=1",
        f"student.name={STUDENT}", f"teacher.name={teacher}", f"teacher.checkpoint={weights}", "teacher.dtype=fp32",
        "eval.teacher=false", "optim.name=sgd", "optim.lr=0.01", "optim.warmup_epochs=0",
        "distill.method=kd", "distill.hard_loss=ce", *extra])
    r.teacher.kwargs = dict(kwargs)
    return r


def trainer_images_per_s(r: Recipe, steps: int, warmup: int) -> float:
    """Wall-clock images/s of the trainer's steps after the warm-up (its TensorBoard window
    from step `warmup` to the last)."""
    train(r)
    return read_scalars(r.run.path)["throughput/images_per_s"][warmup + steps]


def hand_written_images_per_s(r: Recipe, steps: int, warmup: int) -> float:
    """The same KD step written out: the trainer's data, plain timm models, no accelerate."""
    norm = data_config(STUDENT)
    data = build_train_data(r, SOURCES["synthetic"].load(r.data, "train"), norm["mean"],
                            norm["std"], 0, 1)
    torch.manual_seed(0)
    teacher = timm.create_model(r.teacher.name, num_classes=data.num_classes,
                                **r.teacher.kwargs).eval().requires_grad_(False)
    teacher.load_state_dict(load_file(r.teacher.checkpoint))
    student = timm.create_model(STUDENT, num_classes=data.num_classes)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    start = None
    for i, (images, targets) in enumerate(data.epoch(0)):
        if i == warmup:
            start = time.perf_counter()
        with torch.no_grad():
            soft = F.softmax(teacher(images), dim=-1)
        logits = student(images)
        kd = F.kl_div(F.log_softmax(logits, dim=-1), soft, reduction="batchmean")
        loss = 0.5 * F.cross_entropy(logits, targets) + 0.5 * kd
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * r.data.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="scalekd_kd_step_") as tmp:
        for pair in args.pairs:
            teacher, kwargs = PAIRS[pair]
            weights = random_weights(teacher, kwargs, Path(tmp))
            base = (teacher, weights, kwargs, args.batch, args.steps, args.warmup)
            rows = results[pair] = {}
            rows["no teacher"] = trainer_images_per_s(
                recipe(Path(tmp) / pair / "alone", *base, "distill.method=supervised",
                       "teacher.name=", "teacher.checkpoint="), args.steps, args.warmup)
            rows["online teacher"] = trainer_images_per_s(
                recipe(Path(tmp) / pair / "online", *base), args.steps, args.warmup)
            cached = recipe(Path(tmp) / pair / "cached", *base)
            cache = Path(tmp) / pair / "cache"
            cache_teacher(cached, cache, draws=1, k=TOP_K, batch_size=args.batch)
            rows["cached teacher"] = trainer_images_per_s(
                apply_overrides(cached, ["teacher.mode=cached", f"teacher.cache={cache}"]),
                args.steps, args.warmup)
            rows["hand-written loop"] = hand_written_images_per_s(
                recipe(Path(tmp) / pair / "hand", *base), args.steps, args.warmup)
            for name, value in rows.items():
                print(f"  {pair:<10} {name:<18} {value:7.2f} img/s", flush=True)

    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\nimages/s of KD steps -> {STUDENT} at 224 px, batch {args.batch}, "
          f"{args.steps} timed steps per row; load average {load} on {os.cpu_count()} cores")
    print(f"{'':<20}" + "".join(f"{pair:>22}" for pair in results))
    for name in next(iter(results.values())):
        cells = []
        for rows in results.values():
            cells.append(f"{rows[name]:6.2f} ({rows[name] / rows['online teacher']:4.2f}x)")
        print(f"{name:<20}" + "".join(f"{c:>22}" for c in cells))
    for pair, rows in results.items():
        overhead = rows["hand-written loop"] / rows["online teacher"] - 1
        print(f"trainer overhead, {pair}: {100 * overhead:+.1f}% step time over the "
              "hand-written loop")


if __name__ == "__main__":
    main()
