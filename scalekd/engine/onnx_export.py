"""The student as ONNX (a dynamic batch axis), written with torch.onnx's dynamo exporter (the
default of torch >= 2.9; the TorchScript one is deprecated) and checked with onnxruntime."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from scalekd.engine.checkpoint import write_run_file

INSTALL = "pip install -e '.[onnx]' (or SCALEKD_EXTRAS=onnx bash scripts/setup.sh)"


def onnx_missing() -> str:
    """What of the onnx extra is not installed (and how to install it), or ''."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript", "onnxruntime")
               if importlib.util.find_spec(m) is None]
    return f"{', '.join(missing)} not installed: {INSTALL}" if missing else ""


def write_onnx(model: nn.Module, path: Path, input_size: int, intact: str = "") -> Path:
    """Export `model` (eval mode, fp32) to `path`, inputs (N, 3, input_size, input_size) for any
    N, named image -> logits; the file appears whole or not at all."""
    sample = torch.zeros(2, 3, input_size, input_size)  # 2: a batch of 1 would be specialised
    model = model.float().eval()

    def export(tmp: Path) -> None:
        # one file (weights inside): students are far below protobuf's 2 GB limit
        torch.onnx.export(model, (sample,), str(tmp), dynamo=True, external_data=False,
                          input_names=["image"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                          verbose=False)

    write_run_file(Path(path), export, intact)
    return Path(path)


def onnx_max_abs_diff(path: Path, model: nn.Module, images: torch.Tensor) -> float:
    """The largest absolute difference between onnxruntime's logits of `path` and `model`'s
    (fp32, CPU) on `images`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = images.float().cpu()
    (logits,) = session.run(["logits"], {"image": images.numpy()})
    with torch.no_grad():
        expected = model.float().cpu().eval()(images)
    return float((torch.from_numpy(logits) - expected).abs().max())
