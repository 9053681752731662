"""The student as a plain timm model: safetensors weights plus the arguments that rebuild it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from scalekd.engine.checkpoint import write_run_file
from scalekd.engine.timm_folder import timm_folder, write_timm_folder
from scalekd.recipe import Recipe


def consolidated_state(accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict on every rank. Under DeepSpeed the parameters are the fp32 master
    copies gathered from all shards (the module itself may hold bf16 copies, or ZeRO-3 slices);
    collective: every rank must call it."""
    if accelerator.state.deepspeed_plugin is None:
        return accelerator.get_state_dict(model)
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    module = accelerator.unwrap_model(model)
    keys = set(module.state_dict().keys())
    state = {}
    for name, param in module.named_parameters():
        master = safe_get_full_fp32_param(param)  # None for a parameter the optimiser lacks
        if master is None:
            with deepspeed.zero.GatheredParameters([param]):
                master = param.detach().float().clone()
        state[name] = master
    state.update({n: b for n, b in module.named_buffers() if n in keys})
    return state


STUDENT = "student."  # the student's keys in the trained model's (DistillationModel's) state


def student_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The student's own entries of a trained model's state, under the timm model's keys
    (the distiller's projectors and losses left out)."""
    return {k[len(STUDENT):]: v for k, v in state.items() if k.startswith(STUDENT)}


def export_student(state: dict[str, torch.Tensor], recipe: Recipe, num_classes: int,
                   folder: Path, intact: str = "", stem: str = "student") -> Path:
    """Write `stem.safetensors` (student keys only: projectors and losses dropped), `stem.json`,
    which says how to rebuild it with timm.create_model, and the folder `stem_timm/` that
    timm's save_for_hf writes (scalekd.engine.timm_folder). A write that fails (disk full)
    leaves no half file under any name: RunWriteError, with `intact` (what is still there) in
    its message."""
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in student_state(state).items()}
    path = folder / f"{stem}.safetensors"
    write_run_file(path, lambda tmp: save_file(weights, tmp,
                                               metadata={"timm_model": recipe.student.name}),
                   intact)
    spec = {"model_name": recipe.student.name, "num_classes": num_classes,
            "kwargs": recipe.student.kwargs, "input_size": recipe.data.input_size,
            "file": path.name}
    write_run_file(folder / f"{stem}.json",
                   lambda tmp: tmp.write_text(json.dumps(spec, indent=2)), intact)
    write_timm_folder(weights, recipe, num_classes, timm_folder(folder, stem), intact)
    return path


def load_exported(path: Path) -> torch.nn.Module:
    """Rebuild an exported student with timm (the way a user would)."""
    import timm

    path = Path(path)
    spec = json.loads(path.with_suffix(".json").read_text())
    n = spec["num_classes"]
    return timm.create_model(spec["model_name"], pretrained=True, num_classes=n,
                             pretrained_cfg_overlay=dict(file=str(path), num_classes=n),
                             **spec["kwargs"])
