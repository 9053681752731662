"""What a second teacher costs a training step: distill.method=multi_teacher with two teachers of
different architectures against each alone, and against plain KD from each.

    python benchmarks/multi_teacher.py
    python benchmarks/multi_teacher.py --size 64 --batch 32 --steps 10 --repeats 3

Whole trainer steps (data, teachers, student forward, backward, update) on synthetic images,
random weights (speed does not depend on them), teachers in fp32: a ViT-S/16 and a ResNet-50
(`--size` px, the ViT at that img_size) -> a ResNet-18 student. Rows:

  kd vit, kd cnn         distill.method=kd from one teacher (the single-teacher path)
  multi vit, multi cnn   multi_teacher with that teacher alone (KD + standardised feature term)
  multi vit+cnn          multi_teacher with both

Every row runs 2 x `--steps` steps and reads the trainer's second logging window (exactly the
timed steps): images/s (wall clock) and time/step_s (teacher forward + student compute per
optimiser step). The rows run interleaved `--repeats` times in one invocation; the table gives
each row's median and its cost relative to the two-teacher row's single-teacher parts. The
machine's load is printed with the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

from scalekd.engine.logging import read_scalars
from scalekd.engine.trainer import train
from scalekd.recipe import Recipe, apply_overrides

NUM_CLASSES = 10  # the synthetic source's
TEACHERS = {"vit": "vit_small_patch16_224", "cnn": "resnet50"}
STUDENT = "resnet18"
ROWS = {  # label: (method, teachers)
    "kd vit": ("kd", ["vit"]),
    "kd cnn": ("kd", ["cnn"]),
    "multi vit": ("multi_teacher", ["vit"]),
    "multi cnn": ("multi_teacher", ["cnn"]),
    "multi vit+cnn": ("multi_teacher", ["vit", "cnn"]),
}


def kwargs_of(name: str, size: int) -> dict:
    return {"img_size": size} if name == "vit" else {}


def random_weights(name: str, size: int, folder: Path) -> Path:
    path = folder / f"{name}.safetensors"
    torch.manual_seed(0)
    model = timm.create_model(TEACHERS[name], num_classes=NUM_CLASSES, **kwargs_of(name, size))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def recipe(run_dir: Path, label: str, weights: dict[str, Path], args) -> Recipe:
    method, names = ROWS[label]
    teachers = []
    for name in names:
        field = "teacher" if method == "kd" else f"teachers.{name}"
        teachers += [f"{field}.name={TEACHERS[name]}", f"{field}.checkpoint={weights[name]}",
                     f"{field}.kwargs={kwargs_of(name, args.size)}", f"{field}.dtype=fp32"]
    return apply_overrides(Recipe(), [
        f"run.dir={run_dir}", f"run.max_steps={2 * args.steps}", f"run.log_every={args.steps}",
        f"run.threads={args.threads}", "data.source=synthetic",
        f"data.num_samples={args.batch * 2 * args.steps}", f"data.input_size={args.size}",
        f"data.batch_size={args.batch}", "data.workers=1", f"student.name={STUDENT}",
        "eval.teacher=false", "eval.every_epochs=0", "checkpoint.every_epochs=0",
        "optim.name=sgd", "optim.lr=0.01", "optim.warmup_epochs=0", f"distill.method={method}",
        "distill.weights={}", "distill.options.fit_batches=1" if method != "kd" else
        "distill.options={}", *teachers])


def timed(run_dir: Path) -> tuple[float, float]:
    """(images/s, step seconds) of the run's second logging window."""
    scalars = read_scalars(run_dir)
    last = max(scalars["throughput/images_per_s"])
    return scalars["throughput/images_per_s"][last], scalars["time/step_s"][last]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    seen: dict[str, list[tuple[float, float]]] = {label: [] for label in ROWS}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        weights = {name: random_weights(name, args.size, folder) for name in TEACHERS}
        for repeat in range(args.repeats):
            for label in ROWS:
                run_dir = folder / f"{label.replace(' ', '_').replace('+', '_')}_{repeat}"
                train(recipe(run_dir, label, weights, args))
                seen[label].append(timed(run_dir))

    step = {label: statistics.median(s for _, s in values) for label, values in seen.items()}
    both = step["multi vit+cnn"]
    print(f"\n{TEACHERS['vit']} + {TEACHERS['cnn']} -> {STUDENT}, {args.size} px, batch "
          f"{args.batch}, {args.steps} timed steps x {args.repeats} repeats, {args.threads} "
          f"threads; load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"  {'row':<15}{'img/s':>8}{'step s':>9}{'2 teachers / this':>19}  img/s per repeat")
    for label, values in seen.items():
        rates = [r for r, _ in values]
        print(f"  {label:<15}{statistics.median(rates):>8.1f}{step[label]:>9.3f}"
              f"{both / step[label]:>18.2f}x  " + " ".join(f"{r:.1f}" for r in rates))
    parts = step["multi vit"] + step["multi cnn"]
    print(f"  two teachers against the sum of the one-teacher steps: {both / parts:.2f}x "
          "(below 1: the student's own work is paid once)")


if __name__ == "__main__":
    main()
