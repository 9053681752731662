"""What the teacher costs a KD step, and what the trainer costs over a hand-written loop.

    python benchmarks/kd_step.py                       # BEiTv2-L and ViT-g/14 -> ResNet-50
    python benchmarks/kd_step.py --pairs small --batch 32 --steps 20 --repeats 5
    python benchmarks/kd_step.py --pairs beitv2-l --batch 2 --steps 10 --repeats 1

For each pair (a real-size teacher -> ResNet-50 at 224 px, or `small`: ResNet-18 ->
MobileNetV3-small-050 at 32 px, where the trainer's own work weighs most), images/s of whole
training steps (data, teacher, student forward, backward, update) on this machine:

  no teacher          the trainer, the student alone (distill.method=supervised)
  online teacher      the trainer, vanilla KD with the teacher run on every batch
  cached teacher      the trainer, vanilla KD from the teacher's top-k logits cached per crop
                      (`scalekd cache-teacher`, one draw, top-5; written before the timing)
  hand-written loop   the same models, data and KD loss in a minimal loop: the trainer's
                      overhead is its online row against this one

Random weights at the real sizes (speed does not depend on them); the teachers in fp32 (bf16
is several times slower on CPUs without bf16 units: benchmarks/teacher_options.py). Every row
runs 2 x `--steps` steps and times the second half, wall clock: the trainer logs every `--steps`
steps, so its second TensorBoard window (throughput/images_per_s) is exactly the timed steps;
the hand-written loop times the same steps with the same data waits. The rows run interleaved
(no teacher, online, cached, hand-written, then again) `--repeats` times; the table gives each
row's median and its spread (min-max), and the trainer's overhead from each repeat's online and
hand-written pair. Every row runs `--threads` torch threads (default: one per core; the
trainer's run.threads=0 would choose fewer beside its loader worker, the effect
benchmarks/vs_timm_train.py shows), so the overhead is the trainer's own work. The machine's
load is printed with the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
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
from scalekd.tools.cache_teacher import cache_teacher

PAIRS = {  # label: (timm teacher, its kwargs, student, input size)
    "beitv2-l": ("beitv2_large_patch16_224", {}, "resnet50", 224),
    "vit-g/14": ("vit_giant_patch14_dinov2", {"img_size": 224}, "resnet50", 224),
    "small": ("resnet18", {}, "mobilenetv3_small_050", 32),
}
NUM_CLASSES = 10  # the synthetic source's
TOP_K = 5  # logits kept per crop in the cached row


def random_weights(teacher: str, kwargs: dict, folder: Path) -> Path:
    """A weights file of the teacher at random init (no download here; speed is the same)."""
    path = folder / f"{teacher}.safetensors"
    torch.manual_seed(0)
    model = timm.create_model(teacher, num_classes=NUM_CLASSES, **kwargs)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def recipe(run_dir: Path, pair: str, weights: Path, batch: int, steps: int,
           *extra: str) -> Recipe:
    teacher, kwargs, student, size = PAIRS[pair]
    r = apply_overrides(Recipe(), [
        f"run.dir={run_dir}", f"run.max_steps={2 * steps}", f"run.log_every={steps}",
        "data.source=synthetic", f"data.num_samples={batch * 2 * steps}",
        f"data.input_size={size}", f"data.batch_size={batch}", "data.workers=1",
        f"student.name={student}", f"teacher.name={teacher}", f"teacher.checkpoint={weights}",
        "teacher.dtype=fp32", "eval.teacher=false", "optim.name=sgd", "optim.lr=0.01",
        "optim.warmup_epochs=0", "distill.method=kd", "distill.hard_loss=ce",
        "run.precision=no", f"run.threads={torch.get_num_threads()}", *extra])
    r.teacher.kwargs = dict(kwargs)
    return r


def trainer_images_per_s(r: Recipe, steps: int) -> float:
    """Wall-clock images/s of the trainer's second TensorBoard window: steps+1 .. 2 x steps."""
    train(r)
    return read_scalars(r.run.path)["throughput/images_per_s"][2 * steps]


def hand_written_images_per_s(r: Recipe, steps: int) -> float:
    """The same KD step written out: the trainer's data, plain timm models, no accelerate."""
    norm = data_config(r.student.name)
    data = build_train_data(r, SOURCES["synthetic"].load(r.data, "train"), norm["mean"],
                            norm["std"], 0, 1)
    torch.manual_seed(0)
    teacher = timm.create_model(r.teacher.name, num_classes=data.num_classes,
                                **r.teacher.kwargs).eval().requires_grad_(False)
    teacher.load_state_dict(load_file(r.teacher.checkpoint))
    student = timm.create_model(r.student.name, num_classes=data.num_classes)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    start = None
    for i, (images, targets) in enumerate(data.epoch(0)):
        with torch.no_grad():
            soft = F.softmax(teacher(images), dim=-1)
        logits = student(images)
        kd = F.kl_div(F.log_softmax(logits, dim=-1), soft, reduction="batchmean")
        loss = 0.5 * F.cross_entropy(logits, targets) + 0.5 * kd
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i + 1 == steps:  # the timed steps start here, with the wait for their first batch
            start = time.perf_counter()
    return steps * r.data.batch_size / (time.perf_counter() - start)


ROWS = ("no teacher", "online teacher", "cached teacher", "hand-written loop")


def one_pass(pair: str, weights: Path, cache: Path, folder: Path, args) -> dict[str, float]:
    """Each row once, in ROWS order."""
    base = (pair, weights, args.batch, args.steps)
    return {
        "no teacher": trainer_images_per_s(
            recipe(folder / "alone", *base, "distill.method=supervised", "teacher.name=",
                   "teacher.checkpoint="), args.steps),
        "online teacher": trainer_images_per_s(recipe(folder / "online", *base), args.steps),
        "cached teacher": trainer_images_per_s(
            recipe(folder / "cached", *base, "teacher.mode=cached", f"teacher.cache={cache}"),
            args.steps),
        "hand-written loop": hand_written_images_per_s(recipe(folder / "hand", *base),
                                                       args.steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10,
                        help="timed steps per row (as many warm up before them)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved passes over the rows")
    parser.add_argument("--pairs", nargs="+", default=["beitv2-l", "vit-g/14"],
                        choices=list(PAIRS))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads of every row (default: one per core)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results: dict[str, dict[str, list[float]]] = {}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="scalekd_kd_step_") as tmp:
        for pair in args.pairs:
            teacher, kwargs, *_ = PAIRS[pair]
            folder = Path(tmp) / pair.replace("/", "_")
            weights = random_weights(teacher, kwargs, Path(tmp))
            cache = folder / "cache"  # the cached row's, written once before the timing
            cache_teacher(recipe(folder / "writer", pair, weights, args.batch, args.steps),
                          cache, draws=1, k=TOP_K, batch_size=args.batch)
            rows = results[pair] = {name: [] for name in ROWS}
            for r in range(args.repeats):
                for name, value in one_pass(pair, weights, cache, folder / str(r), args).items():
                    rows[name].append(value)
                    print(f"  {pair:<10} pass {r}: {name:<18} {value:8.2f} img/s", flush=True)
                loads.append(os.getloadavg()[0])

    print(f"\nimages/s of KD steps, batch {args.batch}, {args.steps} timed steps a row, "
          f"{args.repeats} interleaved passes, {args.threads} torch threads: median (min-max), "
          f"x online; 1-minute load "
          f"average {min(loads):.2f}-{max(loads):.2f} on {os.cpu_count()} cores")
    labels = {pair: f"{pair} -> {PAIRS[pair][2]} @{PAIRS[pair][3]}" for pair in results}
    print(f"{'':<20}" + "".join(f"{labels[pair]:>36}" for pair in results))
    for name in ROWS:
        cells = []
        for rows in results.values():
            median = statistics.median(rows[name])
            ratio = median / statistics.median(rows["online teacher"])
            cells.append(f"{median:.2f} ({min(rows[name]):.2f}-{max(rows[name]):.2f}) "
                         f"{ratio:.2f}x")
        print(f"{name:<20}" + "".join(f"{c:>36}" for c in cells))
    for pair, rows in results.items():
        # per pass: online and hand-written ran one after the other
        overheads = [100 * (hand / online - 1) for online, hand
                     in zip(rows["online teacher"], rows["hand-written loop"])]
        print(f"trainer overhead, {pair}: median {statistics.median(overheads):+.1f}% step time "
              f"over the hand-written loop (passes: "
              + ", ".join(f"{o:+.1f}%" for o in overheads) + ")")


if __name__ == "__main__":
    main()
