"""A new method is one new file in scalekd/distill/ (docs/methods.md, "Adding a method: one
file"): the package finds it without a list to edit, and its own options are checked and built."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHECK = """
import torch
from scalekd.distill import DISTILLERS, create_distiller
from scalekd.engine.validation import validate
from scalekd.models.teacher import TeacherOutput
from scalekd.recipe import Recipe, RecipeError, apply_overrides

assert "logit_mse" in DISTILLERS, sorted(DISTILLERS)
base = apply_overrides(Recipe(), [
    "data.source=synthetic", "data.num_samples=64", "data.batch_size=16",
    "student.name=resnet18", "teacher.name=resnet18", "teacher.pretrained=true",
    "optim.name=adamw", "distill.method=logit_mse", "distill.weights.mse=1"])
validate(base)
try:
    validate(apply_overrides(base, ["distill.options.centre=false"]))
    raise SystemExit("a misspelt option passed")
except RecipeError as err:
    assert err.problems == ["distill.options has ['centre'], not options of 'logit_mse'; "
                            "its options are ['center']"], err.problems
try:
    validate(apply_overrides(base, ["distill.options.center=maybe"]))
    raise SystemExit("a value of another type passed")
except RecipeError as err:
    assert err.problems == ["distill.options: center='maybe': expected true or false"], err.problems
student, teacher = torch.randn(4, 10), torch.randn(4, 10) + 10.0
targets = torch.tensor([0, 1, 2, -1])  # -1: an unlabelled image
centred = create_distiller(base, 10)(student, TeacherOutput(teacher), targets)
raw = create_distiller(apply_overrides(base, ["distill.options.center=false"]), 10)(
    student, TeacherOutput(teacher), targets)
assert set(centred) == {"hard", "mse"}
assert raw["mse"] > centred["mse"] + 50  # the shift of 10 counts uncentred only
print("ok")
"""


def readme_method() -> str:
    readme = (ROOT / "docs" / "methods.md").read_text()
    return re.search(r"```python\n# scalekd/distill/logit_mse.py\n(.*?)```", readme, re.S)[1]


def test_a_method_added_as_one_file_is_found_checked_and_built(tmp_path):
    copy = tmp_path / "scalekd"
    shutil.copytree(ROOT / "scalekd", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "distill" / "logit_mse.py").write_text(readme_method())
    done = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, capture_output=True,
                          text=True, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin",
                                          "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_the_installed_package_does_not_hold_the_example():
    from scalekd.distill import DISTILLERS

    assert "logit_mse" not in DISTILLERS  # the test above adds it to a copy only
