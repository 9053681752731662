"""The run log: a full disk under TensorBoard's folder stops its logging, not the run."""

import errno

from scalekd.engine.logging import RunLog


def test_tensorboard_on_a_full_disk_stops_logging_and_says_so(tmp_path, monkeypatch, capsys):
    log = RunLog(tmp_path / "tb", total_steps=4, start_step=0, enabled=True)

    def full(*args, **kwargs):  # what SummaryWriter raises once its writer thread hit ENOSPC
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(log.runs[""][0].writer, "add_scalar", full)
    log.scalars(1, {"loss": 1.0})
    log.scalars(2, {"loss": 0.5})
    log.close()
    out = capsys.readouterr()
    assert (out.out + out.err).count("warning: TensorBoard logging stopped, its folder cannot be "
                                     "written ([Errno 28] No space left on device); training "
                                     "goes on") == 1
