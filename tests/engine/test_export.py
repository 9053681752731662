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
