"""One check of what only a GPU can tell, for a person with one GPU, in under 8 minutes.

    python benchmarks/gpu_check.py                      # one CUDA GPU; writes gpu_check.json
    python benchmarks/gpu_check.py --dry-run            # CPU, tiny sizes: the same code paths

Sections, each run whatever the others did (an error is recorded in the JSON with its
traceback, the other sections go on, and the script exits 1 if any section failed):

  kd_kernel    the Triton KD kernel (scalekd/kernels/kd_loss.py) against its torch reference
               on bf16 logits of 1,000 and 21,841 classes: loss and gradient errors, forward +
               backward time of each (the reference eager)
  sdpa         which torch SDPA kernel the teacher's attention really takes (flash /
               mem-efficient / cudnn / math, from the profiler's op names), and which kernels
               accept it when only one is allowed, for ViT-g/14 and BEiTv2-L in bf16
  kd_step      images/s and peak memory of KD steps BEiTv2-L -> ResNet-50 and ViT-g/14 ->
               ResNet-50 at batch 64 and 128: no teacher / online / cached teacher through the
               trainer (benchmarks/kd_step.py's rows) and a hand-written loop; bf16,
               channels_last student
  zero3        one training step with the teacher sharded in its own ZeRO-3 engine
               (teacher.placement=zero3), on this one process

Random weights at the real sizes (no download). `--dry-run` runs every section on the CPU with
the same models cut to a block or two at 32 px, the kernel under TRITON_INTERPRET=1, so that
CI tests this script (tests/benchmarks/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

if "--dry-run" in sys.argv:  # Triton picks its interpreter when a kernel is built: set it first
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

import kd_step  # noqa: E402  (benchmarks/kd_step.py: its pairs, recipe and trainer rows)
from scalekd.data import SOURCES, build_train_data  # noqa: E402
from scalekd.kernels.kd_loss import FusedKDLoss, kd_loss_reference, triton_enabled  # noqa: E402
from scalekd.models import data_config  # noqa: E402
from scalekd.models.teacher import FrozenTeacher  # noqa: E402
from scalekd.recipe import apply_overrides  # noqa: E402
from scalekd.tools.cache_teacher import cache_teacher  # noqa: E402

# the real sizes, and what --dry-run cuts them to: a block of each teacher, timm's 0.5M-parameter
# test ResNet as the student, 32 px, one step; "steps" are timed after as many warm-up steps
# (benchmarks/kd_step.py's rows)
REAL = {"classes": (1000, 21841), "kd_rows": 256, "batches": (64, 128), "steps": 10,
        "student": [], "teacher": {}}
DRY = {"classes": (1000, 21841), "kd_rows": 8, "batches": (4,), "steps": 1,
       "student": ["student.name=test_resnet", "data.input_size=32"],
       "teacher": {"beitv2-l": ({"img_size": 32, "depth": 1, "embed_dim": 32, "num_heads": 2},
                                32),
                   "vit-g/14": ({"img_size": 28, "depth": 1, "embed_dim": 32, "num_heads": 2},
                                28)}}
TEMPERATURE = 2.0
PAIRS = ("beitv2-l", "vit-g/14")  # of kd_step.PAIRS
SPEED_OPTIONS = ["run.precision=bf16", "teacher.dtype=bf16", "student.channels_last=true"]
SDPA_OPS = {  # profiler op name -> the kernel it is
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash",
    "aten::_scaled_dot_product_efficient_attention": "mem-efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_attention_math": "math",
}


class CheckFailed(AssertionError):
    """A measured value outside what the check accepts (the rows show which)."""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up: builds / compiles what runs
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def peak_gb(device: torch.device) -> float | None:
    """The CUDA allocator's peak since the last reset; None on CPU (no per-row figure)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# ---------------------------------------------------------------------------------------------
# sections: each appends its rows and raises on what it could not do or check


def kd_kernel(rows: list, sizes: dict, device: torch.device) -> None:
    if not triton_enabled(torch.empty(0, device=device)):
        raise RuntimeError(f"the Triton KD kernel cannot run on {device} (triton missing, or "
                           "a CPU without TRITON_INTERPRET=1)")
    bad = []
    for classes in sizes["classes"]:
        g = torch.Generator(device=device).manual_seed(0)
        shape = (sizes["kd_rows"], classes)
        student = (3 * torch.randn(shape, generator=g, device=device)).bfloat16()
        teacher = (3 * torch.randn(shape, generator=g, device=device)).bfloat16()

        def loss_and_grad(fn):
            s = student.clone().requires_grad_(True)
            loss = fn(s, teacher, TEMPERATURE)
            loss.backward()
            return loss.detach().float(), s.grad.float()

        fused_loss, fused_grad = loss_and_grad(FusedKDLoss.apply)
        ref_loss, ref_grad = loss_and_grad(kd_loss_reference)
        row = {"classes": classes, "rows": sizes["kd_rows"], "dtype": "bf16",
               "loss": ref_loss.item(),
               "loss_rel_err": (abs(fused_loss - ref_loss) / abs(ref_loss)).item(),
               "grad_max_abs_err": (fused_grad - ref_grad).abs().max().item(),
               "grad_max_abs": ref_grad.abs().max().item()}
        # both compute in fp32 from the same bf16 logits: only summation order differs
        row["values_ok"] = (row["loss_rel_err"] < 1e-4
                            and row["grad_max_abs_err"] < 1e-3 * row["grad_max_abs"] + 1e-7)
        repeats = 20 if device.type == "cuda" else 1
        row["fused_ms"] = median_ms(lambda: loss_and_grad(FusedKDLoss.apply), device, repeats)
        row["eager_ms"] = median_ms(lambda: loss_and_grad(kd_loss_reference), device, repeats)
        row["speedup"] = row["eager_ms"] / row["fused_ms"]
        rows.append(row)
        if not row["values_ok"]:
            bad.append(classes)
    if bad:
        raise CheckFailed(f"the fused KD loss differs from its reference for {bad} classes")


def teacher_of(pair: str, sizes: dict) -> tuple[str, dict, int]:
    """The pair's timm teacher, its kwargs and input size at these sizes."""
    name, kwargs, _, size = kd_step.PAIRS[pair]
    return (name, *sizes["teacher"].get(pair, (kwargs, size)))


def build_teacher(pair: str, sizes: dict, device: torch.device) -> FrozenTeacher:
    name, kwargs, size = teacher_of(pair, sizes)
    model = timm.create_model(name, num_classes=1000, **kwargs)
    cfg = model.pretrained_cfg
    return FrozenTeacher(model, cfg["mean"], cfg["std"], cfg["mean"], cfg["std"], size,
                         torch.bfloat16, attention="sdpa").to(device)


def sdpa(rows: list, sizes: dict, device: torch.device) -> None:
    activities = [torch.profiler.ProfilerActivity.CPU]
    for pair in PAIRS:
        teacher = build_teacher(pair, sizes, device)
        size = teacher.input_size
        images = torch.randn(2, 3, size, size, device=device)
        with torch.profiler.profile(activities=activities) as prof:
            teacher(images)
            sync(device)
        taken = sorted({SDPA_OPS[e.key] for e in prof.key_averages() if e.key in SDPA_OPS})
        accepted = {}
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                        SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH):
            try:
                with sdpa_kernel(backend):
                    teacher(images)
                accepted[backend.name.lower()] = "runs"
            except RuntimeError as err:  # "No available kernel", with torch's reasons
                accepted[backend.name.lower()] = str(err).strip().splitlines()[0][:200]
        rows.append({"teacher": pair, "dtype": "bf16", "kernel_taken": "+".join(taken),
                     **{f"only_{k}": v for k, v in accepted.items()}})
        del teacher
        if not taken:
            raise CheckFailed(f"{pair}: the profiler saw no SDPA op: the teacher's attention "
                              "does not go through torch SDPA")


def hand_written(r, steps: int, device: torch.device) -> tuple[float, float | None]:
    """The KD step written out on `device` (bf16 autocast, channels_last student, the trainer's
    data), timed as kd_step.py times its rows: images/s of the last `steps` of 2 x `steps`;
    and the peak memory."""
    norm = data_config(r.student.name)
    data = build_train_data(r, SOURCES["synthetic"].load(r.data, "train"), norm["mean"],
                            norm["std"], 0, 1)
    teacher = timm.create_model(r.teacher.name, num_classes=data.num_classes, **r.teacher.kwargs)
    teacher.load_state_dict(load_file(r.teacher.checkpoint))
    teacher = teacher.eval().requires_grad_(False).to(device, torch.bfloat16)
    student = timm.create_model(r.student.name, num_classes=data.num_classes).to(
        device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    size = r.teacher.input_size or r.data.input_size
    start = None
    for i, (images, targets) in enumerate(data.epoch(0)):
        images = images.to(device, non_blocking=True).contiguous(
            memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        with torch.no_grad():
            t_in = images if size == images.shape[-1] else F.interpolate(
                images, size=(size, size), mode="bicubic")
            soft = F.log_softmax(teacher(t_in.bfloat16()).float() / TEMPERATURE, dim=-1)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = student(images).float()
        kd = F.kl_div(F.log_softmax(logits / TEMPERATURE, dim=-1), soft, reduction="batchmean",
                      log_target=True)
        loss = 0.5 * F.cross_entropy(logits, targets) + 0.5 * TEMPERATURE**2 * kd
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i + 1 == steps:  # the timed steps start here, with the wait for their first batch
            sync(device)
            start = time.perf_counter()
    sync(device)
    return steps * r.data.batch_size / (time.perf_counter() - start), peak_gb(device)


def step_recipe(pair: str, run_dir: Path, weights: Path, sizes: dict, batch: int,
                *extra: str):
    """kd_step.py's recipe for the pair, with the speed options and these sizes."""
    _, kwargs, size = teacher_of(pair, sizes)
    r = kd_step.recipe(run_dir, pair, weights, batch, sizes["steps"], *SPEED_OPTIONS,
                       *sizes["student"], f"teacher.input_size={size}",
                       f"distill.temperature={TEMPERATURE}", *extra)
    if r.teacher.name:
        r.teacher.kwargs = dict(kwargs)
    return r


def kd_step_rows(rows: list, sizes: dict, device: torch.device, folder: Path) -> None:
    failed, steps = [], sizes["steps"]
    for pair in PAIRS:
        name, kwargs, _ = teacher_of(pair, sizes)
        weights = kd_step.random_weights(name, kwargs, folder)
        for batch in sizes["batches"]:
            where = folder / f"{pair.replace('/', '_')}_{batch}"

            def trainer(run: str, *extra: str) -> float:
                return kd_step.trainer_images_per_s(
                    step_recipe(pair, where / run, weights, sizes, batch, *extra), steps)

            def cached() -> float:
                cache = where / "cache"
                cache_teacher(step_recipe(pair, where / "writer", weights, sizes, batch), cache,
                              draws=1, k=kd_step.TOP_K, batch_size=batch)
                reset_peak(device)  # the timed run's peak, not the cache writer's
                return trainer("cached", "teacher.mode=cached", f"teacher.cache={cache}")

            variants = {  # kd_step.ROWS, in its order
                "no teacher": lambda: trainer("alone", "distill.method=supervised",
                                              "teacher.name=", "teacher.checkpoint="),
                "online teacher": lambda: trainer("online"),
                "cached teacher": cached,
                "hand-written loop": lambda: hand_written(
                    step_recipe(pair, where / "hand", weights, sizes, batch), steps, device),
            }
            assert tuple(variants) == kd_step.ROWS
            for variant, run in variants.items():
                row = {"pair": pair, "batch": batch, "row": variant}
                try:
                    reset_peak(device)
                    result = run()
                    speed, peak = result if isinstance(result, tuple) else (result,
                                                                            peak_gb(device))
                    row.update(images_per_s=speed, peak_gb=peak)
                except Exception as err:  # an OOM at batch 128 leaves the other rows to run
                    row["error"] = f"{type(err).__name__}: {err}"
                    row["traceback"] = traceback.format_exc()
                    failed.append(f"{pair} batch {batch} {variant}")
                rows.append(row)
                print(f"  {pair:<10} batch {batch:<4} {variant:<18} "
                      + (f"{row['images_per_s']:8.2f} img/s" if "error" not in row
                         else row["error"][:100]), flush=True)
    if failed:
        raise RuntimeError(f"rows that failed: {failed}")


@contextlib.contextmanager
def one_process_group():
    """The environment `accelerate launch` would give a single process, for DeepSpeed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def zero3(rows: list, sizes: dict, device: torch.device, folder: Path) -> None:
    pair, batch = "beitv2-l", sizes["batches"][0]
    name, kwargs, _ = teacher_of(pair, sizes)
    weights = kd_step.random_weights(name, kwargs, folder)
    one_step = {**sizes, "steps": 1}  # one warm-up step, one timed
    r = step_recipe(pair, folder / "zero3", weights, one_step, batch, "teacher.placement=zero3")
    with one_process_group():
        reset_peak(device)
        speed = kd_step.trainer_images_per_s(r, 1)
    rows.append({"pair": pair, "batch": batch, "row": "ZeRO-3 teacher, one process",
                 "images_per_s": speed, "peak_gb": peak_gb(device)})


SECTIONS = ("kd_kernel", "sdpa", "kd_step", "zero3")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny sizes: test the script itself")
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run it on a GPU, or with --dry-run on a CPU",
              file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    sizes = DRY if args.dry_run else REAL
    report = {"dry_run": args.dry_run, "device": (torch.cuda.get_device_name(device)
                                                  if device.type == "cuda" else platform.machine()),
              "torch": torch.__version__, "timm": timm.__version__,
              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "sections": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="scalekd_gpu_check_") as tmp:
        runs = {"kd_kernel": lambda rows: kd_kernel(rows, sizes, device),
                "sdpa": lambda rows: sdpa(rows, sizes, device),
                "kd_step": lambda rows: kd_step_rows(rows, sizes, device, Path(tmp)),
                "zero3": lambda rows: zero3(rows, sizes, device, Path(tmp))}
        report["sections"] = run_sections({name: runs[name] for name in args.sections})
    report["seconds"] = time.perf_counter() - started
    Path(args.out).write_text(json.dumps(report, indent=2))
    failed = [n for n, e in report["sections"].items() if not e["ok"]]
    print(f"\n{len(args.sections) - len(failed)} of {len(args.sections)} sections passed in "
          f"{report['seconds']:.0f} s; {args.out} written"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def run_sections(runs: dict[str, Callable[[list], None]]) -> dict[str, dict]:
    """Each section in turn, whatever the others did: its rows, ok, its error and traceback if
    it raised, its seconds."""
    out = {}
    for name, run in runs.items():
        print(f"\n== {name}", flush=True)
        rows: list = []
        t = time.perf_counter()
        entry = {"ok": True, "rows": rows}
        try:
            run(rows)
        except Exception as err:
            entry.update(ok=False, error=f"{type(err).__name__}: {err}",
                         traceback=traceback.format_exc())
            print(entry["traceback"], file=sys.stderr, flush=True)
        entry["seconds"] = time.perf_counter() - t
        out[name] = entry
        print_table(name, entry)
    return out


def print_table(name: str, entry: dict) -> None:
    rows = [{k: v for k, v in row.items() if k != "traceback"} for row in entry["rows"]]
    if rows:
        keys = list(dict.fromkeys(k for row in rows for k in row))
        cells = [[format_cell(row.get(k)) for k in keys] for row in rows]
        widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
        print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
        for c in cells:
            print("  ".join(v.ljust(w) for v, w in zip(c, widths)))
    status = "ok" if entry["ok"] else f"FAILED: {entry['error'][:300]}"
    print(f"-- {name}: {status} ({entry['seconds']:.1f} s)")


def format_cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 else f"{value:.2f}"
    return "-" if value is None else str(value)[:60]


if __name__ == "__main__":
    sys.exit(main())
