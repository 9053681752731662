import json
import shutil

import pytest
import torch

from scalekd.cli import main
from scalekd.engine.eval_run import evaluate_run
from scalekd.engine.saved_run import SavedRun


def test_eval_reproduces_the_runs_own_final_evaluation(trained_tiny_run):
    final = json.loads((trained_tiny_run / "metrics.json").read_text())
    for student, prefix in (("", ""), ("alone", "alone/")):
        metrics = evaluate_run(SavedRun(trained_tiny_run, student=student))
        assert metrics["student"]["top1"] == pytest.approx(final[f"{prefix}eval/top1"])
        assert metrics["student"]["top5"] == pytest.approx(final[f"{prefix}eval/top5"])


@pytest.mark.parametrize("student, ema", [("", False), ("alone", False), ("alone", True)])
def test_without_an_export_the_student_comes_from_the_latest_checkpoint(trained_tiny_run,
                                                                       tmp_path, student, ema):
    # the final checkpoint holds the weights the export was made from
    unexported = tmp_path / "run"
    shutil.copytree(trained_tiny_run, unexported, ignore=shutil.ignore_patterns("export"))
    exported = SavedRun(trained_tiny_run, student=student).student(ema=ema).state_dict()
    restored = SavedRun(unexported, student=student).student(ema=ema).state_dict()
    assert restored.keys() == exported.keys()
    for key, value in exported.items():
        assert torch.equal(value, restored[key]), key


def test_a_run_with_neither_export_nor_checkpoint_says_so(trained_tiny_run, tmp_path):
    bare = tmp_path / "run"
    shutil.copytree(trained_tiny_run, bare,
                    ignore=shutil.ignore_patterns("export", "checkpoints"))
    with pytest.raises(FileNotFoundError, match="neither an export/ nor a complete checkpoint"):
        SavedRun(bare).student()


def test_eval_command_with_teacher_and_relabelled_set(trained_tiny_run, tmp_path, capsys):
    names = [str(i) for i in range(64)]  # the synthetic source keys images by index
    labels = tmp_path / "relabelled.json"
    labels.write_text(json.dumps({n: [0, 1, 2, 3, 4] for n in names[:32]}))
    out = tmp_path / "eval.json"
    main(["eval", str(trained_tiny_run), "--teacher", "--labels", str(labels),
          "--out", str(out)])
    printed = capsys.readouterr().out
    metrics = json.loads(out.read_text())
    assert metrics["images"] == 64
    assert metrics["student"]["relabelled"]["images"] == 32
    assert 0 <= metrics["agreement"]["top1_agreement"] <= 100
    assert metrics["agreement"]["mean_kl"] >= 0
    final = json.loads((trained_tiny_run / "metrics.json").read_text())
    assert metrics["student"]["top1"] == pytest.approx(final["eval/top1"])
    for text in ("student", "teacher", "relabelled top1", "top-1 agreement",
                 "per-class top-1"):
        assert text in printed


def test_bad_inputs_name_the_problem(trained_tiny_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="no recipe.json"):
        SavedRun(tmp_path)
    with pytest.raises(ValueError, match="no student 'dkd'"):
        SavedRun(trained_tiny_run, student="dkd")


def test_eval_command_student_ema_weights_and_data_overrides(trained_tiny_run, tmp_path,
                                                             capsys):
    """docs/diagnostics.md's other `scalekd eval` flags: --student and --ema pick what the run evaluated
    as alone/eval_ema; --weights evaluates a given export; data.* overrides point it at other
    data (here: the first 32 validation images)."""
    final = json.loads((trained_tiny_run / "metrics.json").read_text())
    out = tmp_path / "ema.json"
    main(["eval", str(trained_tiny_run), "--student", "alone", "--ema", "--out", str(out)])
    assert json.loads(out.read_text())["student"]["top1"] == pytest.approx(
        final["alone/eval_ema/top1"])
    out = tmp_path / "weights.json"
    main(["eval", str(trained_tiny_run), "--student", "alone", "--weights",
          str(trained_tiny_run / "export" / "alone" / "student.safetensors"), "--out", str(out)])
    assert json.loads(out.read_text())["student"]["top1"] == pytest.approx(
        final["alone/eval/top1"])
    out = tmp_path / "fewer.json"
    main(["eval", str(trained_tiny_run), "data.num_samples=32", "--out", str(out)])
    assert json.loads(out.read_text())["images"] == 32
    capsys.readouterr()
