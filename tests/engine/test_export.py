"""The exported student is a plain timm model: no projector keys, loads with timm."""

import timm
import torch
from safetensors.torch import load_file

from scalekd.engine.export import export_student, load_exported
from scalekd.recipe import Recipe, apply_overrides


def test_export_loads_into_bare_timm_model(tmp_path):
    recipe = apply_overrides(Recipe(), ["student.name=resnet18", "data.input_size=32"])
    student = timm.create_model("resnet18", num_classes=10).eval()
    state = {f"student.{k}": v for k, v in student.state_dict().items()}
    state["distiller.projector.weight"] = torch.ones(3)
    path = export_student(state, recipe, 10, tmp_path)
    assert not any(k.startswith("distiller") for k in load_file(path))

    x = torch.randn(2, 3, 32, 32)
    by_timm = timm.create_model("resnet18", pretrained=True, num_classes=10,
                                pretrained_cfg_overlay=dict(file=str(path), num_classes=10))
    plain = timm.create_model("resnet18", num_classes=10)
    plain.load_state_dict(load_file(path))
    for model in (by_timm.eval(), plain.eval(), load_exported(path).eval()):
        assert torch.equal(model(x), student(x))


def test_an_export_that_fails_half_way_leaves_no_half_file(tmp_path, monkeypatch):
    """A full disk half-way through the weights: the error says so and no file poses as the
    export (neither under its name nor as a leftover)."""
    import errno

    import pytest

    import scalekd.engine.export as export
    from scalekd.engine.checkpoint import RunWriteError

    def half_then_full(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "save_file", half_then_full)
    recipe = apply_overrides(Recipe(), ["student.name=resnet18", "data.input_size=32"])
    state = {f"student.{k}": v for k, v in timm.create_model("resnet18").state_dict().items()}
    with pytest.raises(RunWriteError, match=r"could not write .*student.safetensors \(no space "
                                            r"left on device; .* MiB free there\). The final "
                                            r"checkpoint is intact"):
        export_student(state, recipe, 10, tmp_path, "The final checkpoint is intact. ")
    assert list(tmp_path.iterdir()) == []
