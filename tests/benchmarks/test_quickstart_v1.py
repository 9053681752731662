"""The benchmarks keep the quickstart's setting from before issue 20 (benchmarks/quickstart_v1.py),
whatever the quickstart itself now runs, in a folder apart from the quickstart's cached teacher."""

import runpy

from helpers.runs import REPO

V1 = runpy.run_path(str(REPO / "benchmarks" / "quickstart_v1.py"))


def test_the_benchmarks_setting_is_the_old_quickstart():
    kd = V1["recipe"]()
    teacher = V1["teacher_recipe"](kd)
    assert (kd.run.epochs, kd.student.name, kd.student.channels_last) == (
        60, "mobilenetv3_small_050", False)
    assert (kd.teacher.name, kd.teacher.kwargs, kd.teacher.channels_last) == ("resnet18", {}, False)
    assert kd.distill.weights == {"hard": 0.5, "kd": 0.5}
    assert (kd.data.input_size, kd.data.batch_size, kd.data.labels_per_class) == (32, 128, 100)
    assert (kd.eval.every_epochs, kd.checkpoint.every_epochs) == (20, 20)
    assert (teacher.run.epochs, teacher.student.name, teacher.student.kwargs,
            teacher.student.channels_last) == (2, "resnet18", {}, False)
    assert teacher.data.labels_per_class == 0 and teacher.optim.lr == 2e-3


def test_its_runs_are_apart_from_the_quickstarts():
    quickstart = runpy.run_path(str(REPO / "recipes" / "quickstart.py"))["recipe"]()
    kd = V1["recipe"]()
    assert kd.teacher.checkpoint != quickstart.teacher.checkpoint
    assert kd.run.dir != quickstart.run.dir
