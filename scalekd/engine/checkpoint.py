"""Checkpoints that a crash, kill or preemption cannot corrupt.

Each checkpoint is written by every process into `.tmp-step_N`, finished with a COMPLETE marker
that lists every file with its size and checksum (every process checksums a share of the files
once all have written; rank 0 writes the marker), then renamed to `step_N` in one atomic step.
Resume takes the newest checkpoint whose files all match their marker (newer ones are skipped
with a warning saying why) and refuses to start afresh when checkpoints exist but none is
intact; the last `keep` are kept, and leftovers of an interrupted write are removed at the next
start. A write that fails (a full disk, wherever it fails) is reported, removed, and leaves the
previous checkpoint as the one to resume from; `checkpoint.on_error` says whether training goes
on or stops.
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
import zlib
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
from accelerate import Accelerator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from scalekd.engine.distributed import any_rank
from scalekd.files import (sync_folder, write_atomically, write_folder_atomically,
                           write_text_atomically)

MARKER = "COMPLETE"
# zlib's CRC-32 of every file, in the marker: it catches damage (flipped or garbled bytes, a
# hand-edited file), not tampering (whoever can edit a file can edit the marker), and of the
# standard library's checksums it is the fastest but adler32, which is weaker on short files;
# for its cost per GB see docs/run-folder.md (benchmarks/checkpoint_checksum.py)
CHECKSUM = "crc32"
_CHUNK = 8 << 20
# what a write that fails raises: OSError (ENOSPC, EDQUOT, EIO), torch's zip writer's
# RuntimeError ("unexpected pos", "file write failed"; torch.save under accelerate and DeepSpeed)
# and safetensors' SafetensorError
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)
PREFIX = "step_"
UNIVERSAL = "universal"  # a DeepSpeed checkpoint converted for another process count
DEEPSPEED_TAG = "pytorch_model"  # the folder accelerate's save_state gives DeepSpeed's files


class RunFolderError(RuntimeError):
    """Something of the run folder could not be written or read; the message says what is
    intact and what to do (the command line prints it without a traceback)."""


class CheckpointWriteError(RunFolderError):
    """A checkpoint could not be written; the previous complete one is intact."""


class DamagedCheckpoint(RunFolderError):
    """A checkpoint to resume from is damaged, or checkpoints exist and none is intact."""


class RunWriteError(RunFolderError):
    """A file of the run folder (recipe, export, metrics, FINISHED) could not be written."""


class Checkpoints:
    def __init__(self, folder: Path, keep: int):
        self.folder, self.keep = Path(folder), keep

    def _all(self) -> list[Path]:
        """Every step_N folder, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [p for p in self.folder.glob(f"{PREFIX}*") if p.name[len(PREFIX):].isdigit()]
        return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))

    def complete(self) -> list[Path]:
        """Complete checkpoints (files present at their listed sizes), oldest first; others
        are reported and skipped. Checksums are not read here: see `latest`."""
        found = []
        for path in self._all():
            problem = _problem(path, checksums=False)
            if problem:
                warnings.warn(f"skipping checkpoint {path}: {problem}")
            else:
                found.append(path)
        return found

    def latest(self) -> Optional[Path]:
        """The newest intact checkpoint: every file listed in its marker present, at its size
        and checksum. Each newer one is reported with why it was skipped. None if there is no
        checkpoint; DamagedCheckpoint if there are some and none is intact (starting afresh
        would silently throw the run away)."""
        skipped = []
        for path in reversed(self._all()):
            problem = _problem(path, checksums=True)
            if problem is None:
                return path
            warnings.warn(f"skipping checkpoint {path}: {problem}")
            skipped.append(f"{path.name}: {problem}")
        if skipped:
            raise DamagedCheckpoint(
                f"no intact checkpoint in {self.folder}, so nothing to resume from:\n  "
                + "\n  ".join(skipped) + "\nRestore a checkpoint, pass one with "
                "checkpoint.resume=FOLDER, or start from scratch with checkpoint.resume=overwrite "
                "(which deletes them)")
        return None

    @staticmethod
    def check(path: Path) -> Path:
        """`path` if intact (see `latest`), else DamagedCheckpoint saying why."""
        problem = _problem(Path(path), checksums=True)
        if problem:
            raise DamagedCheckpoint(f"checkpoint {path} cannot be resumed from: {problem}")
        return Path(path)

    def remove_partial(self, accelerator: Accelerator) -> None:
        if accelerator.is_main_process and self.folder.is_dir():
            for path in self.folder.glob(".tmp-*"):
                shutil.rmtree(path, ignore_errors=True)
        accelerator.wait_for_everyone()

    def save(self, accelerator: Accelerator, step: int, emas: dict[str, torch.nn.Module]) -> Path:
        """Write the checkpoint of `step`; raises CheckpointWriteError on every rank if any
        rank failed to write its part or the marker (the half-written folder is removed)."""
        final = self.folder / f"{PREFIX}{step:09d}"
        tmp = self.folder / f".tmp-{final.name}"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        failure = None
        expected = _expected_bytes(accelerator, emas)
        try:
            if accelerator.is_main_process:
                self._check_room(expected)
                tmp.mkdir(parents=True, exist_ok=True)
        except WRITE_ERRORS as err:
            failure = err
        # also the barrier before writing
        if not any_rank(failure is not None, device=accelerator.device):
            try:
                accelerator.save_state(str(tmp))
                if accelerator.is_main_process:
                    for name, ema in emas.items():
                        save_file(_plain(ema.state_dict()), tmp / ema_file(name))
                    _write_synced(tmp / "trainer_state.json", json.dumps(
                        {"step": step, "world_size": accelerator.num_processes,
                         "deepspeed": accelerator.state.deepspeed_plugin is not None}))
            except WRITE_ERRORS as err:
                failure = err
        # every rank has written its part
        if not any_rank(failure is not None, device=accelerator.device):
            try:
                listed = _shared_manifest(tmp, accelerator)
                if accelerator.is_main_process:
                    _write_synced(tmp / MARKER, json.dumps(listed, indent=1))
            except WRITE_ERRORS as err:
                failure = err
        if any_rank(failure is not None, device=accelerator.device):
            if accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            previous = self.complete()
            intact = (f"the last complete checkpoint, {previous[-1]}, is intact" if previous
                      else "there is no earlier checkpoint")
            raise CheckpointWriteError(
                f"could not write the checkpoint of step {step} in {self.folder} "
                f"({_cause(failure)}; {_free(self.folder)}); the half-written folder is removed "
                f"and {intact}. Free space or point run.dir elsewhere; "
                "checkpoint.on_error=continue keeps training") from failure
        if accelerator.is_main_process:
            if final.exists():  # a re-save of the same step (resume right after a save)
                _remove(final)
            os.rename(tmp, final)
            sync_folder(self.folder)  # the rename that makes the checkpoint visible, on disk
            for old in self.complete()[: -self.keep]:
                _remove(old)
        accelerator.wait_for_everyone()
        return final

    def _check_room(self, expected: int) -> None:
        """OSError(ENOSPC) if the filesystem has less room than the checkpoint needs (the
        larger of `expected` and what the last one took): found before anything is written,
        so that every rank stops together. A rank failing inside DeepSpeed's save while the
        others wait in its barriers hangs the run (seen with ZeRO-3 on a full tmpfs)."""
        needed = max([expected] + [
            sum(p.stat().st_size for p in last.rglob("*")
                if p.is_file() and UNIVERSAL not in p.relative_to(last).parts)
            for last in self.complete()[-1:]])
        self.folder.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(self.folder).free < needed:
            raise OSError(errno.ENOSPC, f"the checkpoint needs about {needed / 2**20:.1f} MiB")

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
            was_deepspeed = _trainer_state(path).get("deepspeed", False)
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
        try:
            accelerator.load_state(str(path))
            for name, ema in emas.items():
                ema.load_state_dict(load_file(path / ema_file(name)))
        except Exception as err:
            if _has_checksums(path):  # its files are as written: not damage, keep the error
                raise
            raise DamagedCheckpoint(
                f"could not load checkpoint {path} ({_cause(err)}). Its {MARKER} marker has no "
                "checksums (written by an older scalekd), so damage could not be found before "
                "loading. Resume from another checkpoint with checkpoint.resume=FOLDER, or start "
                "from scratch with checkpoint.resume=overwrite") from err
        for optimizer, saved in zip(accelerator._optimizers, groups):
            for group, own in zip(_innermost(optimizer), saved):
                group.update(own)
        return _trainer_state(path)["step"]

    @staticmethod
    def needs_universal(path: Path, world_size: int, deepspeed: bool) -> bool:
        """Whether resuming `path` on `world_size` processes needs DeepSpeed's universal
        format (a DeepSpeed checkpoint written by another process count)."""
        saved = _trainer_state(path)
        return deepspeed and saved.get("deepspeed", False) and saved["world_size"] != world_size

    @staticmethod
    def universal(accelerator: Accelerator, path: Path) -> Path:
        """`path` converted once to DeepSpeed's universal checkpoint (parameters and optimiser
        state whole, by name, re-sharded on load over any process count), in path/universal;
        the run's engine must be built with `"checkpoint": {"load_universal": true}`."""
        out = path / UNIVERSAL
        if accelerator.is_main_process and _problem(out, checksums=True):
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
            _write_synced(tmp / MARKER, json.dumps(_manifest(tmp, sorted(
                str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())), indent=1))
            shutil.rmtree(out, ignore_errors=True)  # a damaged earlier conversion
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
    return _torch_optimizer(optimizer).param_groups


def _torch_optimizer(optimizer) -> torch.optim.Optimizer:
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def _expected_bytes(accelerator: Accelerator, emas: dict[str, torch.nn.Module]) -> int:
    """About what the next checkpoint takes, from the state in memory: each optimiser's
    trained parameters (under ZeRO, DeepSpeed's fp32 partitions) and their state, and the EMAs.
    Read from the optimiser's state, keyed by those parameters (DeepSpeed's ZeRO-3 empties its
    torch optimiser's param_groups between steps). Under DeepSpeed every rank writes its own
    partitions (summed over ranks); otherwise rank 0 writes the replicated whole. Collective:
    every rank must call it."""
    def size(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))

    local = 0
    for optimizer in accelerator._optimizers:
        for param, state in _torch_optimizer(optimizer).state.items():
            local += size([param]) + size(state.values())
    local += sum(size(ema.state_dict().values()) for ema in emas.values())
    if accelerator.state.deepspeed_plugin is None or not (
            dist.is_available() and dist.is_initialized() and accelerator.num_processes > 1):
        return local
    total = torch.tensor([float(local)], device=accelerator.device)
    dist.all_reduce(total)
    return int(total.item())


def _files(folder: Path) -> list[str]:
    """Every file under `folder` (relative paths), the marker excepted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and p.name != MARKER)


def _manifest(folder: Path, files: list[str]) -> dict:
    """The marker's content for `files` of `folder`: each one's size and checksum."""
    return {"checksum": CHECKSUM, "files": {
        name: {"size": (folder / name).stat().st_size, CHECKSUM: file_checksum(folder / name)}
        for name in files}}


def _shared_manifest(folder: Path, accelerator: Accelerator) -> dict:
    """`_manifest` of every file of the checkpoint, whichever rank wrote it: rank 0 lists them
    (the folder is on a filesystem every rank sees), each rank checksums every N-th one (the
    files are still in its page cache when it wrote them on this node) and rank 0 gathers."""
    if not (dist.is_available() and dist.is_initialized() and accelerator.num_processes > 1):
        return _manifest(folder, _files(folder))
    listing = [_files(folder) if accelerator.is_main_process else None]
    dist.broadcast_object_list(listing, src=0)
    mine = listing[0][accelerator.process_index::accelerator.num_processes]
    parts = [None] * accelerator.num_processes
    dist.all_gather_object(parts, _manifest(folder, mine)["files"])
    return {"checksum": CHECKSUM,
            "files": dict(sorted((k, v) for part in parts for k, v in part.items()))}


def file_checksum(path: Path) -> str:
    """CRC-32 of the file, read in chunks (hex)."""
    value = 0
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            value = zlib.crc32(block, value)
    return f"{value:08x}"


def _read_marker(path: Path):
    """The marker of checkpoint `path`: "" for a legacy empty one, else its parsed JSON."""
    text = (path / MARKER).read_text()
    return json.loads(text) if text else ""


def _has_checksums(path: Path) -> bool:
    try:
        listed = _read_marker(path)
    except (OSError, ValueError):
        return False
    return isinstance(listed, dict) and "files" in listed


def _problem(path: Path, checksums: bool) -> Optional[str]:
    """Why the checkpoint folder `path` cannot be trusted, or None. Markers come in three
    forms: {"checksum", "files": {name: {size, checksum}}} (verified in full when `checksums`),
    {name: size} (older: sizes only) and empty (oldest: trusted as it was then). With
    `checksums`, the processes' random states must load too (_rng_problem)."""
    if not (path / MARKER).is_file():
        return f"it has no {MARKER} marker"
    try:
        listed = _read_marker(path)
    except (OSError, ValueError) as err:
        return f"its {MARKER} marker is unreadable ({err})"
    if listed == "":  # written before markers listed files: trusted as it was then
        return _rng_problem(path) if checksums else None
    if not isinstance(listed, dict) or not listed:
        return f"its {MARKER} marker lists no files"
    entries = listed.get("files", listed)
    if not isinstance(entries, dict) or not entries:
        return f"its {MARKER} marker lists no files"
    sizes = {n: e["size"] if isinstance(e, dict) else e for n, e in entries.items()}
    missing = sorted(n for n in sizes if not (path / n).is_file())
    if missing:
        return f"files listed in {MARKER} are missing: {', '.join(missing)}"
    changed = sorted(n for n in sizes if (path / n).stat().st_size != sizes[n])
    if changed:
        return f"files differ in size from {MARKER}: {', '.join(changed)}"
    if checksums and "files" in listed:
        algorithm = listed.get("checksum")
        if algorithm != CHECKSUM:
            return f"its {MARKER} marker uses an unknown checksum {algorithm!r}"
        damaged = sorted(n for n, e in entries.items() if file_checksum(path / n) != e[CHECKSUM])
        if damaged:
            return (f"files do not match their {CHECKSUM} checksum in {MARKER} (damaged or "
                    f"edited since written): {', '.join(damaged)}")
    # with the checksums (the checkpoint latest() picks): a scan of every checkpoint would
    # unpickle every RNG file of every checkpoint
    return _rng_problem(path) if checksums else None


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


def _trainer_state(path: Path) -> dict:
    """trainer_state.json of checkpoint `path`, or DamagedCheckpoint if unreadable."""
    try:
        saved = json.loads((path / "trainer_state.json").read_text())
        int(saved["step"])
        return saved
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise DamagedCheckpoint(
            f"checkpoint {path} has an unreadable trainer_state.json ({_cause(err)}). Resume "
            "from another checkpoint with checkpoint.resume=FOLDER, or start from scratch "
            "with checkpoint.resume=overwrite") from err


def write_run_file(path: Path, write: Callable[[Path], None], intact: str = "") -> None:
    """`write(tmp)` a file then rename it to `path`, so that a failed write (a full disk) never
    leaves a half file under the real name; RunWriteError says what failed and, in `intact`,
    what is still there."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, write)
    except WRITE_ERRORS as err:
        raise RunWriteError(f"could not write {path} ({_cause(err)}; {_free(path.parent)}). "
                            f"{intact}Free space or point run.dir elsewhere, then run the same "
                            "command again") from err


def write_run_folder(path: Path, write: Callable[[Path], None], intact: str = "") -> None:
    """`write(tmp)` a folder then swap it in for `path` (write_run_file for a folder written by
    another library, e.g. timm's save_for_hf): a failed write leaves the previous folder, or
    none, never a half one."""
    try:
        write_folder_atomically(path, write)
    except WRITE_ERRORS as err:
        raise RunWriteError(f"could not write {path}/ ({_cause(err)}; {_free(path.parent)}). "
                            f"{intact}Free space or point run.dir elsewhere, then run the same "
                            "command again") from err


def _free(folder: Path) -> str:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free there"
    except OSError:
        return "free space unknown"


def _cause(err: Optional[BaseException]) -> str:
    """A failure, in a line: disk full said plainly, else its type and first line."""
    if err is None:
        return "another process failed"
    if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        detail = err.strerror if err.strerror != os.strerror(err.errno) else ""
        return "no space left on device" + (f": {detail}" if detail else "")
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first}"


def _remove(checkpoint: Path) -> None:
    """Delete a checkpoint folder, renamed out of sight first: a kill during the (long) delete
    leaves a .tmp- folder, which the next start removes (remove_partial), never a half-deleted
    checkpoint."""
    aside = checkpoint.with_name(f".tmp-removed-{checkpoint.name}")
    os.rename(checkpoint, aside)
    shutil.rmtree(aside, ignore_errors=True)


def ema_file(student: str) -> str:
    """One EMA per student: ema.safetensors for the recipe's own, ema_<name> for the others."""
    return f"ema_{student}.safetensors" if student else "ema.safetensors"


def _plain(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


_write_synced = write_text_atomically  # a name of its own: tests make it fail
