import json

import pytest

from helpers.figures import assert_sane_png
from scalekd.cli import main
from scalekd.diagnostics.report import final_top1, steps_per_epoch, student_series
from scalekd.engine.logging import read_scalars


def test_each_student_is_a_series_of_its_own(trained_tiny_run):
    series = student_series(trained_tiny_run, read_scalars(trained_tiny_run))
    run = trained_tiny_run.name
    assert set(series) == {f"{run}:kd", f"{run}:alone"}
    for tags in series.values():
        assert {"loss/total", "eval/top1", "lr", "throughput/images_per_s"} <= set(tags)
        assert len(tags["loss/total"]) == 8  # logged every step
    assert "loss/kd" in series[f"{run}:kd"] and "loss/kd" not in series[f"{run}:alone"]


def test_final_top1_from_the_runs_metrics(trained_tiny_run):
    metrics = json.loads((trained_tiny_run / "metrics.json").read_text())
    run = trained_tiny_run.name
    assert final_top1(trained_tiny_run) == {f"{run}:kd": metrics["eval/top1"],
                                            f"{run}:alone": metrics["alone/eval/top1"]}


@pytest.mark.parametrize("x_axis", ["epoch", "step"])
def test_report_command_writes_figures_comparing_runs(trained_tiny_run, tmp_path, capsys,
                                                      x_axis):
    main(["report", str(trained_tiny_run), str(trained_tiny_run), "--out", str(tmp_path),
          "--x", x_axis])
    written = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[-1] for p in written] == ["training.png", "loss_terms.png",
                                                        "final_top1.png"]
    for path in written:
        assert_sane_png(path)


def test_steps_per_epoch_from_the_logged_epochs():
    assert steps_per_epoch({4: 1.0, 8: 2.0}) == 4
    assert steps_per_epoch({}) == 0  # a run that did not log progress/epoch


def test_report_of_a_folder_that_is_no_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tb/ folder"):
        main(["report", str(tmp_path)])
