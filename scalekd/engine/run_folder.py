"""The run folder a run starts in: a used one is resumed, refused or cleared, never mixed.

`checkpoint.resume=never` in a folder holding another run's checkpoints would mix the two runs:
the old run's higher step numbers sort after the new run's, so pruning deletes the new
checkpoints at once, a restart resumes the old run, and the old FINISHED marker tells a batch
script there is nothing left to do. Such a folder is refused, unless the user asks for
`checkpoint.resume=overwrite`, which removes the previous run's outputs first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from scalekd.recipe import Recipe, RecipeError

FINISHED = "FINISHED"  # marker file in the run folder once the whole schedule is done
STOPPED = "STOPPED"  # the record of a clean early stop (scalekd/engine/stopping.py)
# what a run writes (wandb: W&B's files, run.log_with=...,wandb; trackers.json: the W&B and
# MLflow run ids, engine/logging.TRACKER_RUNS)
OUTPUTS = ("checkpoints", "export", "tb", "wandb", "trackers.json", "metrics.json", FINISHED,
           STOPPED)
ASIDE = ".tmp-old-"  # outputs of a previous run being removed


def previous_run(run_dir: Path) -> list[str]:
    """What a previous run left in `run_dir` that a fresh start would mix with."""
    found = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    if (run_dir / FINISHED).exists():
        found.append(FINISHED)
    if (run_dir / "export").exists():
        found.append("export/")
    return found


def check_fresh_start(recipe: Recipe) -> None:
    """checkpoint.resume=never is refused in a folder a previous run used."""
    run_dir = recipe.run.path
    if recipe.checkpoint.resume != "never":
        return
    found = previous_run(run_dir)
    if found:
        raise RecipeError([
            f"checkpoint.resume=never, but run.dir={str(run_dir)!r} holds a previous run "
            f"({', '.join(found[:4])}{', ...' if len(found) > 4 else ''}); a fresh start there "
            "would mix the two runs. Choose another run.dir, resume it with "
            "checkpoint.resume=auto, or pass checkpoint.resume=overwrite to delete its "
            "checkpoints, export, TensorBoard and W&B logs and FINISHED first"])


def clear(run_dir: Path) -> None:
    """Remove a previous run's outputs from `run_dir`. Each is first renamed aside (one atomic
    step: a kill leaves the output whole or out of sight) and then deleted; leftovers of a
    clear that was killed are deleted too."""
    for name in OUTPUTS:
        if (run_dir / name).exists():
            (run_dir / name).rename(run_dir / f"{ASIDE}{name}")
    for path in run_dir.glob(f"{ASIDE}*"):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
