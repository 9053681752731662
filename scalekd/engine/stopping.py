"""Stopping a job early and cleanly: on a signal, before a time budget runs out, or after a set
number of steps, always at a step boundary and with a checkpoint.

Slurm (or the batch shell forwarding `--signal=B:USR1@grace`) sends SIGUSR1 or SIGTERM to the
trainer; often only rank 0 gets it. Every rank therefore takes part in a max all-reduce of its
stop flag after each optimiser step, and all stop after the same step: no rank is left waiting in
a collective that the others never enter. The flag is a host tensor reduced over gloo, so this
costs the host a round trip between the ranks but never waits for the GPU's queue. The handler itself only sets a flag (saving from
inside a signal handler could interrupt a collective halfway).

Once every rank has stopped and the checkpoint is written, rank 0 records the clean stop in
RUN_DIR/STOPPED. A batch script needs that record to tell a clean stop from a failure, because a
launcher may exit non-zero after its processes stopped cleanly: torch's elastic agent (what
`accelerate launch` runs for several processes) re-raises the SIGTERM it received.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Optional

import torch.distributed as dist

from scalekd.engine.checkpoint import write_run_file
from scalekd.engine.distributed import any_rank, several_processes
from scalekd.engine.run_folder import STOPPED

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
_clock = time.monotonic  # a seam for tests


class StopRequests:
    def __init__(self, time_budget_s: float, steps_per_job: int):
        """The time budget counts from here: create it when the job starts."""
        self.time_budget_s, self.steps_per_job = time_budget_s, steps_per_job
        self.started = _clock()
        self.received: Optional[str] = None
        self._previous: dict = {}
        self._group = None  # the gloo group the stop flags are reduced over (_host_group)

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum, _frame) -> None:
        self.received = signal.Signals(signum).name

    def reason(self, steps_this_job: int, step_s: float, save_s: float) -> Optional[str]:
        """Why to stop after this step (agreed by all ranks), or None to go on. `step_s` and
        `save_s`: the latest step and checkpoint durations, the margin the budget keeps."""
        local = None
        if self.received:
            local = f"received {self.received}"
        elif self.steps_per_job and steps_this_job >= self.steps_per_job:
            local = f"run.steps_per_job={self.steps_per_job} reached"
        elif self.time_budget_s:
            left = self.time_budget_s - (_clock() - self.started)
            if left < 2 * step_s + 2 * save_s:  # room for one more step and a checkpoint
                local = f"run.time_budget_s={self.time_budget_s:g} nearly spent"
        if not several_processes():
            return local
        # a host tensor over a host (gloo) group: reading it never waits for the GPU's queue
        others = any_rank(local is not None, group=self._host_group())
        return local or ("another rank stops" if others else None)

    def _host_group(self):
        """The default group if it is gloo already (CPU runs), else a gloo group over the same
        ranks, made once (every rank asks at the same first step: a collective)."""
        if dist.get_backend() == "gloo":
            return None
        if self._group is None:
            self._group = dist.new_group(backend="gloo")
        return self._group


def write_stop_record(run_dir: Path, step: int, total_steps: int, reason: str,
                      received: Optional[str], checkpoint: Optional[Path]) -> None:
    """Rank 0, once every rank has stopped after `step`: the record of the clean stop (written
    under a temporary name and renamed, like the other run files). `checkpoint`: the folder of
    the checkpoint of `step`, None if it could not be written (checkpoint.on_error=continue)."""
    record = {"step": step, "total_steps": total_steps, "reason": reason, "signal": received,
              "checkpoint": str(checkpoint.relative_to(run_dir)) if checkpoint else None}
    write_run_file(run_dir / STOPPED,
                   lambda path: path.write_text(json.dumps(record, indent=1) + "\n"))
