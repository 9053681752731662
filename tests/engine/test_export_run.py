"""`scalekd export RUN` (re)writes a run's export folder: from its export, or from its latest
checkpoint where the export is gone (or the run was stopped before the end)."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from scalekd.cli import main


def test_export_rewrites_the_export_from_the_checkpoint(trained_tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_tiny_run, run)
    before = load_file(run / "export" / "student.safetensors")
    shutil.rmtree(run / "export")

    main(["export", str(run)])
    printed = capsys.readouterr().out.split()
    export = run / "export"
    assert printed == [str(export / "student.safetensors"), str(export / "student.json"),
                       str(export / "student_timm")]
    after = load_file(export / "student.safetensors")
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    timm_weights = load_file(export / "student_timm" / "model.safetensors")
    assert all(torch.equal(timm_weights[k], before[k]) for k in before)

    main(["export", str(run), "--student", "alone", "--ema"])  # the checkpoint's EMA weights
    assert (export / "alone" / "student_ema_timm" / "config.json").is_file()


def test_export_without_a_run_or_weights_says_so(trained_tiny_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(tmp_path)])
    assert exit_.value.code == 2
    assert "is not a run folder" in capsys.readouterr().err

    empty = tmp_path / "empty"  # a run stopped before its first checkpoint
    empty.mkdir()
    shutil.copy(trained_tiny_run / "recipe.json", empty)
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(empty)])
    assert exit_.value.code == 2
    assert "has neither an export/ nor a complete checkpoint" in capsys.readouterr().err
