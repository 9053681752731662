"""A fresh start in a used run folder: refused with checkpoint.resume=never (it would mix the
two runs: pruning deleted the new run's checkpoints, the old FINISHED stayed), cleared first with
checkpoint.resume=overwrite."""

import pytest

from helpers.runs import complete_checkpoints, exported, train_in_process
from scalekd.engine.run_folder import FINISHED, clear
from scalekd.recipe import RecipeError


def test_never_is_refused_in_a_used_folder_and_overwrite_starts_clean(tmp_path, tiny_run):
    run_dir = tmp_path / "run"
    old = train_in_process(tiny_run(run_dir, "eval.teacher=false"))  # 8 steps, to FINISHED
    assert old.finished and (run_dir / FINISHED).read_text() == "8\n"

    with pytest.raises(RecipeError, match=r"checkpoint.resume=never, but run.dir=.* holds a "
                       r"previous run \(step_000000004, step_000000008, FINISHED, export/\).*"
                       r"checkpoint.resume=overwrite"):
        train_in_process(tiny_run(run_dir, "run.epochs=1", "checkpoint.resume=never"))
    assert [p.name for p in complete_checkpoints(run_dir)] == ["step_000000004",
                                                              "step_000000008"]

    new = train_in_process(tiny_run(run_dir, "run.epochs=1", "checkpoint.resume=overwrite",
                                    "optim.lr=3e-3", "eval.teacher=false"))
    assert new.finished and new.steps == 4
    assert [p.name for p in complete_checkpoints(run_dir)] == ["step_000000004"]
    assert (run_dir / FINISHED).read_text() == "4\n"
    fresh = train_in_process(tiny_run(tmp_path / "fresh", "run.epochs=1", "optim.lr=3e-3",
                                      "eval.teacher=false"))
    a, b = exported(run_dir), exported(fresh.run_dir)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)  # nothing of the old run


def test_a_killed_clear_is_finished_by_the_next(tmp_path):
    (tmp_path / "checkpoints" / "step_000000004").mkdir(parents=True)
    (tmp_path / ".tmp-old-export").mkdir()  # a clear killed after renaming, before deleting
    (tmp_path / FINISHED).write_text("4\n")
    (tmp_path / "wandb" / "offline-run-1").mkdir(parents=True)  # run.log_with=...,wandb
    (tmp_path / "notes.txt").write_text("the user's")
    clear(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
