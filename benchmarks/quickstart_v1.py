"""The quickstart's setting before issue 20 made it faster: a ResNet-18 teacher trained 2 epochs on
every label, the student 60 epochs over its 100 labels per class, in contiguous (NCHW) memory.
benchmarks/logit_methods.py and scalekd_methods.py keep it, so that their figures stay
comparable with the tables measured with it (docs/recipes.md, docs/scalekd.md); its runs live in
runs/quickstart_v1, apart from the quickstart's own cached teacher."""

import runpy
from pathlib import Path

from scalekd.recipe import Recipe, apply_overrides

QUICKSTART = runpy.run_path(str(Path(__file__).resolve().parents[1] / "recipes" / "quickstart.py"))
ROOT = "runs/quickstart_v1"


def recipe() -> Recipe:
    """The KD student's run, as recipes/quickstart.py's recipe() returned it before issue 20."""
    return apply_overrides(QUICKSTART["recipe"](), [
        f"run.dir={ROOT}/{{name}}", "run.epochs=60", "student.channels_last=false",
        "teacher.name=resnet18", "teacher.kwargs={}",
        f"teacher.checkpoint={ROOT}/teacher/export/student.safetensors",
        "teacher.channels_last=false", "distill.weights={'hard':0.5,'kd':0.5}",
        "checkpoint.every_epochs=20", "eval.every_epochs=20"])


def teacher_recipe(distilled: Recipe) -> Recipe:
    """The teacher trained alone on every label: 2 epochs."""
    return apply_overrides(QUICKSTART["teacher_recipe"](distilled),
                           ["run.epochs=2", "data.labels_per_class=0"])
