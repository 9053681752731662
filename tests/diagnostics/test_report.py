import json
import shutil
from pathlib import Path

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


def single_writer_copy(run_dir: Path, out: Path) -> Path:
    """The run as scalekd wrote runs before each student had a writer of its own: every tag in
    one events file under tb/, a student's prefixed by `NAME/`."""
    from torch.utils.tensorboard import SummaryWriter

    shutil.copytree(run_dir, out, ignore=shutil.ignore_patterns("tb"))
    writer = SummaryWriter(str(out / "tb"))
    for tag, values in read_scalars(run_dir).items():
        for step, value in values.items():
            writer.add_scalar(tag, value, step)
    writer.close()
    return out


def test_report_reads_both_layouts_alike(trained_tiny_run, tmp_path):
    """A run of today (a folder per extra student) and one of the old layout (one writer,
    prefixed tags) give the same series, and `scalekd report` draws both."""
    assert (trained_tiny_run / "tb" / "alone").is_dir()  # today's layout
    old = single_writer_copy(trained_tiny_run, tmp_path / "kd_run")
    assert [p.name for p in (old / "tb").iterdir()] == [
        p.name for p in (old / "tb").glob("events.out.tfevents.*")]  # one folder, no subfolders
    assert {t for t in read_scalars(old) if t.startswith("alone/")} >= {"alone/loss/total"}
    assert student_series(old, read_scalars(old)) == student_series(
        trained_tiny_run, read_scalars(trained_tiny_run))
    main(["report", str(old), "--out", str(tmp_path / "png")])
    assert_sane_png(tmp_path / "png" / "training.png")


def test_final_top1_from_the_runs_metrics(trained_tiny_run):
    metrics = json.loads((trained_tiny_run / "metrics.json").read_text())
    run = trained_tiny_run.name
    assert final_top1(trained_tiny_run) == {f"{run}:kd": metrics["eval/top1"],
                                            f"{run}:alone": metrics["alone/eval/top1"]}


@pytest.mark.parametrize("x_axis", ["epoch", "step"])
def test_report_command_writes_figures_comparing_runs(trained_tiny_run, tmp_path, capsys,
                                                      monkeypatch, x_axis):
    """Two runs (the second a copy under another name), two students each: every panel and the
    final bars show all four, by run:student."""
    import scalekd.diagnostics.report as report

    other = tmp_path / "other_run"
    shutil.copytree(trained_tiny_run, other)
    figures = {}

    def keep(fig, path, title):
        figures[Path(path).name] = fig
        return save(fig, path, title)

    save = report.save
    monkeypatch.setattr(report, "save", keep)
    main(["report", str(trained_tiny_run), str(other), "--out", str(tmp_path / "png"),
          "--x", x_axis])
    written = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[-1] for p in written] == ["training.png", "loss_terms.png",
                                                        "final_top1.png"]
    for path in written:
        assert_sane_png(path)
    run = trained_tiny_run.name
    both = {f"{name}:{student}" for name in (run, "other_run") for student in ("kd", "alone")}
    loss_panel = figures["training.png"].axes[0]
    assert {line.get_label() for line in loss_panel.get_lines()} == both
    bars = figures["final_top1.png"].axes[0]
    assert {t.get_text() for t in bars.get_xticklabels()} == both


def test_steps_per_epoch_from_the_logged_epochs():
    assert steps_per_epoch({4: 1.0, 8: 2.0}) == 4
    assert steps_per_epoch({}) == 0  # a run that did not log progress/epoch


def test_report_of_a_folder_that_is_no_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tb/ folder"):
        main(["report", str(tmp_path)])
