"""Tiny training runs for the engine tests: their overrides, how to launch them (in a separate
process, alone or under `accelerate launch`), and how to read what they left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from scalekd.engine.logging import read_scalars

REPO = Path(__file__).resolve().parents[2]
RUN_SCRIPT = Path(__file__).with_name("distributed_run.py")

# The student and teacher of every tiny run: a 2-block ViT on 32x32 images (LayerNorm, no
# BatchNorm, so losses do not depend on how a batch is split over processes).
TINY_VIT = "{'img_size':32,'patch_size':8,'depth':2}"
# What exact-resume tests add: a student with randomness of its own (drop path) and a loader
# worker process, as every real recipe has; a student without randomness, or a loader without
# workers, hides a shifted random stream (issue 18)
STOCHASTIC = ("student.drop_path=0.1", "data.workers=1")


def tiny_overrides(run_dir, teacher_checkpoint, *extra: str) -> list[str]:
    """A KD run of seconds: 64 synthetic images, global batch 16 (4 steps an epoch), 2 epochs."""
    return [
        "data.source=synthetic", "data.num_samples=64", "data.input_size=32",
        "data.batch_size=16", "data.workers=0",
        "student.name=vit_tiny_patch16_224", f"student.kwargs={TINY_VIT}",
        "teacher.name=vit_tiny_patch16_224", f"teacher.kwargs={TINY_VIT}",
        f"teacher.checkpoint={teacher_checkpoint}",
        f"run.dir={run_dir}", "run.epochs=2",
        "optim.name=adamw", "optim.lr=1e-3", "optim.warmup_epochs=0",
        *extra,
    ]


def write_tiny_teacher(path: Path, num_classes: int = 10, seed: int = 0) -> Path:
    """Random weights for the tiny ViT teacher, saved the way a user's teacher file would be."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=num_classes,
                              img_size=32, patch_size=8, depth=2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


# ---------------------------------------------------------------------------------------------
# launching


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["DS_ACCELERATOR"] = "cpu"
    env.pop("WORLD_SIZE", None)
    env.pop("LOCAL_RANK", None)
    return env


def single_command(overrides: list[str]) -> list[str]:
    """One plain process running the tiny run (the helper script without a launcher)."""
    return [sys.executable, str(RUN_SCRIPT), *overrides]


def launch_command(overrides: list[str], deepspeed: bool, processes: int = 2,
                   port: int = 0) -> list[str]:
    """`accelerate launch` of the helper script over `processes` CPU processes (gloo), on
    `port` (default: a free one, so that concurrent launches on this machine do not clash)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--main_process_port",
           str(port or free_port())]
    cmd += ["--use_deepspeed"] if deepspeed else ["--multi_gpu"]
    return cmd + [str(RUN_SCRIPT), *overrides]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start `cmd` in its own process group (so that it and all its children, launcher ranks
    and data-loader workers alike, can be killed at once), output to `log`."""
    out = open(log, "ab")
    try:
        return subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        out.close()


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the whole process group of `proc` (started by `start`) and reap `proc`."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def wait_group_gone(pgid: int, timeout: float = 30) -> None:
    """Wait until no live process of group `pgid` is left (the ranks and workers of a killed
    launcher; zombies waiting for a reaper do not count)."""
    deadline = time.monotonic() + timeout
    while group_members(pgid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"process group {pgid} still alive {timeout} s after SIGKILL")
        time.sleep(0.1)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of group `pgid`."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: signal 0 tells whether any member exists
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except ProcessLookupError:
            return []
    members = []
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
            members.append(int(stat.parent.name))
    return members


def run(cmd: list[str], log: Path, timeout: float) -> None:
    """Run `cmd` to completion; on failure or timeout, kill its group and show its output."""
    proc = start(cmd, log)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise AssertionError(f"timed out after {timeout} s: {' '.join(cmd)}\n{tail(log)}")
    finally:
        kill_group(proc)  # leftovers of a failed launch (a rank waiting on a dead peer)
    assert code == 0, f"exit status {code}: {' '.join(cmd)}\n{tail(log)}"


def tail(log: Path, chars: int = 6000) -> str:
    text = Path(log).read_text(errors="replace") if Path(log).exists() else ""
    return text[-chars:]


def train_in_process(overrides: list[str]):
    """Train in this process, as `python recipe.py` does."""
    from scalekd.engine.trainer import train
    from scalekd.recipe import Recipe, apply_overrides

    return train(apply_overrides(Recipe(), overrides))


# ---------------------------------------------------------------------------------------------
# reading a run's outputs

scalars = read_scalars  # tag -> {step: value}


def exported(run_dir: Path, stem: str = "student") -> dict:
    """The tensors of a run's exported student."""
    from safetensors.torch import load_file

    return load_file(str(Path(run_dir) / "export" / f"{stem}.safetensors"))


def checkpoint_problems(run_dir: Path, keep: int) -> list[str]:
    """What is wrong with a run's checkpoints folder: incomplete, damaged (a file not matching
    its size or checksum in the marker) or leftover entries, or more than `keep` checkpoints."""
    import json

    from scalekd.engine.checkpoint import Checkpoints, DamagedCheckpoint

    folder = Path(run_dir) / "checkpoints"
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    problems = [f"{p.name} is not a complete checkpoint" for p in entries
                if not (p.name.startswith("step_") and (p / "COMPLETE").is_file())]
    for path in entries:
        if path.name.startswith("step_") and (path / "COMPLETE").is_file():
            if "files" not in json.loads((path / "COMPLETE").read_text() or "{}"):
                problems.append(f"{path.name}: its marker has no checksums")
            try:
                Checkpoints.check(path)
            except DamagedCheckpoint as err:
                problems.append(str(err))
    if len(entries) > keep:
        problems.append(f"{len(entries)} checkpoints, more than checkpoint.keep={keep}: "
                        f"{[p.name for p in entries]}")
    if not entries:
        problems.append("no checkpoint at all")
    return problems


def complete_checkpoints(run_dir: Path) -> list[Path]:
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step_*") if (p / "COMPLETE").is_file())
