"""Checkpoints that a crash, kill or preemption cannot corrupt.

Each checkpoint is written by every process into `.tmp-step_N`, finished with a COMPLETE marker
that lists every file and its size, then renamed to `step_N` in one atomic step. Only folders
whose marker matches what is on disk are resumed from (others are skipped with a warning naming
them), the last `keep` are kept, and leftovers of an interrupted write are removed at the next
start. A write that fails (a full disk) is reported, removed, and leaves the previous checkpoint
as the one to resume from; `checkpoint.on_error` says whether training goes on or stops.
The model/optimizer/RNG/scaler state is accelerate's (sharded files under DeepSpeed); our own
state (step, EMA) is JSON and safetensors so that nothing needs unpickling. Whatever does need
torch.load is read with weights_only=True, DeepSpeed's files included (see
`load_deepspeed_weights_only`).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

MARKER = "COMPLETE"
PREFIX = "step_"
UNIVERSAL = "universal"  # a DeepSpeed checkpoint converted for another process count
DEEPSPEED_TAG = "pytorch_model"  # the folder accelerate's save_state gives DeepSpeed's files


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the previous complete one is intact."""


class Checkpoints:
    def __init__(self, folder: Path, keep: int):
        self.folder, self.keep = Path(folder), keep

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first; others are reported and skipped."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in self.folder.glob(f"{PREFIX}*"):
            problem = _problem(path)
            if problem:
                warnings.warn(f"skipping checkpoint {path}: {problem}")
            else:
                found.append(path)
        return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))

    def latest(self) -> Optional[Path]:
        """The newest complete checkpoint whose random states load (read for it alone)."""
        for path in reversed(self.complete()):
            problem = _rng_problem(path)
            if not problem:
                return path
            warnings.warn(f"skipping checkpoint {path}: {problem}")
        return None

    def remove_partial(self, accelerator: Accelerator) -> None:
        if accelerator.is_main_process and self.folder.is_dir():
            for path in self.folder.glob(".tmp-*"):
                shutil.rmtree(path, ignore_errors=True)
        accelerator.wait_for_everyone()

    def save(self, accelerator: Accelerator, step: int, emas: dict[str, torch.nn.Module]) -> Path:
        """Write the checkpoint of `step`; raises CheckpointWriteError on every rank if any
        rank failed to write its part (the half-written folder is removed)."""
        final = self.folder / f"{PREFIX}{step:09d}"
        tmp = self.folder / f".tmp-{final.name}"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        failure = None
        try:
            accelerator.save_state(str(tmp))
            if accelerator.is_main_process:
                for name, ema in emas.items():
                    save_file(_plain(ema.state_dict()), tmp / ema_file(name))
                _write_synced(tmp / "trainer_state.json", json.dumps(
                    {"step": step, "world_size": accelerator.num_processes,
                     "deepspeed": accelerator.state.deepspeed_plugin is not None}))
        except OSError as err:
            failure = err
        if _any_rank(failure is not None, accelerator):
            if accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            previous = self.latest()
            cause = ("no space left on device" if getattr(failure, "errno", None) == errno.ENOSPC
                     else f"{type(failure).__name__}: {failure}" if failure else "another rank")
            raise CheckpointWriteError(
                f"could not write the checkpoint of step {step} in {self.folder} ({cause}); "
                f"the last complete checkpoint, {previous or 'none'}, is intact. Free space "
                "or point run.dir elsewhere; checkpoint.on_error=continue keeps training")
        if accelerator.is_main_process:
            _write_synced(tmp / MARKER, json.dumps(_manifest(tmp), indent=1))
            if final.exists():  # a re-save of the same step (resume right after a save)
                _remove(final)
            os.rename(tmp, final)
            for old in self.complete()[: -self.keep]:
                _remove(old)
        accelerator.wait_for_everyone()
        return final

    @staticmethod
    def load(accelerator: Accelerator, path: Path, emas: dict[str, torch.nn.Module]) -> int:
        """Restore everything saved at `path`; returns the optimiser step to continue from.

        A DDP checkpoint resumes onto any number of processes: the model and optimiser state
        are whole in it, and the data order follows the global batch (samples are dealt to
        processes by global position), so only the per-process RNG of processes the writing
        run did not have starts fresh (it drives dropout and drop-path only). A DeepSpeed
        checkpoint holds one ZeRO shard per process: for another count, `universal` converts it
        first and this loads the conversion."""
        if path.name != UNIVERSAL:
            saved = json.loads((path / "trainer_state.json").read_text())
            was_deepspeed = saved.get("deepspeed", False)
            if was_deepspeed != (accelerator.state.deepspeed_plugin is not None):
                raise ValueError(
                    f"checkpoint {path} was written "
                    f"{'under DeepSpeed' if was_deepspeed else 'without DeepSpeed'}; this run is "
                    f"{'not ' if was_deepspeed else ''}under DeepSpeed. Resume it with the "
                    "launcher and dist.zero_stage it was written with")
        load_deepspeed_weights_only(accelerator)
        # DeepSpeed's universal loader gives every parameter group the first group's
        # hyper-parameters, e.g. weight decay on the no-decay group: keep each group's own
        groups = [[{k: v for k, v in g.items() if k != "params"} for g in _innermost(o)]
                  for o in accelerator._optimizers] if path.name == UNIVERSAL else []
        accelerator.load_state(str(path))
        for optimizer, saved in zip(accelerator._optimizers, groups):
            for group, own in zip(_innermost(optimizer), saved):
                group.update(own)
        for name, ema in emas.items():
            ema.load_state_dict(load_file(path / ema_file(name)))
        return json.loads((path / "trainer_state.json").read_text())["step"]


    @staticmethod
    def needs_universal(path: Path, world_size: int, deepspeed: bool) -> bool:
        """Whether resuming `path` on `world_size` processes needs DeepSpeed's universal
        format (a DeepSpeed checkpoint written by another process count)."""
        saved = json.loads((path / "trainer_state.json").read_text())
        return deepspeed and saved.get("deepspeed", False) and saved["world_size"] != world_size

    @staticmethod
    def universal(accelerator: Accelerator, path: Path) -> Path:
        """`path` converted once to DeepSpeed's universal checkpoint (parameters and optimiser
        state whole, by name, re-sharded on load over any process count), in path/universal;
        the run's engine must be built with `"checkpoint": {"load_universal": true}`."""
        out = path / UNIVERSAL
        if accelerator.is_main_process and not (out / MARKER).is_file():
            from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

            tmp = path / f".tmp-{UNIVERSAL}"
            shutil.rmtree(tmp, ignore_errors=True)
            ds_to_universal(argparse.Namespace(
                input_folder=str(path / DEEPSPEED_TAG), output_folder=str(tmp / DEEPSPEED_TAG),
                num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False,
                strict=True, inject_missing_state=False))
            for item in path.iterdir():  # our state and accelerate's RNG files, as they are
                if item.is_file() and item.name != MARKER:
                    shutil.copy2(item, tmp / item.name)
            _write_synced(tmp / MARKER, json.dumps(_manifest(tmp), indent=1))
            os.rename(tmp, out)
        accelerator.wait_for_everyone()
        return out


def load_deepspeed_weights_only(accelerator: Accelerator) -> None:
    """Make accelerate's DeepSpeed engines read checkpoints with torch.load(weights_only=True).

    accelerate reads its own files with weights_only=True (and the model from safetensors), but
    under DeepSpeed `load_state` calls engine.load_checkpoint, which reads the model and ZeRO
    optimiser files through the engine's checkpoint engine, and DeepSpeed's
    TorchCheckpointEngine calls torch.load(weights_only=False): a full unpickle, so a tampered
    checkpoint could run arbitrary code at resume. Those files hold only tensors, containers,
    plain values and a few small DeepSpeed classes (its loss scaler, the ZeRO stage enum, ZeRO-2
    fragment addresses), which torch's weights-only unpickler rebuilds once they are allowlisted.
    Any other class in such a file now fails the load instead of being executed.
    """
    if accelerator.state.deepspeed_plugin is None:
        return
    from deepspeed import DeepSpeedEngine
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    for model in accelerator._models:
        current = getattr(model, "checkpoint_engine", None)
        if isinstance(model, DeepSpeedEngine) and type(current) is TorchCheckpointEngine:
            model.checkpoint_engine = _weights_only_engine(current)


def _weights_only_engine(current):
    """A weights-only copy of DeepSpeed's TorchCheckpointEngine `current` (same settings, so
    saving is unchanged)."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    allowed = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]

    class WeightsOnlyTorchCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location=map_location, weights_only=True)

    engine = WeightsOnlyTorchCheckpointEngine.__new__(WeightsOnlyTorchCheckpointEngine)
    engine.__dict__.update(current.__dict__)
    return engine


def _innermost(optimizer) -> list[dict]:
    """The param_groups of the torch optimizer under accelerate's and DeepSpeed's wrappers."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer.param_groups


def _manifest(folder: Path) -> dict[str, int]:
    """Every file under `folder` (relative path -> size), the marker excepted."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER}


def _problem(path: Path) -> Optional[str]:
    """Why the checkpoint folder `path` cannot be trusted, or None."""
    if not (path / MARKER).is_file():
        return f"it has no {MARKER} marker"
    try:
        text = (path / MARKER).read_text()
        if not text:  # written before markers listed files: trusted as it was then
            return None
        listed = json.loads(text)
    except (OSError, ValueError) as err:
        return f"its {MARKER} marker is unreadable ({err})"
    if not isinstance(listed, dict) or not listed:
        return f"its {MARKER} marker lists no files"
    on_disk = _manifest(path)
    missing = sorted(set(listed) - set(on_disk))
    if missing:
        return f"files listed in {MARKER} are missing: {', '.join(missing)}"
    changed = sorted(f for f in listed if on_disk[f] != listed[f])
    if changed:
        return f"files differ in size from {MARKER}: {', '.join(changed)}"
    return None


def _rng_problem(path: Path) -> Optional[str]:
    """Why the random states of the processes that wrote checkpoint `path` cannot be restored,
    or None. accelerate's load_state logs an RNG file it cannot load at INFO level and goes on
    with the streams it has, so a resume from it would silently not be exact. The files are a
    few KB each (read with accelerate's own weights-only loader)."""
    from accelerate.utils import RNG_STATE_NAME
    from accelerate.utils import load as accelerate_load

    try:
        processes = json.loads((path / "trainer_state.json").read_text())["world_size"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"its trainer_state.json is unreadable ({err})"
    for rank in range(processes):
        name = f"{RNG_STATE_NAME}_{rank}.pkl"
        try:
            state = accelerate_load(path / name)
            state["random_state"], state["numpy_random_seed"], state["torch_manual_seed"]
        except Exception as err:  # whatever the unpickler raises: the stream cannot be restored
            return f"its random state {name} cannot be loaded ({type(err).__name__}: {err})"
    return None


def _remove(checkpoint: Path) -> None:
    """Delete a checkpoint folder, renamed out of sight first: a kill during the (long) delete
    leaves a .tmp- folder, which the next start removes (remove_partial), never a half-deleted
    checkpoint."""
    aside = checkpoint.with_name(f".tmp-removed-{checkpoint.name}")
    os.rename(checkpoint, aside)
    shutil.rmtree(aside, ignore_errors=True)


def _any_rank(flag: bool, accelerator: Accelerator) -> bool:
    if not (dist.is_available() and dist.is_initialized() and accelerator.num_processes > 1):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def ema_file(student: str) -> str:
    """One EMA per student: ema.safetensors for the recipe's own, ema_<name> for the others."""
    return f"ema_{student}.safetensors" if student else "ema.safetensors"


def _plain(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
