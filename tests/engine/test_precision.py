"""The student's mixed precision: run.precision=auto (the default) takes the launcher's
(`accelerate launch --mixed_precision`, or its config file's mixed_precision, both handed over
as ACCELERATE_MIXED_PRECISION); an explicit run.precision wins and says so when it overrides
the launcher. Checked on what the Accelerator ends up with, in process and under
`accelerate launch` itself."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from helpers.runs import run
from scalekd.engine.distributed import (build_accelerator, deepspeed_config, precision_note,
                                        release_accelerate_state)
from scalekd.engine.validation import validate
from scalekd.recipe import Recipe, RecipeError, apply_overrides

ENV = "ACCELERATE_MIXED_PRECISION"


def recipe(*overrides: str) -> Recipe:
    return apply_overrides(Recipe(), ["student.name=resnet18", "data.source=synthetic",
                                      "data.num_samples=8", "distill.method=supervised",
                                      *overrides])


@pytest.mark.parametrize("launcher, precision, want, note", [
    (None, "auto", "no", "run.precision=auto: no launcher setting"),
    ("bf16", "auto", "bf16", "run.precision=auto: the launcher's"),
    ("no", "auto", "no", "run.precision=auto: the launcher's"),
    ("bf16", "no", "no", "run.precision=no overrides the launcher's mixed_precision=bf16"),
    ("no", "bf16", "bf16", "run.precision=bf16 overrides the launcher's mixed_precision=no"),
    (None, "bf16", "bf16", "(run.precision)"),
])
def test_the_accelerator_takes_the_launchers_precision_unless_the_recipe_sets_one(
        monkeypatch, launcher, precision, want, note):
    if launcher is None:
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, launcher)
    r = recipe(f"run.precision={precision}")
    validate(r)
    try:
        assert build_accelerator(r).mixed_precision == want
    finally:
        release_accelerate_state()
    assert note in precision_note(r)
    config = deepspeed_config(r, stage=2)  # what a DeepSpeed run is built with
    assert (config["bf16"]["enabled"], config["fp16"]["enabled"]) == (want == "bf16", False)


def test_an_unsupported_launcher_precision_is_refused_before_any_compute(monkeypatch):
    monkeypatch.setenv(ENV, "fp8")
    with pytest.raises(RecipeError, match="launcher's mixed precision 'fp8'.*run.precision"):
        validate(recipe())
    validate(recipe("run.precision=bf16"))  # an explicit value does not ask the launcher
    with pytest.raises(RecipeError, match="run.precision='fp32' must be auto"):
        validate(recipe("run.precision=fp32"))


REPORT = """\
import json, sys
import torch
from scalekd.engine.distributed import build_accelerator, release_accelerate_state
from scalekd.recipe import Recipe, apply_overrides

class Probe(torch.nn.Linear):
    def forward(self, x):  # what the student's layers compute in (outputs go back to fp32)
        self.computed_in = str(super().forward(x).dtype)
        return x


out = {}
for precision in ("auto", "no"):
    accelerator = build_accelerator(apply_overrides(Recipe(), [f"run.precision={precision}"]))
    probe = Probe(4, 4)
    accelerator.prepare(probe)(torch.ones(2, 4))  # under the Accelerator's autocast, if any
    out[precision] = [accelerator.mixed_precision, probe.computed_in]
    release_accelerate_state()
json.dump(out, open(sys.argv[1], "w"))
"""

CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: 'NO'
num_machines: 1
num_processes: 1
use_cpu: true
mixed_precision: {precision}
"""


@pytest.mark.slow  # two launches of 15-25 s each
@pytest.mark.multiprocess
def test_accelerate_launch_sets_the_precision(tmp_path):
    """Through accelerate's own path: a config file's mixed_precision, and --mixed_precision
    on the command line beating the file, as accelerate has it."""
    script = tmp_path / "report.py"
    script.write_text(REPORT)
    got = {}
    for name, precision, flags in [("config file", "bf16", []),
                                   ("command line", "no", ["--mixed_precision", "bf16"])]:
        config = tmp_path / f"{precision}.yaml"
        config.write_text(CONFIG.format(precision=precision))
        out = tmp_path / f"{name}.json"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               *flags, str(script), str(out)]
        run(cmd, tmp_path / f"{name}.log", timeout=300)
        got[name] = json.loads(Path(out).read_text())
    bf16, fp32 = ["bf16", "torch.bfloat16"], ["no", "torch.float32"]
    assert got == {"config file": {"auto": bf16, "no": fp32},
                   "command line": {"auto": bf16, "no": fp32}}
