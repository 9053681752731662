"""`scalekd export RUN`: (re)write a run's export folder from its student (its export, else its
latest complete checkpoint: scalekd.engine.saved_run), optionally with an ONNX file checked
against PyTorch on the run's evaluation images."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from scalekd.engine.export import export_student
from scalekd.engine.saved_run import SavedRun
from scalekd.engine.timm_folder import timm_folder


@dataclass
class Exported:
    files: list[Path] = field(default_factory=list)
    onnx_max_abs_diff: Optional[float] = None  # onnxruntime vs PyTorch, fp32 logits
    onnx_images: int = 0


def export_run(run: SavedRun, ema: bool = False, onnx: bool = False,
               check_images: int = 32) -> Exported:
    """Write export/<student>/{stem}.safetensors, {stem}.json, {stem}_timm/ and, with `onnx`,
    {stem}.onnx, compared with the PyTorch student on the first `check_images` evaluation
    images."""
    stem = "student_ema" if ema else "student"
    folder = run.folder / "export" / run.student_name
    model = run.student(ema=ema)
    state = {f"student.{k}": v for k, v in model.state_dict().items()}
    done = Exported([export_student(state, run.recipe, run.num_classes, folder, stem=stem),
                     folder / f"{stem}.json", timm_folder(folder, stem)])
    if onnx:
        import torch

        from scalekd.engine.onnx_export import onnx_max_abs_diff, write_onnx

        path = write_onnx(model, folder / f"{stem}.onnx", run.recipe.data.input_size)
        batches = []
        for images, _ in run.loader():
            batches.append(images)
            if sum(len(b) for b in batches) >= check_images:
                break
        images = torch.cat(batches)[:check_images]
        done.files.append(path)
        done.onnx_max_abs_diff = onnx_max_abs_diff(path, model, images)
        done.onnx_images = len(images)
    return done
