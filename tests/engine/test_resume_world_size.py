"""Resuming onto another number of processes: a DDP checkpoint of 2 processes continues on 1
and one of 1 on 2, with the same global batch and data order, ending where an uninterrupted run
ends (to float summation order); a DeepSpeed checkpoint refuses another count, saying why."""

import json

import pytest
import torch

from helpers.runs import exported, launch_command, run, scalars, train_in_process

pytestmark = pytest.mark.multiprocess
CUT = ["run.log_every=1", "run.steps_per_job=3"]  # of the tiny run's 8 steps


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_run):
    return train_in_process(tiny_run(tmp_path_factory.mktemp("whole") / "run",
                                     "run.log_every=1")).run_dir


def assert_continues_as(run_dir, reference) -> None:
    got, ref = scalars(run_dir), scalars(reference)
    for step in range(1, 9):
        assert got["loss/total"][step] == pytest.approx(ref["loss/total"][step], rel=1e-4), step
    a, b = exported(run_dir), exported(reference)
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_two_processes_then_one(tmp_path, tiny_run, uninterrupted):
    run_dir = tmp_path / "run"
    run(launch_command(tiny_run(run_dir, *CUT), deepspeed=False), tmp_path / "two.log", 600)
    state = json.loads(next((run_dir / "checkpoints").glob("step_*/trainer_state.json"))
                       .read_text())
    assert state == {"step": 3, "world_size": 2, "deepspeed": False}
    assert train_in_process(tiny_run(run_dir, "run.log_every=1")).steps == 8
    assert_continues_as(run_dir, uninterrupted)


def test_one_process_then_two(tmp_path, tiny_run, uninterrupted):
    run_dir = tmp_path / "run"
    assert train_in_process(tiny_run(run_dir, *CUT)).steps == 3
    run(launch_command(tiny_run(run_dir, "run.log_every=1"), deepspeed=False),
        tmp_path / "two.log", 600)
    assert "resumed from" in (tmp_path / "two.log").read_text()
    assert_continues_as(run_dir, uninterrupted)


def test_a_zero3_checkpoint_names_the_process_count_it_needs(tmp_path):
    from accelerate import Accelerator

    from scalekd.engine.checkpoint import Checkpoints

    folder = tmp_path / "step_000000003"
    folder.mkdir()
    (folder / "trainer_state.json").write_text(
        json.dumps({"step": 3, "world_size": 2, "deepspeed": True}))
    with pytest.raises(ValueError, match="written by 2 process.*this run has 1.*Resume with 2"):
        Checkpoints.load(Accelerator(cpu=True), folder, emas={})
