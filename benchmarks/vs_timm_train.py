"""scalekd against timm's own train.py in KD mode, on the same work.

    git clone https://github.com/huggingface/pytorch-image-models /tmp/timm
    git -C /tmp/timm checkout aa4b5850c1543fa488abf260f18390eda46cf85d     # the pinned commit
    python benchmarks/vs_timm_train.py --timm-train /tmp/timm/train.py --repeats 3

timm's train.py is not in the timm wheel, so it runs from the checkout you point at, with the
installed timm package (`python -P`: not the checkout's own timm folder beside train.py, so both
sides run the same model code; we do not copy train.py). Both sides, each in a fresh process,
one after the other, interleaved (timm, scalekd, timm, scalekd, ...):
- the same PNG files (10 classes, 32 px, written here) read by each side's image-folder loader,
  `--workers` loader processes, batch `--batch`;
- the same augmentation: random-resized crop (scale 0.08-1, ratio 3/4-4/3, bicubic) and flip,
  no colour jitter, no Mixup/CutMix, label smoothing 0.1;
- the same models: a ResNet-18 teacher (random weights, saved as a timm `local-dir:` folder that
  timm's --kd-model-name loads; scalekd reads its safetensors) and a MobileNetV3-small-050
  student, fp32 on the CPU, one process;
- the same loss and update: 0.5 label loss + 0.5 KD (T=1), SGD lr 0.01, momentum 0.9, no
  weight decay;
- each side's own thread setting: timm's train.py sets none (torch's default, one thread per
  core), scalekd's run.threads=0 leaves a core to each loader worker (at least one thread);
  `--omp-threads T` adds a row per side with OMP_NUM_THREADS=T (timm's only way to set it,
  which scalekd's run.threads=0 also follows), so the loops can be compared at equal threads.
Timed: N updates of the first epoch after at least N warm-up ones (N = `--steps`), wall clock
including data waits: timm's from the running average its log lines print at update indices N
and 2N (`--log-interval N`; 0-based, so its updates N+2..2N+1), scalekd's from its TensorBoard
window (`run.log_every=N`: its steps N+1..2N). Each side's rate is the median of
`--repeats` runs; the spread is their min-max. The machine's load is printed with the table.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TEACHER, STUDENT = "resnet18", "mobilenetv3_small_050"
CLASSES, SIZE = 10, 32
RECIPE = """\
from scalekd.cli import run_recipe
from scalekd.recipe import Recipe

if __name__ == "__main__":
    run_recipe(Recipe())
"""


def write_images(root: Path, per_class: int) -> None:
    """Noise PNGs with a class-dependent tint: real files for both loaders to decode."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", 2)):
        for c in range(CLASSES):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 200, (SIZE, SIZE, 3)) + 5 * c
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")


def write_teacher(folder: Path) -> Path:
    """The teacher as a timm local-dir folder (config.json + model.safetensors)."""
    torch.manual_seed(0)
    model = timm.create_model(TEACHER, num_classes=CLASSES)
    timm.models.save_for_hf(model, folder, safe_serialization="both")
    return folder / "model.safetensors"


def timm_images_per_s(train_py: Path, data: Path, teacher: Path, out: Path, args,
                      env: dict) -> tuple[float, int]:
    n = args.steps
    cmd = [sys.executable, "-P", str(train_py), "--data-dir", str(data), "--model", STUDENT,
           "--num-classes", str(CLASSES), "--input-size", "3", str(SIZE), str(SIZE),
           "--batch-size", str(args.batch), "--workers", str(args.workers),
           "--epochs", "1", "--opt", "sgd", "--lr", "0.01", "--momentum", "0.9",
           "--weight-decay", "0", "--sched", "step", "--decay-epochs", "100",
           "--warmup-epochs", "0", "--color-jitter", "0", "--smoothing", "0.1",
           "--train-interpolation", "bicubic", "--scale", "0.08", "1",
           "--ratio", str(3 / 4), str(4 / 3), "--hflip", "0.5",
           "--kd-model-name", f"local-dir:{teacher}", "--kd-temperature", "1",
           "--task-loss-weight", "0.5", "--distill-loss-weight", "0.5",
           "--log-interval", str(n), "--device", "cpu", "--seed", "0",
           "--output", str(out), "--checkpoint-hist", "1"]
    log = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True)
    if log.returncode:
        raise RuntimeError(f"timm's train.py failed:\n{log.stderr[-4000:]}")
    # "Train: 0 [  20/41 ...] ... Time: 0.080s, 800.00/s  (0.090s, 711.11/s)": the running
    # average over updates 0..u of the epoch, as batch / rate
    averages = {}
    for match in re.finditer(r"Train: 0 \[\s*(\d+)/\d+.*?\(\s*[\d.]+s,\s*([\d.]+)/s\)",
                             log.stdout + log.stderr):
        averages[int(match[1])] = args.batch / float(match[2])
    window = (2 * n + 1) * averages[2 * n] - (n + 1) * averages[n]  # updates n+1 .. 2n
    return n * args.batch / window, default_threads(env)


def default_threads(env: dict) -> int:
    """torch's thread count in a fresh process with `env`."""
    probe = [sys.executable, "-c", "import torch; print(torch.get_num_threads())"]
    return int(subprocess.run(probe, env=env, capture_output=True, text=True,
                              check=True).stdout)


def scalekd_images_per_s(data: Path, teacher: Path, out: Path, args,
                         env: dict) -> tuple[float, int]:
    from scalekd.engine.logging import read_scalars

    n = args.steps
    recipe = out.parent / "recipe.py"
    recipe.write_text(RECIPE)
    overrides = [
        "data.source=imagefolder", f"data.path={data}", f"data.input_size={SIZE}",
        f"data.batch_size={args.batch}", f"data.workers={args.workers}",
        "aug.color_jitter=0", "aug.smoothing=0.1", "aug.interpolation=bicubic",
        f"student.name={STUDENT}", f"teacher.name={TEACHER}", f"teacher.checkpoint={teacher}",
        "teacher.dtype=fp32", "eval.teacher=false", "distill.method=kd",
        "distill.temperature=1", "distill.hard_loss=ce", "optim.name=sgd", "optim.lr=0.01",
        "optim.momentum=0.9", "optim.weight_decay=0", "optim.warmup_epochs=0",
        f"run.dir={out}", "run.epochs=1", f"run.max_steps={2 * n}", f"run.log_every={n}",
        "run.precision=no"]
    log = subprocess.run([sys.executable, str(recipe), *overrides], cwd=REPO,
                         env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    if log.returncode:
        raise RuntimeError(f"scalekd failed:\n{log.stderr[-4000:]}")
    # run.threads=0 says when it lowers torch's count: "torch threads: 1 of 2 (...)"
    chosen = re.search(r"torch threads: (\d+) of", log.stdout + log.stderr)
    threads = int(chosen[1]) if chosen else default_threads(env)
    return read_scalars(out)["throughput/images_per_s"][2 * n], threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timm-train", type=Path, required=True,
                        help="train.py of a pytorch-image-models checkout")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20,
                        help="N: updates N+1..2N are timed (N before them warm up)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--omp-threads", type=int, default=0, metavar="T",
                        help="also run each side with OMP_NUM_THREADS=T (equal threads)")
    args = parser.parse_args()
    if not args.timm_train.is_file():
        parser.error(f"--timm-train {args.timm_train}: no such file (clone "
                     "pytorch-image-models and pass its train.py)")

    # label -> (side, environment); each side's own thread setting first
    sides = {"timm train.py": ("timm", dict(os.environ)), "scalekd": ("scalekd", dict(os.environ))}
    if args.omp_threads:
        equal = {**os.environ, "OMP_NUM_THREADS": str(args.omp_threads)}
        sides[f"timm, OMP={args.omp_threads}"] = ("timm", equal)
        sides[f"scalekd, OMP={args.omp_threads}"] = ("scalekd", equal)
    rates: dict[str, list[float]] = {label: [] for label in sides}
    threads: dict[str, int] = {}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="scalekd_vs_timm_") as tmp:
        tmp = Path(tmp)
        # one epoch holds 2N + 1 updates: no epoch end (evaluation) inside the timed ones
        write_images(tmp / "data", -(-(2 * args.steps + 1) * args.batch // CLASSES))
        teacher_file = write_teacher(tmp / "teacher")
        for r in range(args.repeats):
            for i, (label, (side, env)) in enumerate(sides.items()):
                out = tmp / f"{side}{i}_{r}" / "run"
                out.mkdir(parents=True)
                if side == "scalekd":
                    rate, threads[label] = scalekd_images_per_s(tmp / "data", teacher_file,
                                                                out, args, env)
                else:
                    rate, threads[label] = timm_images_per_s(
                        args.timm_train, tmp / "data", tmp / "teacher", out, args, env)
                rates[label].append(rate)
                loads.append(os.getloadavg()[0])
                print(f"  repeat {r}: {label:<18} {rate:8.1f} img/s", flush=True)

    print(f"\nKD steady-state images/s, {TEACHER} -> {STUDENT} at {SIZE} px, batch {args.batch}, "
          f"{args.workers} workers, updates {args.steps + 1}-{2 * args.steps} of each run, "
          f"{args.repeats} interleaved runs a side; 1-minute load average "
          f"{min(loads):.2f}-{max(loads):.2f} on {os.cpu_count()} cores")
    base = statistics.median(rates["timm train.py"])
    print(f"{'':<18}{'threads':>8}{'median':>10}{'min':>10}{'max':>10}{'vs timm':>10}")
    for label, values in rates.items():
        median = statistics.median(values)
        print(f"{label:<18}{threads[label]:8d}{median:10.1f}{min(values):10.1f}"
              f"{max(values):10.1f}{median / base:9.2f}x")


if __name__ == "__main__":
    main()
