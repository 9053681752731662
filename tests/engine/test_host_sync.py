"""An ordinary (non-log) training step never makes the host wait for the device.

On a GPU the host queues a step's kernels and runs ahead; a call that needs a value or a size
from the device (`.item()`, `.tolist()`, `if tensor:`, `float(tensor)`, a boolean-mask index,
`torch.cuda.synchronize`, ...) stalls it until the device has caught up. There is no GPU here,
so the test counts those calls on the CPU instead: every one of them is patched to record
itself, a tiny run trains with the users' settings (loader workers, Mixup/CutMix, label
smoothing, drop path, every distillation method, unlabelled images, a cached teacher), and
each step's record (from the moment its batch is in hand to the next batch) must be empty
unless the step writes the TensorBoard window, where the loss sums are read.
"""

from __future__ import annotations

import traceback

import pytest
import torch

from helpers.caches import cache_run, cached, write_cache
from helpers.runs import train_in_process
from scalekd.data.loader import TrainData

LOG_EVERY = 4  # the tiny runs have 4 steps an epoch: an epoch's end is a log step

# calls that make the host wait for the device (on CUDA tensors), by owner and name
SYNCS = [(torch.Tensor, name) for name in (
    "item", "tolist", "numpy", "cpu", "nonzero", "__bool__", "__float__", "__int__",
    "__index__")] + [(torch, name) for name in (
        "nonzero", "equal", "allclose", "masked_select", "unique", "is_nonzero")] + [
    (torch.cuda, "synchronize"), (torch.cuda.Event, "synchronize"),
    (torch.cuda.Event, "elapsed_time"), (torch.cuda.Stream, "synchronize")]


# host tensors read on the host, which stay on the CPU in a GPU run too: (file, function)
HOST_READS = {
    # torch's Adam(W) keeps its step count in a CPU tensor (unless capturable or fused) and
    # reads it with .item() on purpose ("item is significantly faster than a cpu tensor")
    ("torch/optim/optimizer.py", "_get_value"),
}


def _has_bool_tensor(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


class SyncRecorder:
    """Records sync calls per training batch: `batches[i]` holds the calls made from the
    moment batch i left the loader to the moment the next batch was asked for."""

    def __init__(self, monkeypatch):
        self.batches: list[list[str]] = []
        self.paused = True  # outside the training loop (building, the loader's own work)
        for owner, name in SYNCS:
            monkeypatch.setattr(owner, name, self._recording(name, getattr(owner, name)))
        for name in ("__getitem__", "__setitem__"):  # x[mask]: its size comes from the device
            monkeypatch.setattr(torch.Tensor, name,
                                self._recording(f"{name} with a boolean mask",
                                                getattr(torch.Tensor, name), masked_only=True))
        original_epoch = TrainData.epoch

        def epoch(data, *args, **kwargs):
            batches = iter(original_epoch(data, *args, **kwargs))
            while True:
                self.paused = True
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                finally:
                    self.paused = False
                self.batches.append([])
                yield batch

        monkeypatch.setattr(TrainData, "epoch", epoch)

    def _recording(self, name, original, masked_only=False):
        def call(*args, **kwargs):
            if (not self.paused and self.batches
                    and (not masked_only or _has_bool_tensor(args[1]))):
                where = traceback.extract_stack(limit=2)[0]
                if not any(where.filename.endswith(f) and where.name == function
                           for f, function in HOST_READS):
                    self.batches[-1].append(f"{name} in {where.name} at "
                                            f"{where.filename}:{where.lineno}")
            return original(*args, **kwargs)

        return call

    def check(self, steps: int) -> None:
        assert len(self.batches) == steps
        # the last step is a log step too (and the run's evaluation and export follow it)
        ordinary = {i + 1: calls for i, calls in enumerate(self.batches)
                    if (i + 1) % LOG_EVERY and i + 1 != steps}
        assert ordinary and not any(ordinary.values()), (
            "host syncs on ordinary steps:\n" + "\n".join(sorted(
                {call for calls in ordinary.values() for call in calls})))
        # the recorder sees the syncs that do happen: the log steps read the loss sums
        assert all(self.batches[i - 1] for i in range(LOG_EVERY, steps + 1, LOG_EVERY))


USERS_SETTINGS = ["data.workers=1", "aug.mixup=0.2", "aug.cutmix=1.0", "aug.smoothing=0.1",
                  "student.drop_path=0.1", f"run.log_every={LOG_EVERY}"]
EVERY_METHOD = ["students.dkd.distill.method=dkd", "students.dkd.distill.weights={}",
                "students.dist.distill.method=dist", "students.dist.distill.weights={}",
                "students.bkl.distill.method=bkl", "students.bkl.distill.weights={}",
                "students.bkl.distill.hard_loss=bce", "students.bkl.ema.decay=0.9",
                "students.scalekd.distill.method=scalekd",
                "students.scalekd.distill.weights={}"]


def test_no_host_sync_on_ordinary_steps_of_every_method(monkeypatch, tiny_run, tmp_path):
    recorder = SyncRecorder(monkeypatch)
    result = train_in_process(tiny_run(tmp_path / "run", *USERS_SETTINGS, *EVERY_METHOD,
                                       "optim.clip_grad=1.0"))
    recorder.check(result.steps)


@pytest.mark.slow
def test_no_host_sync_with_unlabelled_images(monkeypatch, tiny_run, tmp_path):
    recorder = SyncRecorder(monkeypatch)
    result = train_in_process(tiny_run(
        tmp_path / "run", "data.workers=1", f"run.log_every={LOG_EVERY}", "run.epochs=1",
        "data.num_samples=160", "data.labels_per_class=2", "data.unlabelled=true",
        "students.bce.distill.hard_loss=bce", "students.bce.distill.weights={}",
        "students.dkd.distill.method=dkd", "students.dkd.distill.weights={}"))
    recorder.check(result.steps)


@pytest.mark.slow
def test_no_host_sync_with_a_cached_teacher(monkeypatch, tiny_teacher, tmp_path):
    overrides = cache_run(tmp_path / "run", tiny_teacher, "data.workers=1", "aug.mixup=0.2",
                          f"run.log_every={LOG_EVERY}")
    write_cache(tmp_path / "cache", overrides)
    recorder = SyncRecorder(monkeypatch)
    result = train_in_process(overrides + cached(tmp_path / "cache"))
    recorder.check(result.steps)
