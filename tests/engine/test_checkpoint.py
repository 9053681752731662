"""Checkpoints: complete or invisible, the last K kept, partial writes cleaned up."""

import pytest
import torch
from accelerate import Accelerator

from scalekd.engine.checkpoint import MARKER, Checkpoints


@pytest.fixture
def accelerator():
    acc = Accelerator(cpu=True)
    model = acc.prepare(torch.nn.Linear(3, 2))
    return acc, model


def test_keep_last_k_and_resume_latest(tmp_path, accelerator):
    acc, model = accelerator
    ckpts = Checkpoints(tmp_path, keep=2)
    for step in (1, 2, 3):
        with torch.no_grad():
            model.weight.fill_(step)
        ckpts.save(acc, step, emas={})
    assert [p.name for p in ckpts.complete()] == ["step_000000002", "step_000000003"]
    with torch.no_grad():
        model.weight.zero_()
    assert Checkpoints.load(acc, ckpts.latest(), emas={}) == 3
    assert torch.all(model.weight == 3)


def test_incomplete_and_partial_are_never_resumed(tmp_path, accelerator):
    acc, _ = accelerator
    ckpts = Checkpoints(tmp_path, keep=3)
    ckpts.save(acc, 5, emas={})
    (tmp_path / ".tmp-step_000000009").mkdir()  # a write killed half-way
    broken = tmp_path / "step_000000007"
    broken.mkdir()  # renamed by hand, or a marker lost: not trusted
    with pytest.warns(UserWarning, match="step_000000007: it has no COMPLETE marker"):
        assert ckpts.latest().name == "step_000000005"
    ckpts.remove_partial(acc)
    assert not (tmp_path / ".tmp-step_000000009").exists()
    assert (ckpts.latest() / MARKER).is_file()
