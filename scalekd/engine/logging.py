"""What a user sees: a progress bar (rate, ETA) and TensorBoard scalars, main process only."""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm


class RunLog:
    def __init__(self, folder: Path, total_steps: int, start_step: int, enabled: bool):
        self.enabled = enabled
        self.writer = None
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not enabled,
                        unit="step", dynamic_ncols=True, smoothing=0.1,
                        # a terminal redraws; a log file (SLURM, CI) gets a line a minute
                        mininterval=0.5 if sys.stderr.isatty() else 60)
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(folder))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            try:
                for name, value in values.items():
                    self.writer.add_scalar(name, value, step)
            except OSError as err:  # disk full: TensorBoard's writer thread has died
                self._lost(err)

    def _lost(self, err: OSError) -> None:
        """Stop logging to TensorBoard, say so, and train on: checkpoints report their own
        failures (checkpoint.on_error), and losing curves must not lose the run."""
        self.writer = None
        self.print(f"warning: TensorBoard logging stopped, its folder cannot be written ({err}); "
                   "training goes on")

    def advance(self, postfix: Optional[dict[str, str]] = None) -> None:
        """One step on the bar; `postfix` (if given) replaces the values shown beside it."""
        self.bar.update(1)
        if postfix is not None:
            self.bar.set_postfix(postfix, refresh=False)

    def print(self, text: str) -> None:
        if self.enabled:
            self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError as err:
                self._lost(err)


def read_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every TensorBoard scalar a run wrote: tag -> {step: value}. Over several jobs of one run
    (resumes), a later write of a step wins."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for events in sorted((Path(run_dir) / "tb").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return out


def memory_gb(device: torch.device) -> float:
    """Peak memory: CUDA allocator peak on GPU, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
