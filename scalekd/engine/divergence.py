"""Non-finite losses: found on the device, never written into a checkpoint or an export,
reported with the step, the student, the term and the last good checkpoint.

`run.on_nonfinite=stop` (default) adds no host synchronisation to ordinary steps: each
micro-batch folds the finiteness of every loss term into flags on the device, and the step where
a term first went non-finite is recorded there too. The flags are read where the trainer
synchronises anyway: log steps (`run.log_every`), evaluations, checkpoint saves, the end of the
job. So the steps between the divergence and the next such point are computed in vain (their
weights are non-finite and never saved), and the run stops with an error naming the first bad
step; every rank reads the same gathered flags, so all stop together. Before every checkpoint
and export the weights themselves are checked too: an update can overflow from a finite loss.

`run.on_nonfinite=skip` must decide before each optimiser step whether to apply it, so it costs
one boolean read from the device per optimiser step and student (all-reduced over processes),
the price torch's GradScaler pays for the same decision. A skipped step leaves the weights and
optimiser state as they were (its gradients are dropped); more than `run.max_skipped_steps` in
one job stop the run as `stop` does. Under DeepSpeed the engine applies the update inside
backward, so `skip` is refused there by validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch


class TrainingDiverged(RuntimeError):
    """A loss went non-finite; nothing after the last good checkpoint was saved."""


class NonFiniteGuard:
    def __init__(self, mode: str, max_skipped: int, first_step: int, device: torch.device):
        """`first_step`: the optimiser step this job starts after (its resume step)."""
        self.mode, self.max_skipped = mode, max_skipped
        self.first_step, self.device = first_step, device
        self.steps = torch.zeros((), dtype=torch.long, device=device)  # steps done this job
        self.bad_step = torch.full((), -1, dtype=torch.long, device=device)  # first bad one
        self.names: dict[str, list[str]] = {}  # student -> its terms, then "total"
        self.now: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # this step: bad, values
        self.first: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # at the first bad step
        self.skipped = 0

    def observe(self, student: str, terms: dict[str, torch.Tensor], total: torch.Tensor) -> None:
        """Fold one micro-batch's loss terms of `student` into the flags (on the device)."""
        values = torch.stack([v.detach().float().reshape(()) for v in (*terms.values(), total)])
        bad = ~torch.isfinite(values)
        if student not in self.names:
            self.names[student] = [*terms, "total"]
            self.now[student] = (torch.zeros_like(bad), torch.zeros_like(values))
            self.first[student] = (torch.zeros_like(bad), torch.zeros_like(values))
        was_bad, was = self.now[student]
        self.now[student] = (was_bad | bad, torch.where(bad, values, was))

    def skip(self, student: str, step: int, accelerator) -> Optional[str]:
        """run.on_nonfinite=skip, at the micro-batch that updates (optimiser step `step`):
        why the update of `student` must be skipped, or None to apply it (every rank decides
        alike). One boolean synchronisation."""
        if self.mode != "skip" or not accelerator.sync_gradients:
            return None
        bad = self.now[student][0].any().to(torch.float32).reshape(1)
        if accelerator.num_processes > 1:
            bad = accelerator.reduce(bad, reduction="sum")
        if not bad.item():
            return None
        self.skipped += 1
        where = self._where(student, step, self.now[student])
        if self.skipped > self.max_skipped:
            raise TrainingDiverged(
                f"{where}: more than run.max_skipped_steps={self.max_skipped} steps skipped in "
                "this job. Lower optim.lr (or raise optim.warmup_epochs), or look at the data "
                "of these steps")
        return (f"{where} (on this rank, or another): update skipped, {self.skipped} of "
                f"run.max_skipped_steps={self.max_skipped} in this job")

    def end_step(self) -> None:
        """After each optimiser step: record the first step with a non-finite term (stop)."""
        if self.mode == "stop" and self.now:
            bad_now = torch.stack([bad.any() for bad, _ in self.now.values()]).any()
            take = bad_now & (self.bad_step < 0)
            self.bad_step = torch.where(take, self.steps, self.bad_step)
            for name, (bad, values) in self.now.items():
                first_bad, first_values = self.first[name]
                self.first[name] = (torch.where(take, bad, first_bad),
                                    torch.where(take, values, first_values))
        self.steps += 1
        for name, (bad, values) in self.now.items():
            self.now[name] = (torch.zeros_like(bad), values)

    def check(self, accelerator, last_good: Callable[[], Optional[Path]]) -> None:
        """At a point where the trainer synchronises anyway: raise TrainingDiverged on every
        rank if any rank recorded a non-finite loss. `last_good`: the latest checkpoint."""
        if self.mode != "stop" or not self.names:
            return
        local = torch.cat([self.bad_step.double().reshape(1)]  # exact step numbers
                          + [torch.cat([bad.double(), values.double()]) for bad, values
                             in self.first.values()])
        rows = accelerator.gather(local.reshape(1, -1)).cpu()
        steps = [int(s) for s in rows[:, 0]]
        if max(steps) < 0:
            return
        rank = min((s, r) for r, s in enumerate(steps) if s >= 0)[1]
        row, at, parts = rows[rank, 1:], 0, []
        for name, terms in self.names.items():
            n = len(terms)
            bad, values = row[at:at + n].bool(), row[at + n:at + 2 * n]
            at += 2 * n
            if bad.any():
                parts.append(self._where(name, self.first_step + steps[rank] + 1,
                                         (bad, values)))
        raise TrainingDiverged(
            f"{'; '.join(parts)} (rank {rank}). Nothing from that step on was saved; the last "
            f"good checkpoint is {last_good() or 'none (no checkpoint was written)'}. Lower "
            "optim.lr (or raise optim.warmup_epochs), or run.on_nonfinite=skip to skip such "
            "steps (at most run.max_skipped_steps)")

    def check_weights(self, models: list[torch.nn.Module], step: int, accelerator,
                      last_good: Callable[[], Optional[Path]]) -> None:
        """Before a checkpoint or an export: the weights every rank holds are finite. An update
        can overflow from a finite loss (optim.lr=inf), and the loss only shows it one step
        later; one pass over the parameters per save (ZeRO-3: each rank's own shards)."""
        finite = torch.stack([torch.isfinite(getattr(p, "ds_tensor", p)).all()
                              for m in models for p in m.parameters()]).all()
        flags = accelerator.gather(finite.float().reshape(1))
        if bool(flags.min() < 1):
            raise TrainingDiverged(
                f"the weights are non-finite at step {step}, so they were not saved; the last "
                f"good checkpoint is {last_good() or 'none (no checkpoint was written)'}. "
                "Lower optim.lr (or raise optim.warmup_epochs)")

    def _where(self, student: str, step: int, flags: tuple[torch.Tensor, torch.Tensor]) -> str:
        bad, values = (t.cpu() for t in flags)
        terms = ", ".join(f"{n} = {v.item():g}" for n, b, v in zip(self.names[student], bad,
                                                                   values) if b)
        who = f"student {student!r}" if student else "the student"
        return f"non-finite loss at step {step} for {who}: {terms}"
